"""Recipe ``initramfs``: busybox + its applet links + ``/init`` (init.sh) as a gzip newc cpio.

Also the host side of the guest contract of ``init.sh``: :func:`exec_append` encodes a command
for ``virtkit.exec=`` and :func:`parse_exit_status` finds ``virtkit-exit-status: N`` in console
output.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

from virtkit.errors import ConfigError, ImageError
from virtkit.images import cpio
from virtkit.images.cache import BuildContext, sha256_file
from virtkit.images.recipe import Recipe

INIT_SCRIPT = Path(__file__).with_name("init.sh")
RECIPE_VERSION = 1
EXIT_MARK = "virtkit-exit-status:"
INIT_REACHED = "virtkit-init-reached"
#: printed by the ``--exec`` wrapper just before the command runs (the boot log ends there)
EXEC_BEGIN = "virtkit-exec-begin"
#: the first line of the interactive shell's banner
BANNER = "virtkit guest: Linux"
DIRS = ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "mnt", "root",
        "etc", "var", "var/log")
ETC = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "etc/group": "root:x:0:\n",
    "etc/hostname": "virtkit\n",
    "etc/profile": "export PS1='virtkit:\\w# '\nexport PATH=/bin:/sbin:/usr/bin:/usr/sbin\n",
}
_EXIT_RE = re.compile(re.escape(EXIT_MARK) + r" (\d+)")


def exec_append(command: str) -> str:
    """The kernel command line word that makes the default initramfs run ``command`` and power off."""
    if not isinstance(command, str) or command.strip() == "":
        raise ConfigError("guest command must be a non-empty string")
    return "virtkit.exec=" + base64.b64encode(command.encode()).decode()


def exec_command_line(cmd: str) -> str:
    """The ``virtkit.exec=`` word for ``cmd``, wrapped so the guest prints :data:`EXEC_BEGIN` first (the boot
    log stays out of the command's output)."""
    if not isinstance(cmd, str) or not cmd.strip():
        raise ConfigError("exec: the guest command must be a non-empty string")
    quoted = "'" + cmd.replace("'", "'\\''") + "'"
    return exec_append(f"echo {EXEC_BEGIN}; eval {quoted}")


def parse_exit_status(output: str) -> int | None:
    """The exit status the guest printed after a ``virtkit.exec`` command, or None if it never did."""
    found = _EXIT_RE.findall(output)
    return int(found[-1]) if found else None


def command_output(output: str) -> str:
    """The console text between the end of the kernel's boot log and the exit-status line (best effort)."""
    head, _, _ = output.rpartition(EXIT_MARK)
    return head


def read_links(text: str) -> list[str]:
    """Parse busybox.links (one absolute applet path per line) into validated relative paths."""
    links = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("/") or ".." in line.split("/") or "\0" in line:
            raise ImageError(f"busybox.links:{lineno}: not an absolute applet path: {line[:60]!r}")
        links.append(line.lstrip("/"))
    return links


def build_initramfs(busybox: bytes, links: list[str], init: bytes, extra: dict[str, bytes] | None = None) -> bytes:
    """The gzip-compressed cpio image: directories, /dev/console, busybox, applet symlinks, /init."""
    buf = io.BytesIO()
    with cpio.CpioWriter(buf) as w:
        for d in DIRS:
            w.add_dir(d, 0o1777 if d == "tmp" else 0o755)
        w.add_device("dev/console", "c", 5, 1, 0o600)
        w.add_device("dev/null", "c", 1, 3, 0o666)
        w.add_file("bin/busybox", busybox, 0o755)
        for path, text in ETC.items():
            w.add_file(path, text.encode(), 0o644)
        for link in links:
            if link in ("bin/busybox", "init", "linuxrc"):  # /linuxrc is busybox init: we have our own /init
                continue
            parent = link.rpartition("/")[0]
            if parent not in DIRS:
                raise ImageError(f"initramfs: applet link {link!r} is outside {', '.join(DIRS[:5])}...")
            w.add_symlink(link, "/bin/busybox")
        for path, data in (extra or {}).items():
            w.add_file(path, data, 0o755)
        w.add_file("init", init, 0o755)
    return cpio.gzip_bytes(buf.getvalue())


class InitramfsRecipe(Recipe):
    """The default guest's root file system (kept in RAM): busybox and the virtkit /init."""

    name = "initramfs"
    summary = "busybox + /init (virtkit.exec / virtkit.bench contract), gzip newc cpio"
    artifact = "initramfs.cpio.gz"
    deps = ("busybox",)

    def inputs(self) -> dict:
        # the layout code and the cpio writer are cheap to rebuild with: key on their source
        return {"recipe": RECIPE_VERSION, "init": sha256_file(INIT_SCRIPT), "code": sha256_file(Path(__file__)),
                "cpio": sha256_file(Path(cpio.__file__))}

    def build(self, ctx: BuildContext) -> None:
        bb = ctx.deps["busybox"]
        ctx.step("writing cpio archive")
        links = read_links((bb / "busybox.links").read_text())
        image = build_initramfs((bb / "busybox").read_bytes(), links, INIT_SCRIPT.read_bytes())
        (ctx.out / self.artifact).write_bytes(image)


class InitramfsX86Recipe(Recipe):
    """The x86-64 guest's root file system: Debian's static amd64 busybox (package ``busybox-static``, the
    host's own when the host is amd64) and the same /init as the RISC-V guest (the same ``--exec`` contract)."""

    name = "initramfs-x86_64"
    summary = "busybox-static (amd64) + /init, gzip newc cpio, for --engine kvm"
    artifact = "initramfs.cpio.gz"
    BUSYBOX = Path("/bin/busybox")

    def inputs(self) -> dict:
        from virtkit.images.cache import deb_version, require_file

        require_file(self.BUSYBOX, "busybox-static", self.name)
        head = self.BUSYBOX.read_bytes()[:20]
        if head[:4] != b"\x7fELF" or head[18] != 62:  # EM_X86_64
            raise ImageError(f"{self.name}: {self.BUSYBOX} is not an x86-64 program (install busybox-static:amd64)")
        return {"recipe": RECIPE_VERSION, "init": sha256_file(INIT_SCRIPT), "code": sha256_file(Path(__file__)),
                "busybox-static": deb_version("busybox-static", self.name), "busybox": sha256_file(self.BUSYBOX)}

    def build(self, ctx: BuildContext) -> None:
        import subprocess

        ctx.step("listing the applets of busybox-static")
        out = subprocess.run([str(self.BUSYBOX), "--list-full"], capture_output=True, text=True, check=True).stdout
        links = read_links("\n".join("/" + line for line in out.splitlines() if line))
        ctx.step("writing cpio archive")
        (ctx.out / self.artifact).write_bytes(build_initramfs(self.BUSYBOX.read_bytes(), links,
                                                              INIT_SCRIPT.read_bytes()))
