"""Coalesced MMIO (RiscvEngine.add_fast_mmio): device registers served without an exit.

Buffered writes reach the device in order and before the next exit of any kind (also when the
ring overflows); a read shadow answers loads while enabled; a disabled cell exits as usual.
The board wires the UART's THR and LSR to it (tests/devices/test_uart16550.py).
"""

from __future__ import annotations

import pytest

from virtkit.engines.riscv import asm
from virtkit.engines.riscv.engine import ExitReason, RiscvEngine
from virtkit.errors import ConfigError
from virtkit.machine.elf import load_elf
from virtkit.machine.memory import GuestMemory

pytestmark = pytest.mark.skipif(not asm.have_toolchain(), reason="needs riscv64-linux-gnu-gcc (gcc-riscv64-linux-gnu)")

RAM_BASE = 0x8000_0000
DEV = 0x1000_0000
N = 1500  # more than the ring holds

PROG = f"""
    .globl _start
_start:
    li t0, {DEV}
    li t1, 97
    sb t1, 0(t0)
    li t1, 98
    sb t1, 0(t0)
    li t1, 99
    sb t1, 0(t0)
    sb t1, 8(t0)
    lbu t2, 5(t0)
    sb t2, 8(t0)
    lbu t2, 5(t0)
    sb t2, 8(t0)
    li t3, {N}
1:  andi t1, t3, 0x7f
    sb t1, 0(t0)
    addi t3, t3, -1
    bnez t3, 1b
    sb t3, 8(t0)
    PASS
"""


def engine(tmp_path, jit: int) -> RiscvEngine:
    elf = asm.build(PROG, tmp_path, "fast")
    mem = GuestMemory(1 << 20, RAM_BASE)
    img = load_elf(elf, mem)
    eng = RiscvEngine(mem, 1, reset_pc=img.entry, deterministic=True, jit=jit)
    eng.tohost = img.symbols["tohost"]
    eng.add_mmio_region(DEV, 0x100)
    return eng


@pytest.mark.parametrize("jit", [0, 1])
def test_buffered_writes_arrive_in_order_before_the_next_exit(tmp_path, jit):
    eng = engine(tmp_path, jit)
    got: list[int] = []
    thr = eng.add_fast_mmio(DEV, 1, got.append)
    lsr = eng.add_fast_mmio(DEV + 5, 1)
    eng.set_fast_mmio(thr, True)

    def next_exit():
        """The next exit the device model sees; THR writes that did exit go where buffered ones go."""
        while True:
            ex = eng.run(1_000_000)
            if ex.reason is ExitReason.MMIO_WRITE and ex.addr == DEV:
                got.append(ex.value)  # the ring was full: this one exits, after the buffered ones
                continue
            return ex

    ex = next_exit()
    assert (ex.reason, ex.addr) == (ExitReason.MMIO_WRITE, DEV + 8)
    assert got == [97, 98, 99]  # delivered before the device saw the exit
    ex = next_exit()
    assert (ex.reason, ex.addr) == (ExitReason.MMIO_READ, DEV + 5)  # the shadow is still disabled
    eng.complete_mmio_read(0x21)
    ex = next_exit()
    assert ex.value == 0x21
    eng.set_fast_mmio(lsr, True, 0x60)
    ex = next_exit()
    assert (ex.reason, ex.addr, ex.value) == (ExitReason.MMIO_WRITE, DEV + 8, 0x60)  # the load read the shadow
    ex = next_exit()
    assert (ex.reason, ex.addr, ex.value) == (ExitReason.MMIO_WRITE, DEV + 8, 0)
    assert got[3:] == [(N - i) & 0x7F for i in range(N)]
    ex = next_exit()
    assert eng.is_htif(ex) and ex.value == 1
    st = eng.stats()
    assert st["fast_mmio_reads"] == 1
    assert 3 + 1024 <= st["fast_mmio_writes"] < 3 + N  # the ring overflowed at least once


def test_disabled_cells_exit_as_usual(tmp_path):
    eng = engine(tmp_path, 0)
    got: list[int] = []
    eng.add_fast_mmio(DEV, 1, got.append)  # never enabled
    ex = eng.run(1_000_000)
    assert (ex.reason, ex.addr, ex.value) == (ExitReason.MMIO_WRITE, DEV, 97)
    assert got == [] and eng.stats()["fast_mmio_writes"] == 0


def test_bad_fast_mmio_registers_are_refused(tmp_path):
    eng = engine(tmp_path, 0)
    with pytest.raises(ConfigError, match="not inside an MMIO region"):
        eng.add_fast_mmio(0x2000_0000, 1)
    with pytest.raises(ConfigError, match="bad fast MMIO register"):
        eng.add_fast_mmio(DEV, 3)
    with pytest.raises(ConfigError, match="bad fast MMIO register"):
        eng.add_fast_mmio(-8, 1)
    for i in range(8):
        eng.add_fast_mmio(DEV + 16 + i, 1)
    with pytest.raises(ConfigError, match="too many fast MMIO"):
        eng.add_fast_mmio(DEV + 40, 1)
    with pytest.raises(ValueError, match="no fast MMIO cell"):
        eng.set_fast_mmio(99, True)


def test_idle_time_moves_guest_time_on(tmp_path):
    """Every hart slept in WFI: mtime advances by at least the sleep, even when it was ahead of the host clock."""
    mem = GuestMemory(1 << 20, RAM_BASE)
    eng = RiscvEngine(mem, 1, reset_pc=RAM_BASE)
    eng.ctime[0] = eng.mtime + 50_000_000  # 5 s ahead of the host clock
    before = eng.mtime
    eng.idle(0.01)
    assert eng.mtime >= before + 100_000
    det = RiscvEngine(GuestMemory(1 << 20, RAM_BASE), 1, reset_pc=RAM_BASE, deterministic=True)
    t = det.mtime
    det.idle(1.0)
    assert det.mtime == t  # deterministic time is instruction counts only
