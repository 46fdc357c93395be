"""Engine micro-benchmark: tight bare-metal loops on virtkit's RISC-V core and on QEMU TCG, in one run.

Four loops, each one ELF built here with the cross assembler and run unchanged by both peers:
``alu`` (addi/bnez), ``mem`` (ld/add/sd/xor), ``trap`` (ecall + mret round trips) and ``sv39``
(the mem loop in S-mode under Sv39 paging). virtkit runs in this process (``baremetal.run_elf``,
Numba cache already loaded); QEMU is ``qemu-system-riscv64 -M spike -bios none`` (wall time
includes its ~0.2 s start). CPU seconds are shown too, because the machine may be shared.

    .venv/bin/python bench/cpu_micro.py [--scale F] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from virtkit.engines.riscv.asm import build
from virtkit.engines.riscv.baremetal import run_elf

HEAD = ".section .text.init\n.globl _start\n_start:\n"
PMP_ALL = "    li t0, -1\n    csrw pmpaddr0, t0\n    li t0, 0x1f\n    csrw pmpcfg0, t0\n"

LOOPS = {
    "alu": (50_000_000, """
    li a1, {n}
1:  addi a0, a0, 1
    addi a1, a1, -1
    bnez a1, 1b
    PASS
"""),
    "mem": (20_000_000, """
    li a1, {n}
    la a2, buf
1:  addi a0, a0, 1
    xor a3, a0, a1
    ld a4, 0(a2)
    add a4, a4, a3
    sd a4, 0(a2)
    addi a1, a1, -1
    bnez a1, 1b
    PASS
.data
.align 3
buf: .dword 0
"""),
    "trap": (2_000_000, """
    la t0, handler
    csrw mtvec, t0
    li a1, {n}
1:  ecall
    addi a1, a1, -1
    bnez a1, 1b
    PASS
.align 2
handler:
    csrr t1, mepc
    addi t1, t1, 4
    csrw mepc, t1
    mret
"""),
    "sv39": (20_000_000, PMP_ALL + """
    li t0, (0x80000000 >> 12) << 10 | 0xcf     # identity gigapage, RWX, A, D
    la t1, root
    sd t0, 16(t1)
    srli t1, t1, 12
    li t2, 8 << 60
    or t1, t1, t2
    csrw satp, t1
    li t0, 1 << 11
    csrs mstatus, t0
    la t0, smode
    csrw mepc, t0
    mret
smode:
    li a1, {n}
    la a2, buf
1:  addi a0, a0, 1
    xor a3, a0, a1
    ld a4, 0(a2)
    add a4, a4, a3
    sd a4, 0(a2)
    addi a1, a1, -1
    bnez a1, 1b
    PASS
.data
.align 12
root: .space 4096
buf: .dword 0
"""),
}


def run_qemu(elf: Path) -> float | None:
    """Wall seconds of QEMU TCG running ``elf`` to its HTIF exit, or None without QEMU."""
    if shutil.which("qemu-system-riscv64") is None:
        return None
    t = time.monotonic()
    r = subprocess.run(["qemu-system-riscv64", "-M", "spike", "-nographic", "-bios", "none", "-kernel", str(elf)],
                       capture_output=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"QEMU failed on {elf.name}: {r.stderr.decode(errors='replace')[:200]}")
    return time.monotonic() - t


def main() -> None:
    """Build the loops, run both peers, print the table (and JSON with --json)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the iteration counts")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as td:
        t = time.monotonic()
        run_elf(build(HEAD + "    PASS\n", Path(td) / "warm"), max_instructions=100)
        warm = time.monotonic() - t
        for name, (n, body) in LOOPS.items():
            elf = build(HEAD + body.format(n=int(n * args.scale)), Path(td) / name, name)
            c0 = time.process_time()
            res = run_elf(elf)
            cpu = time.process_time() - c0
            if res.exit_code != 0:
                raise RuntimeError(f"{name}: virtkit did not pass ({res.reason}, {res.exit_code})")
            q = run_qemu(elf)
            rows.append({"loop": name, "instructions": res.instructions, "virtkit_s": res.seconds,
                         "virtkit_cpu_s": cpu, "mips": res.mips, "mips_cpu": res.instructions / cpu / 1e6,
                         "qemu_s": q, "ratio": (res.seconds / q) if q else None})
    if args.json:
        print(json.dumps({"warmup_s": warm, "rows": rows}))
        return
    tab = Table(title=f"RISC-V engine loops: virtkit vs QEMU TCG (virtkit cache load {warm:.1f} s)")
    for col in ("loop", "instructions", "virtkit s", "virtkit CPU s", "MIPS (wall)", "MIPS (CPU)", "QEMU s",
                "virtkit/QEMU"):
        tab.add_column(col, justify="left" if col == "loop" else "right")
    for r in rows:
        tab.add_row(r["loop"], f"{r['instructions']:,}", f"{r['virtkit_s']:.2f}", f"{r['virtkit_cpu_s']:.2f}",
                    f"{r['mips']:.1f}", f"{r['mips_cpu']:.1f}", "-" if r["qemu_s"] is None else f"{r['qemu_s']:.2f}",
                    "-" if r["ratio"] is None else f"{r['ratio']:.1f}x")
    Console().print(tab)


if __name__ == "__main__":
    main()
