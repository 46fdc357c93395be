"""virtkit's x86-64 test kernels (tests/kvm/guests/): each a C file on the shared Multiboot runtime
(boot.S, rt.c), built with the host's gcc into a flat Multiboot binary that virtkit's microVM and QEMU both
load. Built once per source hash into ~/.cache/virtkit/x86-test-kernels."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "kvm" / "guests"
CFLAGS = ["-m64", "-O2", "-ffreestanding", "-fno-pic", "-fno-pie", "-mno-red-zone", "-mgeneral-regs-only",
          "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-fcf-protection=none", "-nostdlib", "-Wall"]
RUNTIME = ["boot.S", "rt.c"]
EXTRA = {"compute": ["work.c"]}


def tools_missing() -> str | None:
    """Why the kernels cannot be built here (None when they can)."""
    for t in ("gcc", "ld", "objcopy"):
        if shutil.which(t) is None:
            return f"needs {t} (Debian's gcc and binutils) to build the x86-64 test kernels"
    return None


def _cache(name: str) -> Path:
    h = hashlib.sha256()
    for f in sorted(RUNTIME + EXTRA.get(name, []) + ["rt.h", "link.ld", f"{name}.c"]):
        h.update(f.encode() + (SRC / f).read_bytes())
    h.update(" ".join(CFLAGS).encode())
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "virtkit" / "x86-test-kernels"
    return base / h.hexdigest()[:16]


def kernel(name: str) -> Path:
    """The flat Multiboot binary of tests/kvm/guests/NAME.c (built if needed)."""
    out = _cache(name) / f"{name}.bin"
    if out.exists():
        return out
    d = out.parent
    d.mkdir(parents=True, exist_ok=True)
    objs = []
    for src in RUNTIME + EXTRA.get(name, []) + [f"{name}.c"]:
        obj = d / (Path(src).stem + ".o")
        subprocess.run(["gcc", *CFLAGS, "-c", str(SRC / src), "-o", str(obj)], check=True, capture_output=True,
                       text=True)
        objs.append(str(obj))
    elf = d / f"{name}.elf"
    subprocess.run(["ld", "-m", "elf_x86_64", "-T", str(SRC / "link.ld"), "-nostdlib", "-z", "max-page-size=4096",
                    "-o", str(elf), *objs], check=True, capture_output=True, text=True)
    tmp = d / f"{name}.bin.tmp"
    subprocess.run(["objcopy", "-O", "binary", str(elf), str(tmp)], check=True, capture_output=True, text=True)
    tmp.rename(out)
    return out


def native(name: str = "compute_native") -> Path:
    """A host program from tests/kvm/guests (compute_native: the reference of the ring-3 workload; tsc_hz:
    the TSC's frequency), built with -O2."""
    out = _cache("compute") / name
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        extra = [str(SRC / "work.c")] if name == "compute_native" else []
        subprocess.run(["gcc", "-O2", "-fcf-protection=none", "-o", str(out), str(SRC / f"{name}.c"), *extra],
                       check=True, capture_output=True, text=True)
    return out


def kvm_missing() -> str | None:
    """Why the KVM engine cannot run here (None when /dev/kvm is usable), with the host's kind of KVM."""
    from virtkit.engines.kvm.host import kind

    h = kind()
    return None if h["usable"] else f"needs a usable /dev/kvm ({h['note']})"


def needs_kvm() -> list:
    """The marks of a test module that runs the test kernels on the KVM engine."""
    import pytest

    return [pytest.mark.skipif(tools_missing() is not None, reason=str(tools_missing())),
            pytest.mark.skipif(kvm_missing() is not None, reason=str(kvm_missing()))]
