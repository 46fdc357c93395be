"""Build bare-metal RISC-V test programs and run them on QEMU (the reference) or on virtkit.

Programs are compiled with the Debian cross compiler into ``~/.cache/virtkit/isatests/``,
keyed by a hash of every input, so a re-run only rebuilds what changed.  Both runners return
the HTIF exit code and the HTIF console output.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ISA_DIR = Path(__file__).resolve().parent.parent / "engines" / "riscv" / "isa"
CROSS_CC = "riscv64-linux-gnu-gcc"
QEMU = "qemu-system-riscv64"
CFLAGS = [
    "-march=rv64gc", "-mabi=lp64d", "-nostdlib", "-nostartfiles", "-static", "-fno-pie", "-no-pie",
    "-mcmodel=medany", "-ffreestanding", "-fno-builtin", "-Wl,--build-id=none", "-Wl,--no-warn-rwx-segments",
]
COMMON_INPUTS = ["crt.S", "link.ld", "test.h", "lib.c", "lib.h"]


@dataclass
class RunResult:
    """The outcome of one bare-metal run: HTIF exit code (None on timeout) and console text."""

    code: int | None
    console: str
    stderr: str = ""


def cache_dir() -> Path:
    """Where built test programs are kept (overridable with VIRTKIT_CACHE)."""
    base = Path(os.environ.get("VIRTKIT_CACHE", Path.home() / ".cache" / "virtkit"))
    return base / "isatests"


def have_cross_compiler() -> bool:
    """True if the RISC-V cross compiler is installed."""
    return shutil.which(CROSS_CC) is not None


def build(source: str | Path, opt: str = "-O2", extra: tuple[str, ...] = ()) -> Path:
    """Compile one test source (``.S`` or ``.c``, with crt.S and lib.c) into a cached ELF."""
    src = Path(source)
    if not src.is_absolute():
        src = ISA_DIR / src
    inputs = [src] + [ISA_DIR / n for n in COMMON_INPUTS] + sorted(ISA_DIR.glob("*.h"))
    h = hashlib.sha256()
    for p in inputs:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    flags = [*CFLAGS, opt, *extra]
    h.update(" ".join(flags).encode())
    out = cache_dir() / f"{src.stem}-{h.hexdigest()[:16]}.elf"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    objs = [str(ISA_DIR / "crt.S"), str(src)]
    if src.suffix == ".c":
        objs.append(str(ISA_DIR / "lib.c"))
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    cmd = [CROSS_CC, *flags, "-T", str(ISA_DIR / "link.ld"), "-I", str(ISA_DIR), "-o", str(tmp), *objs]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"building {src.name} failed:\n{p.stderr}")
    tmp.replace(out)
    return out


def harts_for(name: str) -> int:
    """Programs named smp_* run with two harts, everything else with one."""
    return 2 if Path(name).name.startswith("smp_") else 1


def run_qemu(elf: Path, timeout: float = 120, machine: str = "spike", harts: int = 1,
             cpu: str | None = None) -> RunResult:
    """Run ``elf`` on qemu-system-riscv64 (TCG, -bios none; ``cpu``: its -cpu) and collect the HTIF result."""
    cmd = [QEMU, "-M", machine, "-smp", str(harts), "-bios", "none", "-kernel", str(elf), "-display", "none",
           "-serial", "stdio", "-monitor", "none", "-m", "256M", *(["-cpu", cpu] if cpu else [])]
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if e.stdout else ""
        return RunResult(None, out, "timeout")
    return RunResult(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))


def virtkit_missing() -> str | None:
    """Why virtkit cannot run bare-metal programs yet (None once it can)."""
    for mod in ("virtkit.engines.riscv.engine", "virtkit.commands.run"):
        if importlib.util.find_spec(mod) is None:
            return f"virtkit's RISC-V engine is not there yet ({mod} missing)"
    return None


def run_virtkit(elf: Path, max_instructions: int = 2_000_000_000, harts: int = 1, jit: int | None = None,
                deterministic: bool = False) -> RunResult:
    """Run ``elf`` on virtkit's engine in this process (``baremetal.run_elf``), bounded by instructions."""
    from virtkit.engines.riscv.baremetal import run_elf

    res = run_elf(elf, mem_size=256 << 20, nharts=harts, max_instructions=max_instructions, console=lambda b: None,
                  jit=jit, deterministic=deterministic)
    code = res.exit_code
    if code is not None and code > 255:
        code = 255
    return RunResult(code, res.output.decode(errors="replace"), f"reason={res.reason} instructions={res.instructions}")


def run_virtkit_cli(elf: Path, timeout: float = 600, extra: tuple[str, ...] = ()) -> RunResult:
    """Run ``elf`` with ``virtkit run --bios none --kernel elf`` and collect the HTIF result."""
    cmd = [sys.executable, "-m", "virtkit.cli", "run", "--bios", "none", "--kernel", str(elf), *extra]
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if e.stdout else ""
        return RunResult(None, out, "timeout")
    return RunResult(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))


def describe(result: RunResult) -> str:
    """A readable failure message: which case failed and what the console said."""
    if result.code is None:
        what = "timed out (no HTIF exit)"
    elif result.code == 255:
        what = "took an unexpected trap"
    else:
        what = f"failed at case {result.code}"
    return f"{what}\nconsole:\n{result.console[-2000:]}\nstderr:\n{result.stderr[-2000:]}"
