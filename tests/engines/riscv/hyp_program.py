"""The H-extension test program (bare metal, M-mode harness): assembly shared by the virtkit and QEMU runs of
``test_core_hyp.py``. Marks in braces are checks that run on virtkit only (the test says why)."""

from __future__ import annotations

PROGRAM = r"""
.option norvc
.macro TRY
    li s2, 0
    li s3, 0
    li s6, 0
    li s7, 0
    li s8, 0
.endm
.macro EXPECT reg, value, n
    li t0, \value
    beq \reg, t0, 9f
    FAIL \n
9:
.endm
.macro SAME a, b, n
    beq \a, \b, 9f
    FAIL \n
9:
.endm
.macro HLVD rd, rs1
    .insn r 0x73, 4, 0x36, \rd, \rs1, x0
.endm
.macro HLVXWU rd, rs1
    .insn r 0x73, 4, 0x34, \rd, \rs1, x3
.endm
.macro HSVD rs2, rs1
    .insn r 0x73, 4, 0x37, x0, \rs1, \rs2
.endm
.macro HFENCE_GVMA
    .insn r 0x73, 0, 0x31, x0, x0, x0
.endm
.macro HFENCE_VVMA
    .insn r 0x73, 0, 0x11, x0, x0, x0
.endm
.macro GOTO priv, virt, label
    li t0, (3 << 11) | (1 << 39)
    csrc mstatus, t0
    li t0, (\priv << 11) | (\virt << 39)
    csrs mstatus, t0
    la t0, \label
    csrw mepc, t0
    mret
.endm
.macro LINK tbl, idx, sym, flags
    la t1, \tbl
    la t2, \sym
    srli t2, t2, 12
    slli t2, t2, 10
    ori t2, t2, \flags
    sd t2, (\idx * 8)(t1)
.endm
.macro LINKC tbl, idx, pa, flags
    la t1, \tbl
    li t2, ((\pa >> 12) << 10) | \flags
    sd t2, (\idx * 8)(t1)
.endm
    la t0, mhandler
    csrw mtvec, t0
    li t0, -1
    csrw pmpaddr0, t0
    li t0, 0x1f
    csrw pmpcfg0, t0
    j main

.align 2
mhandler:
    csrr s2, mcause
    csrr s3, mtval
    csrr s4, mepc
    csrr s6, 0x34b              # mtval2
    csrr s7, 0x34a              # mtinst
    csrr s8, mstatus
    bltz s2, 5f
    li t0, 8
    beq s2, t0, 3f
    li t0, 9
    beq s2, t0, 3f
    li t0, 10
    beq s2, t0, 3f
    addi t0, s4, 4              # anything else: skip the instruction, back to the mode that trapped
    csrw mepc, t0
    mret
3:  li t0, 3 << 11              # an ecall from a lower mode: back to M-mode at s5
    csrs mstatus, t0
    li t0, 1 << 39
    csrc mstatus, t0
    csrw mepc, s5
    mret
5:  csrw mie, zero
    li t0, 1 << 7
    csrc mstatus, t0
    mret

.align 2
shandler:                       # HS-mode: what medeleg hands the hypervisor
    csrr s2, scause
    csrr s3, stval
    csrr s6, 0x643              # htval
    csrr s7, 0x64a              # htinst
    csrr s8, 0x600              # hstatus
    bltz s2, 1f
    csrr t0, sepc
    addi t0, t0, 4
    csrw sepc, t0
    sret
1:  csrw 0x645, zero            # an interrupt: hvip cleared
    sret

.align 2
vshandler:                      # VS-mode: what hedeleg/hideleg hand the guest (its scause is vscause)
    csrr s2, scause
    csrr s3, stval
    csrr s8, sstatus
    bltz s2, 1f
    csrr t0, sepc
    addi t0, t0, 4
    csrw sepc, t0
    sret
1:  csrw sie, zero
    sret

main:
    # ---- CSRs in M-mode
    csrr t1, misa
    srli t1, t1, 7
    andi t1, t1, 1
    EXPECT t1, 1, 2
    csrw mideleg, zero
    csrr t1, mideleg
    li t2, 0x1444
    and t1, t1, t2
    EXPECT t1, 0x1444, 3        # the VS-level interrupts and SGEI: delegated to HS for good
    csrw 0x600, zero
    csrr t1, 0x600
    srli t1, t1, 32
    andi t1, t1, 3
    EXPECT t1, 2, 4             # hstatus.VSXL: 64-bit
    li t2, (1 << 7) | (1 << 8) | (1 << 22)
    csrw 0x600, t2
    csrr t1, 0x600
    and t1, t1, t2
    EXPECT t1, (1 << 7) | (1 << 8) | (1 << 22), 5
    csrw 0x600, zero
    li t1, -1
    csrw 0x602, t1              # hedeleg: ecalls from HS/VS/M and the H causes never go to VS
    csrr t1, 0x602
    li t2, (7 << 9) | (0xf << 20)
    and t1, t1, t2
    EXPECT t1, 0, 6
    csrw 0x602, zero
    li t1, -1
    csrw 0x603, t1              # hideleg: the VS-level interrupts only
    csrr t1, 0x603
    EXPECT t1, 0x444, 7
    csrw 0x603, zero
{warl}
    li t1, 4
    csrw 0x645, t1              # hvip.VSSIP shows in mip
    csrr t1, mip
    andi t1, t1, 4
    EXPECT t1, 4, 9
    csrw 0x645, zero
    li t1, 0x1234
    csrw 0x34b, t1
    csrr t2, 0x34b
    EXPECT t2, 0x1234, 10

    # ---- tables. G-stage (Sv39x4): GPA 0x8000_0000 + 1 GiB = the RAM (identity); GPA 0xC000_0000.. four pages
    LINKC groot, 2, 0x80000000, 0xdf
    LINK groot, 3, gl1, 1
    LINK gl1, 0, gl0, 1
    LINK gl0, 0, dpage_rw, 0xd7     # VRW-U-AD
    LINK gl0, 1, dpage_ro, 0x53     # VR--U-A
    LINK gl0, 2, dpage_nou, 0xc7    # VRW---AD (no U: a guest-page fault)
    LINK gl0, 3, dpage_x, 0x59      # V--XU-A (execute only)
    LINKC gl0, 5, 0x4000000000, 0xd7  # a page of host physical space with no memory: access faults
    # VS-stage (Sv39) in guest physical memory: VA 0x4000_0000 -> GPA 0xC000_0000 (S), VA 0x8000_0000 ->
    # GPA 0x8000_0000 (S), VA 0xC000_0000 -> GPA 0xC000_0000 (U), VA 0x1_0000_0000 invalid, VA 0x1_4000_0000
    # through a table at GPA 0xC000_4000, which the G-stage does not map
    LINKC vsroot, 1, 0xC0000000, 0xcf
    LINKC vsroot, 2, 0x80000000, 0xcf
    LINKC vsroot, 3, 0xC0000000, 0xdf
    LINKC vsroot, 5, 0xC0004000, 1
    la t1, dpage_rw
    li t2, 0x1122334455667788
    sd t2, 0(t1)
    la t2, groot
    srli t2, t2, 12
    li t1, 8 << 60
    or t1, t1, t2
    csrw 0x680, t1
    csrr t3, 0x680
    SAME t1, t3, 11
    HFENCE_GVMA

    # ---- V=1 with vsatp Bare: the guest's physical addresses through the G-stage
    csrw 0x280, zero
    la s5, 1f
    GOTO 1, 1, vs1
1:  EXPECT s2, 10, 32           # ecall from VS-mode
    j part2
vs1:
    TRY
    li t2, 0xC0000000
    ld t3, 0(t2)
    EXPECT s2, 0, 20
    li t4, 0x1122334455667788
    SAME t3, t4, 21
    TRY
    li t5, 0xC0001000
    sd t3, 0(t5)                # read-only at the G-stage
    EXPECT s2, 23, 22
    li t4, 0xC0001000
    SAME s3, t4, 23             # mtval: the guest virtual address
    li t4, 0xC0001000 >> 2
    SAME s6, t4, 24             # mtval2: the guest physical address >> 2
    srli t4, s8, 38
    andi t4, t4, 3
    EXPECT t4, 3, 25            # mstatus.GVA and MPV
    srli t4, s8, 11
    andi t4, t4, 3
    EXPECT t4, 1, 26            # MPP: S (VS)
    EXPECT s7, 0, 33            # mtinst: 0 for an explicit access (allowed; so does QEMU)
    TRY
    ebreak                      # tval is the pc, a guest virtual address: GVA
    EXPECT s2, 3, 34
    srli t4, s8, 38
    andi t4, t4, 1
    EXPECT t4, 1, 35
    TRY
    li t5, 0xC0002000
    ld t3, 0(t5)                # no U bit at the G-stage
    EXPECT s2, 21, 27
    TRY
    li t5, 0xC0003000
    ld t3, 0(t5)                # execute-only
    EXPECT s2, 21, 28
    TRY
    li t5, 0xC0004000
    lw t3, 0(t5)                # not mapped
    EXPECT s2, 21, 29
    TRY
    li t5, 0xC0005000
    ld t3, 0(t5)                # mapped to where the host has nothing: an access fault, the guest's address
    EXPECT s2, 5, 36
    SAME s3, t5, 37
    TRY
    li t2, 1 << 41
    ld t3, 0(t2)                # beyond Sv39x4's 41 bits
    EXPECT s2, 21, 30
    li t4, (1 << 41) >> 2
    SAME s6, t4, 31
    ecall

part2:
    # ---- V=1 with vsatp Sv39: both stages
    la t2, vsroot
    srli t2, t2, 12
    li t1, 8 << 60
    or t1, t1, t2
    csrw 0x280, t1
    la s5, 1f
    GOTO 1, 1, vs2
1:  EXPECT s2, 10, 49
    j part3
vs2:
    TRY
    li t2, 0x40000000
    ld t3, 0(t2)
    EXPECT s2, 0, 40
    li t4, 0x1122334455667788
    SAME t3, t4, 41
    TRY
    li t5, 0x40001000
    sd t3, 0(t5)                # VS-stage allows it, the G-stage does not
    EXPECT s2, 23, 42
    li t4, 0x40001000
    SAME s3, t4, 43
    li t4, 0xC0001000 >> 2
    SAME s6, t4, 44
    TRY
    li t2, 0x100000000          # not mapped by the guest: its own page fault
    ld t3, 0(t2)
    EXPECT s2, 13, 45
    SAME s3, t2, 46
    EXPECT s6, 0, 47
    srli t4, s8, 38
    andi t4, t4, 3
    EXPECT t4, 3, 48
    TRY
    li t2, 0x140000000          # the guest's table lives where the G-stage maps nothing: an implicit access
    ld t3, 0(t2)
    EXPECT s2, 21, 50
    SAME s3, t2, 51
    li t4, 0xC0004000 >> 2
    SAME s6, t4, 52
    EXPECT s7, 0x3000, 53       # mtinst: the pseudoinstruction of a 64-bit page-table read
    TRY
    li t2, 0xC0000000           # a U page from VS-mode: SUM decides
    ld t3, 0(t2)
    EXPECT s2, 13, 54
    li t1, 1 << 18
    csrs sstatus, t1            # vsstatus.SUM
    TRY
    ld t3, 0(t2)
    EXPECT s2, 0, 55
    csrc sstatus, t1
    ecall

part3:
    # ---- VS-mode: its supervisor CSRs are the VS ones; what it may not do raises virtual instruction
    li t1, 0x77
    csrw 0x240, t1              # vsscratch
    li t1, 0x55
    csrw sscratch, t1
    li t1, (1 << 20) | (1 << 21) | (1 << 22)
    csrw 0x600, t1              # VTVM, VTW, VTSR
    la s5, 1f
    GOTO 1, 1, vs3
1:  EXPECT s2, 10, 70
    csrr t1, sscratch
    EXPECT t1, 0x55, 71
    csrw 0x600, zero
    j part4
vs3:
    csrr t1, sscratch
    EXPECT t1, 0x77, 60
    TRY
    csrr t1, 0x600              # hstatus
    EXPECT s2, 22, 61
    li t4, 0x60002373
    SAME s3, t4, 62             # tval: the instruction
{vtvm}
    TRY
    sfence.vma
    EXPECT s2, 22, 64
    TRY
    wfi                         # VTW
    EXPECT s2, 22, 65
    TRY
    HFENCE_VVMA
    EXPECT s2, 22, 66
    TRY
    HLVD t1, t2
    EXPECT s2, 22, 67
    TRY
    csrr t1, mstatus            # M-level: illegal, not virtual
    EXPECT s2, 2, 68
    TRY
    sret                        # VTSR
    EXPECT s2, 22, 69
    ecall

part4:
    # ---- VU-mode (vsatp Bare)
    csrw 0x280, zero
    la s5, 1f
    GOTO 0, 1, vu1
1:  EXPECT s2, 8, 85            # ecall from VU-mode: 8
    srli t4, s8, 39
    andi t4, t4, 1
    EXPECT t4, 1, 86
{vu}
    EXPECT a4, 22, 82
    EXPECT a5, 22, 83
    j part5
vu1:                            # no FAIL here: results in a2..a5, checked in M-mode
    TRY
    csrr t1, sstatus
    mv a2, s2
    TRY
    sret
    mv a3, s2
    TRY
    wfi
    mv a4, s2
    TRY
    csrr t1, 0x600
    mv a5, s2
    ecall

part5:
    # ---- delegation: guest page faults to VS (hedeleg), G-stage faults and virtual instruction to HS
    la t2, vsroot
    srli t2, t2, 12
    li t1, 8 << 60
    or t1, t1, t2
    csrw 0x280, t1
    la t0, shandler
    csrw stvec, t0
    la t0, vshandler
    csrw 0x205, t0
    li t0, (1 << 13) | (1 << 21) | (1 << 22) | (1 << 23)
    csrw medeleg, t0
    li t0, 1 << 13
    csrw 0x602, t0
    la s5, 1f
    GOTO 1, 1, vs4
1:  EXPECT s2, 10, 96
    j part6
vs4:
    TRY
    li t2, 0x100000000
    ld t3, 0(t2)                # the guest's own page fault: its handler
    EXPECT s2, 13, 90
    SAME s3, t2, 91
    TRY
    li t2, 0x40000000
    li t5, 0x40001000
    sd t3, 0(t5)                # the hypervisor's
    EXPECT s2, 23, 92
    li t4, 0xC0001000 >> 2
    SAME s6, t4, 93             # htval
    srli t4, s8, 6
    andi t4, t4, 7
    EXPECT t4, 7, 94            # hstatus.GVA, SPV, SPVP
    TRY
    csrr t1, 0x600
    EXPECT s2, 22, 95
    ecall

part6:
    # ---- HLV/HSV from HS-mode, as VS-mode (hstatus.SPVP) would
    csrw medeleg, zero
    csrw 0x602, zero
    li t0, 1 << 8
    csrs 0x600, t0
    la s5, 1f
    GOTO 1, 0, hs1
1:  EXPECT s2, 9, 107
    j part7
hs1:
    TRY
    li t2, 0x40000000
    HLVD t3, t2
    EXPECT s2, 0, 100
    li t4, 0x1122334455667788
    SAME t3, t4, 101
    TRY
    HSVD t3, t2
    EXPECT s2, 0, 102
    TRY
    li t5, 0x40001000
    HSVD t3, t5
    EXPECT s2, 23, 103
    srli t4, s8, 38
    andi t4, t4, 3
    EXPECT t4, 1, 104           # GVA, and MPV 0: HS-mode trapped
{hlvx}
{hlvsum}
    ecall

part7:
    la s5, 1f                   # HLV from U-mode without hstatus.HU: illegal
    GOTO 0, 0, u1
1:  EXPECT s2, 8, 111
    EXPECT a2, 2, 110
    li t0, 1 << 20
    csrs mstatus, t0            # TVM: hgatp and HFENCE.GVMA trap in HS-mode
    la s5, 1f
    GOTO 1, 0, hs2
1:  li t0, 1 << 20
    csrc mstatus, t0
    EXPECT a2, 2, 112
{tvm}
    EXPECT a4, 0, 114
    j part8
u1:
    TRY
    li t2, 0x40000000
    HLVD t3, t2
    mv a2, s2
    ecall
hs2:
    TRY
    HFENCE_GVMA
    mv a2, s2
    TRY
    csrr t1, 0x680
    mv a3, s2
    TRY
    HFENCE_VVMA
    mv a4, s2
    ecall

part8:
    # ---- M-mode loads with MPRV and MPV: two-stage
    li t0, (3 << 11)
    csrc mstatus, t0
    li t0, (1 << 17) | (1 << 11) | (1 << 39)
    csrs mstatus, t0
    li t2, 0x40000000
    ld t3, 0(t2)
    li t0, (1 << 17) | (1 << 39)
    csrc mstatus, t0
    li t4, 0x1122334455667788
    SAME t3, t4, 120

    # ---- VS-level interrupts: VSSIP through hideleg to the guest (as SSIP), else to the hypervisor
    la t0, shandler
    csrw stvec, t0
    li t0, 4
    csrw 0x603, t0
    csrs mie, t0
    li t0, 2
    csrs 0x200, t0              # vsstatus.SIE
    li t0, 4
    csrs 0x645, t0
    la s5, 1f
    li s2, 0                    # taken as soon as V=1: before vs5's first instruction
    GOTO 1, 1, vs5
1:  csrw 0x645, zero
    csrw 0x603, zero
    li t0, 4
    csrs mie, t0
    csrs 0x645, t0
    la s5, 2f
    li s2, 0
    GOTO 1, 1, vs6
2:  csrw mie, zero
    j part9
vs5:
    nop
    li t4, (1 << 63) | 1
    SAME s2, t4, 130
    ecall
vs6:
    nop
    li t4, (1 << 63) | 2
    SAME s2, t4, 131
    ecall

part9:
    # ---- time in V-mode: htimedelta added; hcounteren off: virtual instruction
    li t0, 1 << 40
    csrw 0x605, t0
    li t0, 2
    csrw mcounteren, t0
    csrw 0x606, t0
    la s5, 1f
    GOTO 1, 1, vs7
1:  csrw 0x606, zero
    la s5, 2f
    GOTO 1, 1, vs8
2:  EXPECT a2, 22, 141
    PASS
vs7:
    rdtime t1
    li t4, 1 << 40
    bgeu t1, t4, 8f
    FAIL 140
8:  ecall
vs8:
    TRY
    rdtime t1
    mv a2, s2
    ecall

.data
.align 14
groot: .space 16384
.align 12
gl1: .space 4096
gl0: .space 4096
vsroot: .space 4096
dpage_rw: .space 4096
dpage_ro: .space 4096
dpage_nou: .space 4096
dpage_x: .space 4096
"""

#: WARL details QEMU 7.2 leaves out (see test_core_hyp.py)
WARL = r"""
    li t1, (10 << 60) | 0x123
    csrw 0x680, t1              # hgatp: an unsupported mode is not ignored (as for satp): WARL, it reads Bare
    csrr t1, 0x680
    EXPECT t1, 0x123, 8
    csrw 0x680, zero
    li t1, -1
    csrw 0x600, t1
    csrr t1, 0x600
    li t2, (2 << 32) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 20) | (1 << 21) | (1 << 22)
    SAME t1, t2, 12             # hstatus: only its fields (VGEIN: no guest external interrupts here)
    csrw 0x600, zero
"""
VTVM = r"""
    TRY
    csrr t1, satp               # VTVM
    EXPECT s2, 22, 63
"""
VU = r"""
    EXPECT a2, 22, 80           # sstatus from VU-mode
    EXPECT a3, 22, 81           # sret from VU-mode
"""
HLVX = r"""
    TRY
    HLVXWU t3, t2               # execute permission: the G-stage page has none
    EXPECT s2, 21, 105
"""
HLVSUM = r"""
    TRY
    li t5, 0xC0000000
    HLVD t3, t5                 # a U page, as VS-mode without vsstatus.SUM
    EXPECT s2, 13, 106
"""
TVM = r"""
    EXPECT a3, 2, 113           # hgatp under mstatus.TVM
"""
