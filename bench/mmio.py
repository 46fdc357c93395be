"""Device-exit benchmark: the cost of one MMIO exit round trip on virtkit's board and on QEMU TCG, in one run.

One bare-metal ELF (built here with the cross assembler) reads and writes the 16550's scratch
register (SCR) ``--chars`` times, then powers off through sifive_test. Every access is an exit to
the device model on both peers, so the per-exit cost is the difference between a long and a short
run divided by the difference in exits (start-up cancels out). (The console's own path, LSR polls
and THR writes, makes no exits on virtkit any more: the engine serves it as coalesced MMIO.)
virtkit runs the ``riscv64-virt`` board in this process (the Numba cache already loaded; console
bytes go to ``/dev/null`` through ``os.write`` like ``virtkit run``'s terminal); QEMU is
``qemu-system-riscv64 -M virt -bios none -serial file:/dev/null``, wall time of the process.

    .venv/bin/python bench/mmio.py [--chars N] [--rounds R] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = """
.section .text.init
.globl _start
_start:
    li s0, 0x10000000      # UART0
    li s1, {n}
1:  beqz s1, 3f
    lbu t0, 7(s0)          # SCR read: an exit
    addi t0, t0, 1
    sb t0, 7(s0)           # SCR write: an exit
    addi s1, s1, -1
    j 1b
3:  li t0, 0x100000        # sifive_test: poweroff
    li t1, 0x5555
    sw t1, 0(t0)
5:  j 5b
"""
SHORT = 1000  # characters of the baseline run


def build_elf(chars: int, workdir: Path) -> Path:
    """The hammer program printing ``chars`` characters, as an ELF linked at 0x8000_0000."""
    from virtkit.engines.riscv.asm import build

    return build(SRC.format(n=chars), workdir, f"uart{chars}")


def run_virtkit(elf: Path) -> tuple[float, int]:
    """Seconds of the board's VM run (images loaded, engine compiled) and MMIO exits it made."""
    from virtkit.machine.builder import build
    from virtkit.machine.config import MachineConfig

    fd = os.open("/dev/null", os.O_WRONLY)
    try:
        m = build(MachineConfig(kernel=str(elf), firmware="none", memory=64 << 20, rng=False),
                  lambda data: os.write(fd, data) and None)
        t = time.perf_counter()
        res = m.run(600)
        dt = time.perf_counter() - t
    finally:
        os.close(fd)
    if res.reason != "poweroff":
        raise RuntimeError(f"virtkit: the hammer program ended with {res.reason} {res.message}")
    exits = res.stats["exits"]
    return dt, exits["MMIO_READ"] + exits["MMIO_WRITE"]


def run_qemu(elf: Path) -> float:
    """Wall seconds of ``qemu-system-riscv64`` running the ELF to poweroff."""
    argv = ["qemu-system-riscv64", "-M", "virt", "-m", "64M", "-display", "none", "-monitor", "none",
            "-serial", "file:/dev/null", "-bios", "none", "-kernel", str(elf)]
    t = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, timeout=600, stdin=subprocess.DEVNULL)
    dt = time.perf_counter() - t
    if p.returncode:
        raise RuntimeError(f"qemu exited {p.returncode}: {p.stderr.decode(errors='replace')[-300:]}")
    return dt


def main(argv: list[str] | None = None) -> int:
    """Measure both peers and print microseconds per exit and the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chars", type=int, default=50_000, help="SCR read+write pairs of the long run (2 exits each)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    args = ap.parse_args(argv)
    if args.chars <= SHORT or args.rounds < 1:
        ap.error(f"--chars must exceed {SHORT} and --rounds be positive")
    from virtkit.engines.riscv.asm import have_toolchain

    if not have_toolchain():
        print("bench/mmio.py: error: needs riscv64-linux-gnu-gcc (Debian gcc-riscv64-linux-gnu)", file=sys.stderr)
        return 1
    have_qemu = shutil.which("qemu-system-riscv64") is not None
    with tempfile.TemporaryDirectory() as tmp:
        short, long_ = build_elf(SHORT, Path(tmp)), build_elf(args.chars, Path(tmp))
        run_virtkit(short)  # warm-up: engine compile/cache load, first-call costs
        vk: list[float] = []
        qm: list[float] = []
        exits = 0
        for _ in range(args.rounds):
            t_short, e_short = run_virtkit(short)
            t_long, e_long = run_virtkit(long_)
            exits = e_long - e_short
            vk.append((t_long - t_short) / exits * 1e6)
            if have_qemu:
                qm.append((run_qemu(long_) - run_qemu(short)) / exits * 1e6)
    v = statistics.median(vk)
    q = statistics.median(qm) if qm else None
    load = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    if args.json:
        print(json.dumps({"chars": args.chars, "exits": exits, "virtkit_us_per_exit": v, "qemu_us_per_exit": q,
                          "load_average": load,
                          "samples": {"virtkit": vk, "qemu": qm},
                          "ratio_virtkit_over_qemu": (v / q) if q else None}, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"MMIO exit round trip: 16550 SCR read + write, {exits:,} exits (median of {args.rounds})",
                  caption=f"load average {load:.1f}")
    table.add_column("peer")
    table.add_column("µs per exit", justify="right")
    table.add_row("qemu-system-riscv64 -M virt (TCG)", "-" if q is None else f"{q:.2f}")
    table.add_row("virtkit riscv64-virt board", f"{v:.2f}")
    table.add_row("virtkit / qemu", "-" if not q else f"{v / q:.1f}x")
    Console(width=None if sys.stdout.isatty() else 110).print(table)
    if not have_qemu:
        print("qemu-system-riscv64 not installed: QEMU not measured", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
