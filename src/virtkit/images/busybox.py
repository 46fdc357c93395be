"""Recipe ``busybox``: a static RV64 busybox cross-compiled from Debian's ``busybox`` source package.

``apt-get source --download-only busybox=<version>`` into ``~/.cache/virtkit/sources/busybox``,
``dpkg-source -x`` (Debian patches applied), ``make defconfig``, ``CONFIG_STATIC=y`` minus the
applets that do not build against current kernel headers, ``make busybox busybox.links`` with
``riscv64-linux-gnu-gcc`` and Debian's riscv64 cross libc.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

from virtkit.errors import ImageError
from virtkit.images.cache import (
    DPKG_STATUS,
    BuildContext,
    MissingToolError,
    _locked,
    cache_root,
    deb_version,
    debian_memo,
    require_program,
)
from virtkit.images.recipe import Recipe, make_jobs

SOURCE_PACKAGE = "busybox"
CROSS_COMPILE = "riscv64-linux-gnu-"
RECIPE_VERSION = 1
#: defconfig options switched off: CONFIG_TC uses CBQ definitions removed from kernel headers 6.x.
DISABLE = ("CONFIG_TC",)
ENABLE = ("CONFIG_STATIC",)

TOOLS = {
    "make": "make",
    "gcc": "gcc",  # HOSTCC for kconfig and build helpers
    f"{CROSS_COMPILE}gcc": "gcc-riscv64-linux-gnu",
    "dpkg-source": "dpkg-dev",
    "apt-get": "apt",
    "apt-cache": "apt",
    "perl": "perl",
}

EM_RISCV = 243
PT_INTERP = 3


def sources_dir() -> Path:
    """Where downloaded Debian source packages are kept (``~/.cache/virtkit/sources/busybox``)."""
    return cache_root() / "sources" / SOURCE_PACKAGE


def _newest(versions: list[str]) -> str:
    best = versions[0]
    for v in versions[1:]:
        if subprocess.run(["dpkg", "--compare-versions", v, "gt", best], check=False).returncode == 0:
            best = v
    return best


def _cached_dsc_versions() -> list[str]:
    d = sources_dir()
    return [p.name[len(SOURCE_PACKAGE) + 1:-4] for p in d.glob(f"{SOURCE_PACKAGE}_*.dsc")] if d.is_dir() else []


def source_version() -> str:
    """The busybox source version apt offers (newest), or the newest already downloaded when apt has none."""
    stamps = ["/var/lib/apt/lists", "/var/cache/apt/srcpkgcache.bin", DPKG_STATUS, sources_dir()]
    return debian_memo(f"src:{SOURCE_PACKAGE}", stamps, _source_version)


def _source_version() -> str:
    out = subprocess.run(["apt-cache", "showsrc", "--only-source", SOURCE_PACKAGE], capture_output=True,
                         text=True, check=False)
    versions = re.findall(r"^Version: (\S+)$", out.stdout, re.M)
    if not versions:
        versions = _cached_dsc_versions()
    if not versions:
        raise MissingToolError(
            "busybox: no Debian source package `busybox` known to apt: enable deb-src in "
            "/etc/apt/sources.list.d/debian.sources and run apt-get update (scripts/setup-host.sh does)"
        )
    return _newest(versions)


def fetch_source(version: str, ctx: BuildContext) -> Path:
    """Download the source package once into the sources cache; return its .dsc path."""
    d = sources_dir()
    d.mkdir(parents=True, exist_ok=True)
    dsc = d / f"{SOURCE_PACKAGE}_{version.split(':', 1)[-1]}.dsc"
    with _locked(d / ".lock"):
        if not dsc.is_file():
            ctx.step(f"downloading Debian source busybox {version}")
            ctx.run(["apt-get", "source", "--download-only", "-q", f"{SOURCE_PACKAGE}={version}"], cwd=d)
    if not dsc.is_file():
        raise ImageError(f"busybox: apt-get source did not produce {dsc.name}")
    return dsc


def check_static_riscv(path: Path) -> None:
    """Fail unless ``path`` is a 64-bit RISC-V ELF executable without a program interpreter (static)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ImageError(f"busybox: {path} is not a 64-bit little-endian ELF file")
    machine = struct.unpack_from("<H", data, 18)[0]
    if machine != EM_RISCV:
        raise ImageError(f"busybox: {path} is for ELF machine {machine}, not RISC-V ({EM_RISCV})")
    phoff = struct.unpack_from("<Q", data, 32)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    for i in range(phnum):
        if struct.unpack_from("<I", data, phoff + i * phentsize)[0] == PT_INTERP:
            raise ImageError(f"busybox: {path} is dynamically linked (has PT_INTERP); CONFIG_STATIC did not apply")


def set_options(config: str, enable: tuple[str, ...], disable: tuple[str, ...]) -> str:
    """Return busybox ``.config`` text with the given options switched on/off (added if absent)."""
    lines = config.splitlines()
    wanted = {o: "y" for o in enable} | {o: "n" for o in disable}
    seen = set()
    for i, line in enumerate(lines):
        m = re.match(r"^(?:# )?(CONFIG_[A-Za-z0-9_]+)(?:=.*| is not set)$", line)
        if m and m.group(1) in wanted:
            opt = m.group(1)
            lines[i] = f"{opt}=y" if wanted[opt] == "y" else f"# {opt} is not set"
            seen.add(opt)
    for opt in wanted.keys() - seen:
        lines.append(f"{opt}=y" if wanted[opt] == "y" else f"# {opt} is not set")
    return "\n".join(lines) + "\n"


class BusyboxRecipe(Recipe):
    """Static busybox for riscv64: the whole userland of the default initramfs."""

    name = "busybox"
    summary = "static RV64 busybox (Debian source package, defconfig)"
    artifact = "busybox"

    def inputs(self) -> dict:
        for prog, pkg in TOOLS.items():
            require_program(prog, pkg, "busybox")
        return {
            "recipe": RECIPE_VERSION,
            "source": source_version(),
            "disable": list(DISABLE),
            "enable": list(ENABLE),
            "gcc-riscv64-linux-gnu": deb_version("gcc-riscv64-linux-gnu", "busybox"),
            "libc6-dev-riscv64-cross": deb_version("libc6-dev-riscv64-cross", "busybox"),
        }

    def build(self, ctx: BuildContext) -> None:
        version = self.inputs()["source"]
        dsc = fetch_source(version, ctx)
        ctx.step("unpacking source (dpkg-source -x)")
        src = ctx.work / "busybox"
        ctx.run(["dpkg-source", "--no-check", "-x", str(dsc), str(src)])
        make = ["make", f"-j{make_jobs()}", f"CROSS_COMPILE={CROSS_COMPILE}"]
        ctx.step("configuring: defconfig + static")
        ctx.run(["make", "defconfig"], cwd=src)
        cfg = src / ".config"
        cfg.write_text(set_options(cfg.read_text(), ENABLE, DISABLE))
        ctx.step(f"compiling busybox (make -j{make_jobs()})")
        ctx.run([*make, "busybox"], cwd=src, env={"KCONFIG_NOTIMESTAMP": "1"})
        ctx.run(["make", "busybox.links"], cwd=src)
        check_static_riscv(src / "busybox")
        shutil.copyfile(src / "busybox", ctx.out / "busybox")
        (ctx.out / "busybox").chmod(0o755)
        shutil.copyfile(src / "busybox.links", ctx.out / "busybox.links")
        shutil.copyfile(cfg, ctx.out / "config")
