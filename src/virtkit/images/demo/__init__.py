"""The demo guest: a bare-metal RV64 C program (``hello.c``) that ``virtkit run`` boots until Linux does.

:func:`build_demo` compiles it with Debian's cross compiler into ``~/.cache/virtkit/demo/``;
:func:`build_baremetal` compiles any bare-metal C program against the same start file and
linker script (``bench/cpu.py`` uses it for its workloads).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from virtkit.errors import ImageError

DEMO_DIR = Path(__file__).resolve().parent
CROSS_CC = "riscv64-linux-gnu-gcc"
CFLAGS = [
    "-march=rv64gc", "-mabi=lp64d", "-mcmodel=medany", "-nostdlib", "-nostartfiles", "-static",
    "-fno-pie", "-no-pie", "-ffreestanding", "-fno-builtin", "-Wl,--build-id=none", "-Wl,--no-warn-rwx-segments",
]


def _cache_root() -> Path:
    env = os.environ.get("VIRTKIT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "virtkit"


def build_baremetal(sources: Sequence[Path], out: Path, opt: str = "-O2", defines: Sequence[str] = ()) -> Path:
    """Compile C ``sources`` with the demo's crt.S/link.ld into ``out`` (skipped if up to date)."""
    cc = shutil.which(CROSS_CC)
    if cc is None:
        raise ImageError(f"{CROSS_CC} not found: install the Debian package gcc-riscv64-linux-gnu")
    srcs = [Path(s) for s in sources]
    for s in srcs:
        if not s.is_file():
            raise ImageError(f"bare-metal source {s} does not exist")
    inputs = [DEMO_DIR / "crt.S", DEMO_DIR / "link.ld", DEMO_DIR / "baremetal.h", *srcs]
    flags = [*CFLAGS, opt, *(f"-D{d}" for d in defines)]
    h = hashlib.sha256(" ".join(flags).encode())
    for p in inputs:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    digest = h.hexdigest()
    stamp = out.with_name(out.name + ".sha256")
    if out.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    cmd = [cc, *flags, "-I", str(DEMO_DIR), "-T", str(DEMO_DIR / "link.ld"), "-o", str(tmp),
           str(DEMO_DIR / "crt.S"), *map(str, srcs)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        first = (proc.stderr.strip().splitlines() or ["no output"])[0]
        raise ImageError(f"compiling {', '.join(s.name for s in srcs)} failed: {first}")
    tmp.replace(out)
    stamp.write_text(digest + "\n")
    return out


def build_demo() -> Path:
    """Build (or reuse) the demo ELF ``~/.cache/virtkit/demo/hello.elf`` and return its path."""
    return build_baremetal([DEMO_DIR / "hello.c"], _cache_root() / "demo" / "hello.elf", opt="-O2")
