"""Privileged architecture: traps, delegation, CSR masks, counters, interrupts (CLINT), FP state."""

from __future__ import annotations

from test_core_basic import run_asm

# M-mode handler: records mcause/mtval/mepc in s2/s3/s4, skips the trapping instruction
# (4 bytes) and returns; after an interrupt (mcause < 0) it disables MIE in mstatus.MPIE.
# `GOTO_S label` / `GOTO_U label` enter S/U mode at label via mret.
COMMON = r"""
.option norvc
.macro GOTO mode, label
    li t0, 3 << 11
    csrc mstatus, t0
    li t0, \mode << 11
    csrs mstatus, t0
    la t0, \label
    csrw mepc, t0
    mret
.endm
.macro TRY
    li s2, 0
.endm
.macro EXPECT reg, value, n
    li t0, \value
    beq \reg, t0, 9f
    FAIL \n
9:
.endm
    la t0, mhandler
    csrw mtvec, t0
    li t0, -1                    # PMP: one NAPOT entry over everything, RWX for S and U
    csrw pmpaddr0, t0
    li t0, 0x1f
    csrw pmpcfg0, t0
    li s2, -1
    j main
.align 2
mhandler:
    csrr s2, mcause
    csrr s3, mtval
    csrr s4, mepc
    bltz s2, 1f
    li t0, 11               # ecall from M: used by tests to get back to M
    beq s2, t0, 2f
    li t0, 8
    beq s2, t0, 3f          # ecall from U: return to M at s5
    li t0, 9
    beq s2, t0, 3f          # ecall from S: return to M at s5
    li t0, 12
    beq s2, t0, 4f          # fetch page fault: return to ra
    li t0, 1
    beq s2, t0, 4f          # fetch access fault: return to ra
    addi t0, s4, 4
    csrw mepc, t0
    mret
1:  li t0, 1 << 7           # interrupt: return with MPIE=0 and the source disabled
    csrc mstatus, t0
    csrw mie, zero
    mret
2:  addi t0, s4, 4
    csrw mepc, t0
    mret
3:  li t0, 3 << 11          # back to M-mode at the address in s5
    csrs mstatus, t0
    csrw mepc, s5
    mret
4:  csrw mepc, ra
    mret
main:
"""


def check(tmp_path, body: str, **kw) -> None:
    res = run_asm(tmp_path, COMMON + body, **kw)
    assert res.exit_code == 0, f"failing check {res.exit_code} (reason {res.reason})"


def test_ecall_illegal_and_tval(tmp_path):
    check(tmp_path, r"""
    ecall
    EXPECT s2, 11, 2
    .word 0xffffffff            # illegal: tval is the instruction bits
    EXPECT s2, 2, 3
    EXPECT s3, 0xffffffff, 4
    csrr t1, 0x7c0              # custom CSR not implemented
    EXPECT s2, 2, 5
    csrw mvendorid, zero        # read-only CSR
    EXPECT s2, 2, 6
    ebreak
    EXPECT s2, 3, 7
    li t1, 0x1000               # load from unmapped physical memory: access fault with tval
    ld t2, 0(t1)
    EXPECT s2, 5, 8
    EXPECT s3, 0x1000, 9
    sd t2, 0(t1)
    EXPECT s2, 7, 10
    li t1, 0x80000001
    amoadd.w t2, t2, (t1)       # misaligned AMO
    EXPECT s2, 6, 11
    lr.d t2, (t1)
    EXPECT s2, 4, 12
    PASS
""")


def test_csr_masks(tmp_path):
    check(tmp_path, r"""
    csrr t1, misa
    li t2, 0x800000000014112d
    bne t1, t2, bad
    li t1, -1
    csrw medeleg, t1
    csrr t2, medeleg
    EXPECT t2, 0xb3ff, 2
    csrw mideleg, t1
    csrr t2, mideleg
    EXPECT t2, 0x222, 3
    csrw mie, t1
    csrr t2, mie
    EXPECT t2, 0xaaa, 4
    csrw sie, zero
    csrr t2, mie
    EXPECT t2, 0x888, 5
    csrw mie, zero
    csrw mip, t1
    csrr t2, mip
    EXPECT t2, 0x222, 6
    csrw mip, zero
    csrr t2, mstatus
    srli t2, t2, 32
    EXPECT t2, 0xa, 7            # UXL = SXL = 2
    li t1, 2 << 11               # MPP=2 is reserved: WARL keeps the old value
    csrw mstatus, t1
    csrr t2, mstatus
    srli t2, t2, 11
    andi t2, t2, 3
    EXPECT t2, 0, 8
    csrr t1, mhartid
    EXPECT t1, 0, 9
    li t1, 0x8000000000001234    # satp: Sv39 accepted
    csrw satp, t1
    csrr t2, satp
    bne t1, t2, bad
    li t1, 0x5000000000000000    # unsupported mode: write ignored
    csrw satp, t1
    csrr t2, satp
    li t1, 0x8000000000001234
    bne t1, t2, bad
    csrw satp, zero
    csrr t1, pmpcfg1             # odd pmpcfg does not exist on RV64
    EXPECT s2, 2, 10
    li t1, -1
    csrw pmpaddr0, t1
    csrr t2, pmpaddr0
    li t1, 0x3fffffffffffff
    bne t1, t2, bad
    csrr t2, pmpaddr63
    EXPECT t2, 0, 11
    csrw mtvec, t1               # mtvec mode 2/3 reserved
    csrr t2, mtvec
    andi t2, t2, 3
    EXPECT t2, 1, 12
    la t0, mhandler
    csrw mtvec, t0
    csrr t1, menvcfg
    csrr t1, mconfigptr
    EXPECT t1, 0, 13
    csrr t1, mhpmcounter5
    EXPECT t1, 0, 14
    PASS
bad:
    FAIL 20
""")


def test_s_u_modes_delegation_and_returns(tmp_path):
    check(tmp_path, r"""
    la t0, shandler
    csrw stvec, t0
    li t0, 1 << 8                # delegate ecall from U to S
    csrw medeleg, t0
    la s5, back1
    GOTO 1, smode
smode:
    csrr t1, sstatus             # legal in S
    csrr t1, mstatus             # illegal in S -> M handler
    EXPECT s2, 2, 2
    la t0, umode
    csrw sepc, t0
    li t0, 1 << 8
    csrc sstatus, t0             # SPP = U
    sret
umode:
    li s6, 0
    ecall                        # delegated: S handler sees scause 8
    EXPECT s6, 8, 3
    csrr t1, sstatus             # illegal in U: goes to M (not delegated)
    EXPECT s2, 2, 4
    wfi                          # illegal in U
    EXPECT s2, 2, 5
    rdcycle t1                   # mcounteren = 0: illegal below M
    EXPECT s2, 2, 6
    li s2, 0
    ecall                        # from U, handled in S (scause=8), which ecalls to M
back1_u:
    FAIL 7
back1:
    EXPECT s2, 9, 8              # the final ecall came from S
    # TSR / TVM / TW traps in S
    li t0, (1 << 22) | (1 << 20) | (1 << 21)
    csrs mstatus, t0
    csrw medeleg, zero
    la s5, back2
    GOTO 1, smode2
smode2:
    sret
    EXPECT s2, 2, 9
    csrr t1, satp
    EXPECT s2, 2, 10
    sfence.vma
    EXPECT s2, 2, 11
    wfi
    EXPECT s2, 2, 12
    ecall
back2:
    EXPECT s2, 9, 13
    PASS
.align 2
shandler:
    csrr s6, scause
    li t0, 8
    bne s6, t0, 1f
    csrr t0, sepc
    addi t0, t0, 4
    csrw sepc, t0
    la t0, back1_u
    csrr t1, sepc
    addi t1, t1, -4
    # second U ecall (s2 == 0): leave through M with an S ecall
    bnez s2, 2f
    ecall
2:  sret
1:  FAIL 30
""")


def test_timer_and_software_interrupts_clint(tmp_path):
    check(tmp_path, r"""
    li s7, 0x2000000
    li s2, 0
    li t1, 0x200bff8
    ld t2, 0(t1)                 # mtime
    addi t2, t2, 50
    li t3, 0x2004000
    sd t2, 0(t3)                 # mtimecmp = now + 50
    li t0, 1 << 7
    csrw mie, t0
    csrsi mstatus, 8
1:  wfi
    beqz s2, 1b
    li t0, 0x8000000000000007
    bne s2, t0, bad
    li t0, 1 << 7
    csrr t1, mip
    and t1, t1, t0
    beqz t1, bad                 # MTIP still pending (mtimecmp not rewritten)
    li t2, -1
    sd t2, 0(t3)
    csrr t1, mip
    and t1, t1, t0
    bnez t1, bad
    # software interrupt
    li s2, -1
    li t0, 1 << 3
    csrw mie, t0
    li t1, 1
    sw t1, 0(s7)                 # msip[0] = 1
    csrsi mstatus, 8
    nop
    nop
    li t0, 0x8000000000000003
    bne s2, t0, bad
    sw zero, 0(s7)
    # priority: MSI before MTI when both pending
    li s2, -1
    sw t1, 0(s7)
    sd zero, 0(t3)
    li t0, (1 << 3) | (1 << 7)
    csrw mie, t0
    csrsi mstatus, 8
    nop
    li t0, 0x8000000000000003
    bne s2, t0, bad
    # time CSR follows mtime
    li t1, 0x200bff8
    ld t2, 0(t1)
    rdtime t4
    bltu t4, t2, bad
    PASS
bad:
    FAIL 2
""")


def test_delegated_supervisor_timer_interrupt(tmp_path):
    check(tmp_path, r"""
    la t0, shandler
    csrw stvec, t0
    li t0, 1 << 5
    csrw mideleg, t0
    csrw mie, t0                 # STIE
    csrs mip, t0                 # M raises STIP
    la s5, done
    li s6, 0
    GOTO 1, smode
smode:
    csrsi sstatus, 2             # SIE: the interrupt is taken in S
    nop
    nop
    EXPECT s6, 0x8000000000000005, 2
    ecall
done:
    EXPECT s2, 9, 3
    PASS
.align 2
shandler:
    csrr s6, scause
    li t0, 1 << 5                # SPIE = 0: sret leaves interrupts off
    csrc sstatus, t0
    sret
""")


def test_fp_state_nan_boxing_and_counters(tmp_path):
    check(tmp_path, r"""
    la a0, fdata
    fld f1, 0(a0)                # FS = Off: illegal
    EXPECT s2, 2, 2
    csrr t1, fcsr
    EXPECT s2, 2, 3
    li s2, -1
    li t0, 1 << 13               # FS = Initial
    csrs mstatus, t0
    flw f2, 0(a0)
    fmv.x.d t1, f2
    li t2, 0xffffffff3f800000    # NaN-boxed 1.0f
    csrr t3, mstatus
    bltz t3, 5f                  # SD set because FS became Dirty
    FAIL 4
5:  li t4, 0xffffffff3f800000
    fsd f2, 8(a0)
    ld t5, 8(a0)
    bne t5, t4, bad
    .option rvc
    c.fld f8, 8(a0)
    .option norvc
    fsd f8, 16(a0)
    ld t5, 16(a0)
    bne t5, t4, bad
    csrwi fflags, 0x1f
    csrwi frm, 3
    csrr t1, fcsr
    EXPECT t1, 0x7f, 5
    rdinstret t1
    rdinstret t2
    sub t3, t2, t1
    EXPECT t3, 1, 6
    csrw minstret, zero
    csrr t1, minstret
    EXPECT t1, 0, 7
    li t0, 4
    csrw mcountinhibit, t0
    csrr t1, minstret
    nop
    csrr t2, minstret
    bne t1, t2, bad
    PASS
bad:
    FAIL 9
.data
.align 3
fdata: .word 0x3f800000, 0
.dword 0, 0
""")


def test_vectored_mtvec_and_mret_clears_mprv(tmp_path):
    check(tmp_path, r"""
    la t0, vtable
    ori t0, t0, 1                # vectored: interrupts jump to base + 4 * cause
    csrw mtvec, t0
    li s6, 0
    li t1, 1
    li t2, 0x2000000
    sw t1, 0(t2)                 # MSIP
    li t0, 1 << 3
    csrw mie, t0
    csrsi mstatus, 8
    nop
    EXPECT s6, 3, 2              # landed in vtable slot 3
    sw zero, 0(t2)
    la t0, mhandler              # exceptions still go to the base in vectored mode
    ori t0, t0, 1
    csrw mtvec, t0
    li t0, (1 << 17) | (1 << 11) # MPRV with MPP = S: mret to S clears MPRV
    csrs mstatus, t0
    la s5, back
    la t0, smode
    csrw mepc, t0
    mret
smode:
    ecall
back:
    csrr t1, mstatus
    srli t1, t1, 17
    andi t1, t1, 1
    EXPECT t1, 0, 3
    PASS
.align 6
vtable:
    j bad
    j bad
    j bad
    j msi
    j bad
    j bad
    j bad
    j bad
msi:
    li s6, 3
    csrw mie, zero
    mret
bad:
    FAIL 9
""")
