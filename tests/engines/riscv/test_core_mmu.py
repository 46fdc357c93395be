"""Sv39/Sv48 translation (permissions, A/D in hardware, SUM, MXR, MPRV, superpages, SFENCE) and PMP."""

from __future__ import annotations

from test_core_priv import check

# Page tables built at run time. VA 0x8000_0000.. is an identity gigapage (RWX, S-only) so the
# code keeps running after satp is written; VA 0x4000_0000.. goes through pt_l1 -> pt_l0.
MMU_SETUP = r"""
.macro PTE table, index, target, flags
    la t0, \target
    srli t0, t0, 12
    slli t0, t0, 10
    ori t0, t0, \flags
    la t1, \table
    sd t0, (\index * 8)(t1)
.endm
    li t0, (0x80000000 >> 12) << 10 | 0xcf
    la t1, pt_root
    sd t0, 16(t1)
    PTE pt_root, 1, pt_l1, 0x01
    PTE pt_l1, 0, pt_l0, 0x01
    PTE pt_l1, 1, page_a, 0x43      # 2 MiB leaf whose PPN is not 2 MiB aligned
    PTE pt_l0, 0, page_a, 0x03      # R, A=0
    PTE pt_l0, 1, page_b, 0x07      # RW, A=D=0
    PTE pt_l0, 2, page_c, 0xd7      # RW U A D
    PTE pt_l0, 3, page_d, 0x49      # X only, A
    PTE pt_l0, 5, page_d, 0x4b      # RX A (fetch test target)
    PTE pt_root48, 0, pt_root, 0x01
    la t0, pt_root
    srli t0, t0, 12
    li t1, 8 << 60
    or t0, t0, t1
    csrw satp, t0
    sfence.vma
"""

MMU_DATA = r"""
.data
.align 12
pt_root: .space 4096
pt_l1: .space 4096
pt_l0: .space 4096
pt_root48: .space 4096
page_a: .dword 0x1111
.align 12
page_b: .dword 0x2222
.align 12
page_c: .dword 0x3333
.align 12
page_d: .dword 0x4444
    ret
.align 12
"""


def test_sv39_permissions_ad_sum_mxr_superpages(tmp_path):
    check(tmp_path, MMU_SETUP + r"""
    la s5, back
    GOTO 1, smode
smode:
    li a0, 0x40000000
    TRY
    ld t1, 0(a0)
    EXPECT s2, 0, 2
    EXPECT t1, 0x1111, 3
    la t2, pt_l0                      # A set by the walker
    ld t3, 0(t2)
    andi t3, t3, 0x40
    EXPECT t3, 0x40, 4
    TRY
    sd t1, 0(a0)                      # read-only page
    EXPECT s2, 15, 5
    EXPECT s3, 0x40000000, 6
    li a1, 0x40001008
    TRY
    sd t1, 0(a1)                      # RW page, D=0: set in hardware
    EXPECT s2, 0, 7
    ld t3, 8(t2)
    andi t3, t3, 0xc0
    EXPECT t3, 0xc0, 8
    li a2, 0x40002000                 # U page from S without SUM
    TRY
    ld t1, 0(a2)
    EXPECT s2, 13, 9
    li t0, 1 << 18
    csrs sstatus, t0
    TRY
    ld t1, 0(a2)
    EXPECT s2, 0, 10
    EXPECT t1, 0x3333, 11
    li a3, 0x40003000                 # execute-only page
    TRY
    ld t1, 0(a3)
    EXPECT s2, 13, 12
    li t0, 1 << 19
    csrs sstatus, t0
    TRY
    ld t1, 0(a3)
    EXPECT s2, 0, 13
    EXPECT t1, 0x4444, 14
    li a4, 0x40004000                 # invalid PTE
    TRY
    lw t1, 0(a4)
    EXPECT s2, 13, 15
    TRY
    sw t1, 0(a4)
    EXPECT s2, 15, 16
    li a5, 0x40200000                 # misaligned superpage
    TRY
    ld t1, 0(a5)
    EXPECT s2, 13, 17
    li a6, 0x4000000000               # not canonical in Sv39
    TRY
    ld t1, 0(a6)
    EXPECT s2, 13, 18
    li a7, 0x40005008                 # execute from a mapped RX page: returns via ra
    jalr a7
    # map 0x40004000 now; it is visible after sfence.vma
    PTE pt_l0, 4, page_a, 0x43
    sfence.vma
    TRY
    ld t1, 0(a4)
    EXPECT s2, 0, 19
    EXPECT t1, 0x1111, 20
    li a7, 0x40000000                 # fetch from a non-executable page
    TRY
    jalr a7
    EXPECT s2, 12, 21
    ecall
back:
    # M-mode with MPRV: data accesses use MPP's translation
    li t0, (1 << 17) | (1 << 11)
    csrs mstatus, t0
    li a0, 0x40000000
    TRY
    ld t1, 0(a0)
    EXPECT s2, 0, 22
    EXPECT t1, 0x1111, 23
    li t0, 3 << 11                    # MPP = U: S page not accessible
    csrc mstatus, t0
    TRY
    ld t1, 0(a0)
    EXPECT s2, 13, 24
    li t0, 1 << 17
    csrc mstatus, t0
    # Sv48: the Sv39 root becomes the level-2 table under pt_root48[0]
    la t0, pt_root48
    srli t0, t0, 12
    li t1, 9 << 60
    or t0, t0, t1
    csrw satp, t0
    la s5, back48
    GOTO 1, smode48
smode48:
    li a0, 0x40000000
    TRY
    ld t1, 0(a0)
    EXPECT s2, 0, 25
    EXPECT t1, 0x1111, 26
    li a6, 0x4000000000               # canonical in Sv48 but unmapped
    TRY
    ld t1, 0(a6)
    EXPECT s2, 13, 27
    ecall
back48:
    PASS
""" + MMU_DATA)


def test_pmp_tor_napot_na4_lock(tmp_path):
    check(tmp_path, r"""
    csrw pmpcfg0, zero
    la t0, word_x
    srli t0, t0, 2
    csrw pmpaddr0, t0                 # entry 0: NA4 on word_x, R, locked
    la t0, page_p
    srli t0, t0, 2
    csrw pmpaddr1, t0                 # entry 1: OFF (TOR base)
    li t1, 4096 >> 2
    add t0, t0, t1
    csrw pmpaddr2, t0                 # entry 2: TOR over page_p, no permissions
    la t0, page_q
    srli t0, t0, 2
    ori t0, t0, 0x1ff
    csrw pmpaddr3, t0                 # entry 3: NAPOT 4 KiB over page_q, R only
    li t0, -1
    csrw pmpaddr4, t0                 # entry 4: everything, RWX
    li t0, 0x1f19080091
    csrw pmpcfg0, t0
    csrr t1, pmpcfg0
    bne t0, t1, bad
    la a0, word_x
    TRY
    lw t1, 0(a0)                      # locked entries bind M-mode too
    EXPECT s2, 0, 2
    TRY
    sw t1, 0(a0)
    EXPECT s2, 7, 3
    csrw pmpaddr0, zero               # locked: ignored
    csrr t1, pmpaddr0
    beqz t1, bad
    la a1, page_p
    TRY
    ld t1, 0(a1)                      # M-mode ignores unlocked entries
    EXPECT s2, 0, 4
    la s5, back
    GOTO 1, smode
smode:
    TRY
    ld t1, 0(a1)
    EXPECT s2, 5, 5
    la t4, page_p
    bne s3, t4, bad
    la a2, page_q
    TRY
    ld t1, 0(a2)
    EXPECT s2, 0, 7
    TRY
    sd t1, 0(a2)
    EXPECT s2, 7, 8
    la a3, other
    TRY
    sd t1, 0(a3)
    EXPECT s2, 0, 9
    ecall
back:
    EXPECT s2, 9, 10
    PASS
bad:
    FAIL 30
.data
.align 12
word_x: .word 5, 6
.align 12
page_p: .dword 1
.align 12
page_q: .dword 2
.align 12
other: .dword 3
.align 12
""")


def test_pmp_entry_smaller_than_a_page_checks_every_fetch(tmp_path):
    check(tmp_path, r"""
    la t0, func
    addi t0, t0, 4
    srli t0, t0, 2
    csrw pmpaddr0, t0                 # entry 0: NA4 over func's second instruction, no permissions
    li t0, -1
    csrw pmpaddr1, t0                 # entry 1: everything, RWX
    li t0, 0x1f10
    csrw pmpcfg0, t0
    la s5, back
    GOTO 1, smode
smode:
    li a0, 0
    TRY
    jal ra, func                      # first instruction runs, the second faults (fetch access fault)
    EXPECT s2, 1, 2
    EXPECT a0, 1, 3
    ecall
back:
    PASS
.align 4
func:
    addi a0, a0, 1
    addi a0, a0, 1
    ret
""")
