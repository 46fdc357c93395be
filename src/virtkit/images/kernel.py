"""Recipe ``kernel``: a minimal RISC-V Linux ``Image`` from Debian's ``linux-source-6.1``.

``make allnoconfig`` with ``KCONFIG_ALLCONFIG=kernel-riscv64.config`` (the fragment kept next to
this file), then ``make Image``. After configuring, every option of the fragment is checked in the
final ``.config``: an option Kconfig silently dropped (a missing dependency) fails the build.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from virtkit.errors import ImageError
from virtkit.images.cache import BuildContext, deb_version, require_file, require_program, sha256_file
from virtkit.images.recipe import Recipe, make_jobs

FRAGMENT = Path(__file__).with_name("kernel-riscv64.config")
SOURCE_PACKAGE = "linux-source-6.1"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
CROSS_COMPILE = "riscv64-linux-gnu-"
#: Bumped when the build steps below change in a way that changes the output.
RECIPE_VERSION = 1

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")

# program -> Debian package, for the error message when it is missing
TOOLS = {
    "make": "make",
    "gcc": "gcc",  # HOSTCC for kconfig and build helpers
    f"{CROSS_COMPILE}gcc": "gcc-riscv64-linux-gnu",
    "flex": "flex",
    "bison": "bison",
    "bc": "bc",
    "tar": "tar",
    "xz": "xz-utils",
    "perl": "perl",
}


def parse_config(text: str, source: str = "config") -> dict[str, str]:
    """Parse Kconfig ``.config`` syntax into {option: value}; ``# X is not set`` gives ``"n"``.

    Comments and blank lines are skipped; any other line is a clear :class:`ImageError`.
    """
    options: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        m = _SET.match(line)
        if m:
            options[m.group(1)] = m.group(2)
            continue
        m = _UNSET.match(line)
        if m:
            options[m.group(1)] = "n"
            continue
        if line == "" or line.startswith("#"):
            continue
        raise ImageError(f"{source}:{lineno}: not a Kconfig line: {raw.strip()[:60]!r}")
    return options


def config_mismatches(fragment: dict[str, str], final: dict[str, str]) -> list[str]:
    """Fragment options whose value differs in the final config (unset counts as ``n``)."""
    bad = []
    for opt, want in fragment.items():
        got = final.get(opt, "n")
        if got != want:
            bad.append(f"{opt}={want} (got {got})")
    return bad


class KernelRecipe(Recipe):
    """Minimal RV64 Linux kernel for QEMU virt and virtkit's riscv-virt board."""

    name = "kernel"
    summary = "Linux 6.1 RV64 Image (linux-source-6.1, allnoconfig + fragment)"
    artifact = "Image"
    fragment = FRAGMENT
    arch = "riscv"
    cross = CROSS_COMPILE
    tools = TOOLS
    #: the Debian packages of the compilers (their versions key the cache entry)
    compilers = ("gcc-riscv64-linux-gnu", "binutils-riscv64-linux-gnu")

    def inputs(self) -> dict:
        for prog, pkg in self.tools.items():
            require_program(prog, pkg, self.name)
        require_file(SOURCE_TARBALL, SOURCE_PACKAGE, self.name)
        parse_config(self.fragment.read_text(), self.fragment.name)  # a malformed fragment fails before any work
        return {
            "recipe": RECIPE_VERSION,
            "fragment": sha256_file(self.fragment),
            SOURCE_PACKAGE: deb_version(SOURCE_PACKAGE, self.name),
            **{pkg: deb_version(pkg, self.name) for pkg in self.compilers},
        }

    def build(self, ctx: BuildContext) -> None:
        frag = self.fragment
        fragment = parse_config(frag.read_text(), frag.name)
        ctx.step(f"extracting {SOURCE_TARBALL.name}")
        ctx.run(["tar", "-xf", str(SOURCE_TARBALL), "-C", str(ctx.work)])
        src = ctx.work / SOURCE_PACKAGE
        if not (src / "Makefile").is_file():
            raise ImageError(f"kernel: {SOURCE_TARBALL} did not unpack to {SOURCE_PACKAGE}/")
        make = ["make", f"-j{make_jobs()}", f"ARCH={self.arch}"]
        if self.cross:
            make.append(f"CROSS_COMPILE={self.cross}")
        env = {"KBUILD_BUILD_USER": "virtkit", "KBUILD_BUILD_HOST": "virtkit",
               "KBUILD_BUILD_TIMESTAMP": "2024-01-01"}
        ctx.step(f"configuring: allnoconfig + {frag.name}")
        ctx.run([*make, f"KCONFIG_ALLCONFIG={frag}", "allnoconfig"], cwd=src, env=env)
        final = parse_config((src / ".config").read_text(), ".config")
        bad = config_mismatches(fragment, final)
        if bad:
            raise ImageError(f"kernel: fragment options not in the final .config (missing dependency?): "
                             f"{', '.join(bad)}")
        ctx.step(f"compiling {self.artifact} (make -j{make_jobs()})")
        ctx.run([*make, self.artifact], cwd=src, env=env)
        shutil.copyfile(src / f"arch/{self.arch}/boot/{self.artifact}", ctx.out / self.artifact)
        shutil.copyfile(src / ".config", ctx.out / "config")
        shutil.copyfile(src / "System.map", ctx.out / "System.map")
        # vmlinux is kept for debugging guest crashes in virtkit (addr2line, symbol lookup); on x86 it is also
        # the PVH kernel
        ctx.run([f"{self.cross}strip", "--strip-debug", "-o", str(ctx.out / "vmlinux"), str(src / "vmlinux")])


class KernelX86Recipe(KernelRecipe):
    """Minimal x86-64 Linux kernel for the KVM engine's microVM: bzImage, and vmlinux with its PVH entry."""

    name = "kernel-x86_64"
    summary = "Linux 6.1 x86-64 bzImage + PVH vmlinux (linux-source-6.1, allnoconfig + fragment)"
    artifact = "bzImage"
    fragment = Path(__file__).with_name("kernel-x86_64.config")
    arch = "x86_64"
    cross = ""
    tools = {k: v for k, v in TOOLS.items() if not k.startswith(CROSS_COMPILE)} | {"strip": "binutils"}
    compilers = ("gcc", "binutils")
