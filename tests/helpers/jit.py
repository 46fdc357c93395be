"""Running small programs on the engine to their HTIF exit (the JIT tests' shared driver and program)."""

from __future__ import annotations

from virtkit.engines.riscv.engine import RiscvEngine
from virtkit.machine.elf import load_elf
from virtkit.machine.memory import GuestMemory

RAM_BASE = 0x8000_0000


def run(elf, jit: int, nharts: int = 1) -> tuple[RiscvEngine, GuestMemory, int]:
    """Run ``elf`` to its HTIF exit; returns the engine, its RAM and the tohost value.

    (Regions queued in a deterministic run are translated at the end of the current 1000-instruction
    slice, so test programs run for several slices.)
    """
    mem = GuestMemory(16 << 20, RAM_BASE)
    img = load_elf(elf, mem)
    eng = RiscvEngine(mem, nharts, reset_pc=img.entry, deterministic=True, jit=jit)
    eng.tohost = img.symbols["tohost"]
    for _ in range(200):
        ex = eng.run(2_000_000)
        if eng.is_htif(ex):
            return eng, mem, ex.value
    raise AssertionError("program did not finish")


HOT = """
    .globl _start
_start:
    li s0, 2000
    li s1, 0
1:  call f
    add s1, s1, a0
    addi s0, s0, -1
    bnez s0, 1b
    la t0, result
    sd s1, 0(t0)
    PASS
    .align 8
    .globl f
f:  .option push
    .option norvc
    addi a0, x0, 3
    ret
    .option pop
.data
    .globl result
result: .dword 0
"""
