"""Trap and emulate (``--mode trap``) at the engine: an S-mode program (the guest kernel's view) runs
deprivileged in U-mode under the monitor, and must see exactly what it sees when its S-mode is emulated:
its CSRs (emulated on each access), sret into U-mode, its own trap handler for its user program's ecalls and
faults, its Sv39 page tables (shadowed: A/D bits kept, a targeted sfence.vma, SUM), SBI calls answered by the
VMM. The same program runs both ways; then hostile programs: random words as kernel code, page tables that
point at the monitor's shadow pool or at nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import require_tool
from virtkit.engines.riscv import consts
from virtkit.engines.riscv.asm import build
from virtkit.machine.memory import GuestMemory

HEAD = "\n.section .text.init\n.globl _start\n_start:\n"
GUEST_RAM = 1 << 20

#: an S-mode program (starts in S-mode with the SBI in the VMM, as --bios builtin starts a kernel)
PROGRAM = r"""
.option norvc
.macro EXPECT reg, value, n
    li t0, \value
    beq \reg, t0, 9f
    FAIL \n
9:
.endm
    la t0, shandler
    csrw stvec, t0
    li t1, 0x1234
    csrw sscratch, t1           # a CSR the monitor emulates
    csrr t2, sscratch
    EXPECT t2, 0x1234, 2
    csrsi sstatus, 2            # SIE on, then off, through the monitor
    csrr t2, sstatus
    andi t2, t2, 2
    EXPECT t2, 2, 3
    csrci sstatus, 2
    rdtime t3                   # the time CSR (scounteren from the SBI implementation: allowed)
    li a7, 0x10                 # SBI base: get_spec_version, answered by the VMM
    li a6, 0
    ecall
    EXPECT a0, 0, 4
    # Sv39: VA 0x8000_0000 -> itself (kernel, 1 GiB superpage, no U), VA 0x4000_0000 -> upage (U, 4 KiB)
    la t1, root
    li t2, ((0x80000000 >> 12) << 10) | 0xcf
    sd t2, 16(t1)
    la t2, l1
    srli t2, t2, 12
    slli t2, t2, 10
    ori t2, t2, 1
    sd t2, 8(t1)
    la t1, l1
    la t2, l0
    srli t2, t2, 12
    slli t2, t2, 10
    ori t2, t2, 1
    sd t2, 0(t1)
    la t1, l0
    la t2, upage
    srli t2, t2, 12
    slli t2, t2, 10
    ori t2, t2, 0x17            # V R W U (no A, no D: the walker sets them)
    sd t2, 0(t1)
    la t1, root
    srli t1, t1, 12
    li t2, 8 << 60
    or t1, t1, t2
    csrw satp, t1
    sfence.vma
    li t4, 0x40000000
    li s1, 0
    ld t5, 0(t4)                # a U page from S-mode without SUM: the guest's own page fault
    EXPECT s1, 13, 5
    EXPECT s3, 0x40000000, 6
    li t1, 1 << 18
    csrs sstatus, t1            # SUM
    li s1, 0
    li t5, 77
    sd t5, 0(t4)
    EXPECT s1, 0, 7
    la t1, l0                   # A and D set in the guest's PTE
    ld t2, 0(t1)
    andi t2, t2, 0xc0
    EXPECT t2, 0xc0, 8
    ld t2, 0(t1)                # remap VA 0x4000_0000 to upage2, tell the TLB about that page only
    la t3, upage2
    srli t3, t3, 12
    slli t3, t3, 10
    ori t3, t3, 0xdf
    sd t3, 0(t1)
    sfence.vma t4
    ld t5, 0(t4)
    EXPECT t5, 99, 9            # upage2's word, not the 77 stored through the old mapping
    li t1, 1 << 18
    csrc sstatus, t1
    # the user program: three instructions copied into upage2, run in U-mode at VA 0x4000_0008
    la t1, ucode
    la t2, upage2
    lw t3, 0(t1)
    sw t3, 8(t2)
    lw t3, 4(t1)
    sw t3, 12(t2)
    lw t3, 8(t1)
    sw t3, 16(t2)
    fence.i
    li t1, 0x40000008
    csrw sepc, t1
    li t1, 1 << 8
    csrc sstatus, t1            # SPP = U
    li s1, 0
    sret
back:
    EXPECT s1, 8, 10            # the user program's ecall, in our handler
    EXPECT s2, 0x4000000c, 11   # at its address
    EXPECT a5, 42, 12           # after it ran in U-mode
    li s1, 0
    .word 0x30200073            # mret: illegal in S-mode, handed to our handler
    EXPECT s1, 2, 13
    EXPECT s3, 0x30200073, 14
    li s1, 0
    csrr t1, mstatus            # an M-mode CSR: the same
    EXPECT s1, 2, 15
    PASS
ucode:
    li a5, 42
    ecall
    j .
.align 2
shandler:
    csrr s1, scause
    csrr s2, sepc
    csrr s3, stval
    li t0, 8
    beq s1, t0, 1f
    addi s2, s2, 4
    csrw sepc, s2
    sret
1:  li t0, 1 << 8
    csrs sstatus, t0            # back to S-mode
    la t0, back
    csrw sepc, t0
    sret
.data
.align 12
root: .space 4096
l1: .space 4096
l0: .space 4096
upage: .space 4096
upage2: .dword 99
.space 4088
"""


def _engine(tmp_path, source: str, trap: bool, nharts: int = 1, name: str = "prog"):
    from virtkit.engines.riscv.engine import RiscvEngine
    from virtkit.machine.elf import load_elf

    require_tool("riscv64-linux-gnu-gcc")
    elf = build(HEAD + source, tmp_path, name)
    pool = nharts * consts.TM_POOL_PAGES * 4096 if trap else 0
    mem = GuestMemory(GUEST_RAM + pool, 0x8000_0000)
    img = load_elf(elf, mem)
    eng = RiscvEngine(mem, nharts, reset_pc=img.entry, deterministic=True, jit=0, sbi=True, trap=trap,
                      guest_ram=GUEST_RAM if trap else None)
    eng.tohost = img.symbols["tohost"]
    return eng, img


def _run(eng, budget: int = 2_000_000):
    from virtkit.devices.sbi import Sbi
    from virtkit.machine.engine import ExitReason

    class Console:
        def emit(self, data: bytes) -> None:
            pass

        def take_input(self, n: int) -> bytes:
            return b""

    sbi = Sbi(eng, Console(), lambda *a: None)
    left = budget
    while left > 0:
        ex = eng.run(min(left, 100_000))
        left -= 100_000
        if ex.reason is ExitReason.HYPERCALL:
            eng.complete_hypercall(ex.vcpu, sbi.hypercall(ex.vcpu, eng.hypercall_args(ex.vcpu)))
        elif eng.is_htif(ex):
            return eng.mem.read_u64(ex.addr) >> 1
    return None


@pytest.mark.parametrize("trap", [False, True], ids=["emulated", "trap-and-emulate"])
def test_the_kernels_view_is_the_same(tmp_path, trap):
    eng, _ = _run_program(tmp_path, trap)
    if trap:
        m = eng.monitor_counts()
        assert m["privileged_instructions"] > 10 and m["shadow_fills"] > 5 and m["guest_page_faults"] >= 1
        assert m["sbi_calls"] >= 1 and eng.priv(0) in (0, 1) and int(eng.hs[0, consts.HS_PRIV]) == 0


def _run_program(tmp_path, trap):
    eng, img = _engine(tmp_path, PROGRAM, trap)
    code = _run(eng)
    assert code == 0, f"failing check {code}"
    return eng, img


#: kernel code that points its page tables at the monitor's pool, and at nothing, and touches both
SCRIBBLE = r"""
.option norvc
    la t0, handler
    csrw stvec, t0
    la t1, root
    li t2, ((0x80000000 >> 12) << 10) | 0xcf      # the kernel, identity
    sd t2, 16(t1)
    la t2, l1                                     # VA 0x4000_0000 -> the shadow pool (above the guest's RAM)
    srli t2, t2, 12
    slli t2, t2, 10
    ori t2, t2, 1
    sd t2, 8(t1)
    la t3, l1
    la t2, l0
    srli t2, t2, 12
    slli t2, t2, 10
    ori t2, t2, 1
    sd t2, 0(t3)
    la t3, l0
    li t2, (({pool} >> 12) << 10) | 0xcf
    sd t2, 0(t3)
    li t2, ((0x4000000000 >> 12) << 10) | 0xcf    # VA 0xC000_0000 -> nothing at all
    sd t2, 24(t1)
    srli t1, t1, 12
    li t2, 8 << 60
    or t1, t1, t2
    csrw satp, t1
    sfence.vma
    li s1, 0
    li t4, 0x40000000
    sd t4, 0(t4)                 # a store into the monitor's memory: an access fault, nothing written
    li t0, 7
    bne s1, t0, fail
    li s1, 0
    li t4, 0xC0000000
    ld t5, 0(t4)
    li t0, 5
    bne s1, t0, fail
    PASS
fail:
    FAIL 2
.align 2
handler:
    csrr s1, scause
    csrr t0, sepc
    addi t0, t0, 4
    csrw sepc, t0
    sret
.data
.align 12
root: .space 4096
l1: .space 4096
l0: .space 4096
"""


def test_page_tables_pointing_at_the_monitor_or_at_nothing_get_access_faults(tmp_path):
    eng, _ = _engine(tmp_path, SCRIBBLE.replace("{pool}", str(0x8000_0000 + GUEST_RAM)), trap=True, name="s")
    pool = bytes(eng.mem.array[GUEST_RAM:GUEST_RAM + 3 * 4096])
    assert _run(eng) == 0
    assert eng.mem.array[GUEST_RAM:GUEST_RAM + 8].view(np.int64)[0] != 0x40000000  # never written by the guest
    assert len(pool) == 3 * 4096


RANDOM = r"""
.option norvc
    la t0, words
    csrw stvec, t0              # its own traps land in the random words too
    j words
.align 12
words:
    .space 4096
"""


@pytest.mark.parametrize("seed", range(4))
def test_random_kernel_code_never_breaks_the_monitor(tmp_path, seed):
    """Random words run as the deprivileged kernel (vS in U-mode): CSR accesses, sret, wfi, sfence, page tables
    of garbage; the engine stops at its budget, its state in range, the monitor's pool above the guest's RAM."""
    eng, img = _engine(tmp_path, RANDOM, trap=True, nharts=2 if seed % 2 else 1, name="r")
    rng = np.random.default_rng(seed)
    eng.mem.write(img.symbols["words"], rng.integers(0, 1 << 32, 1024, dtype=np.uint64).astype(np.uint32).tobytes())
    for _ in range(10):
        _run(eng, 100_000)
        for h in range(eng.nharts):
            assert int(eng.hs[h, consts.HS_PRIV]) == 0 and int(eng.hs[h, consts.HS_VPRIV]) in (0, 1)
            pool = int(eng.csr[h, consts.TM_POOL])
            assert GUEST_RAM <= pool and pool <= int(eng.csr[h, consts.TM_NEXT]) <= pool + consts.TM_POOL_PAGES * 4096


def test_a_snapshot_keeps_the_guests_privilege_and_refuses_the_other_mode(tmp_path):
    from virtkit.machine.state import StateError

    eng, _ = _engine(tmp_path, PROGRAM, trap=True)
    eng.run(20_000)
    st = eng.save()
    assert st["trap"] == 1
    again, _ = _engine(tmp_path, PROGRAM, trap=True, name="p2")
    again.mem.array[:] = eng.mem.array
    again.restore(st)
    assert again.priv(0) == eng.priv(0) and int(again.csr[0, consts.TM_ZAP]) == 1  # shadows rebuilt
    assert _run(again) == 0
    plain, _ = _engine(tmp_path, PROGRAM, trap=False, name="p3")
    with pytest.raises(StateError, match="trap and emulate"):
        plain.restore(st)


def test_a_debugger_sees_the_guests_privilege_and_satp(tmp_path):
    """The GDB stub's view under trap and emulate is the guest's: its privilege (vS) and its satp, not the
    real U-mode and the shadow root."""
    import struct

    from virtkit.engines.riscv import gdb

    eng, _ = _engine(tmp_path, PROGRAM, trap=True)
    eng.run(3_000)
    eng.csr[0, consts.TM_SATP] = ((8 << 60) | 0x80042) - (1 << 64)  # as the guest's csrw satp leaves it (int64)
    t = eng.gdb_target()
    assert struct.unpack("<Q", t.read_reg(0, gdb.PRIV))[0] == 1
    assert struct.unpack("<Q", t.read_reg(0, gdb.CSR0 + consts.SATP))[0] == (8 << 60) | 0x80042
    assert eng.read_csr(0, consts.SATP) != (8 << 60) | 0x80042  # the real register: a shadow root
