"""SMP (AMO counters, LR/SC reservations broken by other harts), MMIO exits, random instruction words."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_core_basic import run_asm

from virtkit.engines.riscv.engine import ExitReason, RiscvEngine
from virtkit.machine.memory import GuestMemory

SMP_COUNTER = r"""
    la sp, stacks
    slli t0, a0, 12
    add sp, sp, t0
    la s0, counter
    la s1, counter2
    li t1, 1000
    li t2, 1
1:  amoadd.w zero, t2, (s0)
2:  lr.d t3, (s1)
    addi t3, t3, 1
    sc.d t4, t3, (s1)
    bnez t4, 2b
    addi t1, t1, -1
    bnez t1, 1b
    la s2, done
    amoadd.w zero, t2, (s2)
    csrr t5, mhartid
    bne t5, a0, fail
    bnez a0, park
3:  lw t3, 0(s2)
    li t4, 2
    bne t3, t4, 3b
    lw t3, 0(s0)
    li t4, 2000
    bne t3, t4, fail
    ld t3, 0(s1)
    bne t3, t4, fail
    PASS
park:
    wfi
    j park
fail:
    FAIL 2
.data
.align 6
counter: .dword 0
.align 6
counter2: .dword 0
.align 6
done: .dword 0
.align 12
.space 8192
stacks:
"""

RESERVATION = r"""
    la s0, word
    la s1, flag1
    la s2, flag2
    li t2, 1
    bnez a0, hart1
    lr.d t3, (s0)
    sd t2, 0(s1)              # tell hart 1 the reservation is taken
1:  ld t4, 0(s2)
    beqz t4, 1b
    sc.d t5, t3, (s0)         # hart 1 stored to the granule: must fail
    beqz t5, fail
    lr.d t3, (s0)
    sc.d t5, t3, (s0)         # no intervening store: succeeds
    bnez t5, fail
    PASS
hart1:
1:  ld t4, 0(s1)
    beqz t4, 1b
    sd t2, 8(s0)              # same 64-byte reservation granule
    sd t2, 0(s2)
2:  wfi
    j 2b
fail:
    FAIL 3
.data
.align 6
word: .dword 7, 0
.align 6
flag1: .dword 0
.align 6
flag2: .dword 0
"""


def test_smp_two_harts_amo_and_lrsc_counters(tmp_path):
    res = run_asm(tmp_path, SMP_COUNTER, nharts=2, max_insns=5_000_000)
    assert res.exit_code == 0
    assert all(n > 1000 for n in res.stats["per_hart"])


def test_lrsc_reservation_broken_by_other_hart(tmp_path):
    res = run_asm(tmp_path, RESERVATION, nharts=2)
    assert res.exit_code == 0


def _engine(words: bytes, nharts: int = 1) -> tuple[GuestMemory, RiscvEngine]:
    mem = GuestMemory(1 << 16, 0x8000_0000)
    mem.write(0x8000_0000, words)
    return mem, RiscvEngine(mem, nharts, deterministic=True)


def _asm(*insns: int) -> bytes:
    return b"".join(struct.pack("<I", i) for i in insns)


def _i(op, rd, f3, rs1, imm):
    return ((imm & 0xFFF) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op


def _s(f3, rs1, rs2, imm):
    return (((imm >> 5) & 0x7F) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | ((imm & 31) << 7) | 0x23


def test_mmio_read_sign_extension_and_write():
    base = 0x1000_0000
    loads = [(0, 0xF0, 0xFFFF_FFFF_FFFF_FFF0), (4, 0xF0, 0xF0), (1, 0x8001, 0xFFFF_FFFF_FFFF_8001),
             (5, 0x8001, 0x8001), (2, 0x8000_0000, 0xFFFF_FFFF_8000_0000), (6, 0x8000_0000, 0x8000_0000),
             (3, 0x8000_0000_0000_0001, 0x8000_0000_0000_0001)]
    prog = [_i(0x03, 10 + k, f3, 5, 8 * k) for k, (f3, _, _) in enumerate(loads)]
    prog += [_s(2, 5, 6, 0x40), _i(0x03, 0, 0, 5, 0)]  # sw x6 -> MMIO; lb into x0 is still a read
    mem, eng = _engine(_asm(*prog))
    eng.add_mmio_region(base, 0x1000)
    eng.set_reg(0, 5, base)
    eng.set_reg(0, 6, 0x1234_5678_9ABC_DEF0)
    for k, (f3, raw, _) in enumerate(loads):
        ex = eng.run(100)
        assert ex.reason is ExitReason.MMIO_READ
        assert (ex.addr, ex.size) == (base + 8 * k, 1 << (f3 & 3))
        eng.complete_mmio_read(raw)
    for k, (_, _, want) in enumerate(loads):
        assert eng.get_reg(0, 10 + k) == want
    ex = eng.run(100)
    assert (ex.reason, ex.addr, ex.size, ex.value) == (ExitReason.MMIO_WRITE, base + 0x40, 4, 0x9ABC_DEF0)
    ex = eng.run(100)
    assert ex.reason is ExitReason.MMIO_READ
    eng.complete_mmio_read(0xFF)
    assert eng.get_reg(0, 0) == 0
    assert eng.stats()["exits"]["MMIO_READ"] == len(loads) + 1


def test_amo_on_mmio_and_unbacked_address_fault():
    amo = (0b00000 << 27) | (7 << 20) | (5 << 15) | (2 << 12) | (8 << 7) | 0x2F  # amoadd.w x8, x7, (x5)
    mem, eng = _engine(_asm(amo))
    eng.add_mmio_region(0x1000_0000, 0x1000)
    eng.set_reg(0, 5, 0x1000_0000)
    eng.write_csr(0, 0x305, 0x8000_0100)  # mtvec -> a loop
    mem.write(0x8000_0100, _asm(0x0000006F))  # j .
    ex = eng.run(10)
    assert ex.reason is ExitReason.BUDGET
    assert eng.read_csr(0, 0x342) == 7 and eng.read_csr(0, 0x343) == 0x1000_0000
    assert eng.pc(0) == 0x8000_0100
    eng.set_pc(0, 0x8000_0000)
    eng.set_reg(0, 5, 0x4000_0000)  # not RAM, not MMIO
    eng.run(10)
    assert eng.read_csr(0, 0x342) == 7


def test_wfi_exit_and_timer_deadline():
    wfi = 0x10500073
    mem, eng = _engine(_asm(wfi, 0x0000006F))
    ex = eng.run(100)
    assert ex.reason is ExitReason.HALT
    assert eng.next_timer_deadline() is None
    eng.write_csr(0, 0x304, 1 << 7)  # MTIE
    eng.mtimecmp[0] = eng.mtime + 10_000_000
    assert 0.9 < eng.next_timer_deadline() <= 1.0
    ex = eng.run(100)  # deterministic: the core jumps mtime to the deadline and wakes up
    assert ex.reason is ExitReason.BUDGET and eng.pc(0) == 0x8000_0004


def test_external_interrupt_line():
    mem, eng = _engine(_asm(0x0000006F))  # j .
    eng.write_csr(0, 0x305, 0x8000_0100)
    mem.write(0x8000_0100, _asm(0x0000006F))
    eng.write_csr(0, 0x304, 1 << 11)
    eng.write_csr(0, 0x300, 1 << 3)
    eng.run(10)
    assert eng.pc(0) == 0x8000_0000
    eng.set_irq(0, 11, True)
    eng.run(10)
    assert eng.read_csr(0, 0x342) == (1 << 63) | 11 and eng.pc(0) == 0x8000_0100
    assert eng.read_csr(0, 0x344) & (1 << 11)
    eng.set_irq(0, 9, True)
    eng.write_csr(0, 0x344, 0)  # software SEIP cleared; the line still shows
    assert eng.read_csr(0, 0x344) & (1 << 9)
    eng.set_irq(0, 11, False)
    eng.set_irq(0, 9, False)
    assert eng.read_csr(0, 0x344) & ((1 << 9) | (1 << 11)) == 0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(words=st.binary(min_size=64, max_size=64), regs=st.lists(st.integers(0, 2**64 - 1), min_size=31,
                                                                   max_size=31), priv=st.sampled_from([0, 1, 3]))
def test_random_instruction_words_never_crash(words, regs, priv):
    """Random 16/32-bit words with random registers, in any mode: the host survives, the guest traps."""
    handler = _asm(0x0000006F)
    mem, eng = _engine(words)
    mem.write(0x8000_1000, handler)
    eng.write_csr(0, 0x305, 0x8000_1000)
    eng.write_csr(0, 0x105, 0x8000_1000)
    eng.write_csr(0, 0x3B0, (1 << 54) - 1)
    eng.write_csr(0, 0x3A0, 0x1F)
    eng.write_csr(0, 0x300, (3 << 13) | (priv << 11))
    eng.hs[0, 1] = priv
    for i, v in enumerate(regs, start=1):
        eng.set_reg(0, i, v)
    eng.add_mmio_region(0x1000_0000, 0x1000)
    for _ in range(4):
        ex = eng.run(50)
        if ex.reason is ExitReason.MMIO_READ:
            eng.complete_mmio_read(0x5A)
        elif ex.reason is ExitReason.HALT:
            break
    assert eng.priv(0) in (0, 1, 3)
    assert eng.get_reg(0, 0) == 0


def test_csrrs_on_mip_does_not_latch_the_external_seip_line():
    """Only the software SEIP bit takes part in csrrs/csrrc on mip: OpenSBI's `csrs mip, STIP` while the
    PLIC line is high must not leave SEIP pending after the line drops (an endless claim-0 storm in Linux)."""
    prog = _asm(
        _i(0x13, 5, 0, 0, 0x20),  # addi t0, zero, STIP
        (0x344 << 20) | (5 << 15) | (2 << 12) | 0x73,  # csrrs zero, mip, t0
        (0x344 << 20) | (5 << 15) | (3 << 12) | 0x73,  # csrrc zero, mip, t0
        0x0000006F,  # j .
    )
    mem, eng = _engine(prog)
    eng.set_irq(0, 9, True)
    eng.run(3)
    assert eng.pc(0) == 0x8000_000C
    eng.set_irq(0, 9, False)
    assert eng.read_csr(0, 0x344) & ((1 << 9) | (1 << 5)) == 0


def test_guest_debug_ebreak_exits_and_step_runs_one_hart():
    """The debugger's engine hooks: with guest debug on, ebreak exits as DEBUG at the ebreak (off: it traps);
    step(h) runs exactly one instruction of hart h and none of the others."""
    prog = _asm(_i(0x13, 5, 0, 5, 1), _i(0x13, 5, 0, 5, 1), 0x00100073, 0x0000006F)  # addi t0,t0,1 x2; ebreak; j .
    mem, eng = _engine(prog, nharts=2)
    eng.write_csr(0, 0x305, 0x8000_0000 + 12)
    eng.write_csr(1, 0x305, 0x8000_0000 + 12)
    assert eng.step(1).reason is ExitReason.BUDGET
    assert (eng.pc(0), eng.pc(1), eng.get_reg(0, 5), eng.get_reg(1, 5)) == (0x8000_0000, 0x8000_0004, 0, 1)
    eng.set_guest_debug(True)
    ex = eng.run(100)
    assert ex.reason is ExitReason.DEBUG and ex.addr == 0x8000_0008 and ex.size == 0
    assert eng.pc(ex.vcpu) == 0x8000_0008  # not executed
    eng.set_guest_debug(False)
    eng.run(5000)  # (more than a slice: both harts run)
    assert eng.read_csr(0, 0x342) == 3 and eng.read_csr(1, 0x342) == 3  # both took the breakpoint exception
