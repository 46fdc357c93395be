/* Shared body of the Sv39 and Sv48 tests (vm_sv39.S, vm_sv48.S).
 *
 * Layout built at run time by M mode (all page faults are taken in M and recorded):
 *   VA 0x8000_0000 (1 GiB)   identity gigapage, S code and data, RWX A D
 *   VA 0xC000_0000           misaligned gigapage                  -> page fault
 *   VA 0x4000_0000 + n*4 KiB 4 KiB pages, see the PTE list below
 *   VA 0x4020_0000 (2 MiB)   megapage -> PA 0x8020_0000
 *   VA 0x4040_0000           misaligned megapage                  -> page fault
 * The includer defines L2_TABLE (the table covering VA 0..512 GiB), SATP_VALUE and TOP_SETUP.
 */
#include "test.h"

#define PTE_V 0x01
#define PTE_R 0x02
#define PTE_W 0x04
#define PTE_X 0x08
#define PTE_U 0x10
#define PTE_A 0x40
#define PTE_D 0x80
#define SSTATUS_SUM (1 << 18)
#define SSTATUS_MXR (1 << 19)
#define MSTATUS_MPRV (1 << 17)

#define VA(n) (0x40000000 + (n) * 0x1000)

/* table[index] = pointer/leaf to the page at label, or at a physical address */
#define SET_PTE(table, index, label, flags) la t0, label; srli t0, t0, 12; slli t0, t0, 10; ori t0, t0, flags; \
  la t1, table; li t2, (index) * 8; add t1, t1, t2; sd t0, 0(t1);
#define SET_PTE_PA(table, index, pa, flags) li t0, (((pa) >> 12) << 10) | (flags); \
  la t1, table; li t2, (index) * 8; add t1, t1, t2; sd t0, 0(t1);
#define GET_PTE(reg, table, index) la reg, table; ld reg, (index) * 8(reg);

/* run S code at the next instruction; ecall comes back to `resume` */
#define S_BEGIN(resume) CLEAR_TRAP_RECORD; RUN_S(resume)

TEST_BEGIN
  csrw mie, zero
  SET_MTRAP(mtrap_skip)
  /* physical page contents */
  la a0, page0
  li a1, 0x1111
  sd a1, 0(a0)
  la a0, page1
  li a1, 0x2222
  sd a1, 0(a0)
  la a0, page3
  li a1, 0x3333
  sd a1, 0(a0)
  la a0, page4
  li a1, 0x4444
  sd a1, 0(a0)
  li a0, 0x80201238
  li a1, 0x5555
  sd a1, 0(a0)
  /* page tables */
  SET_PTE_PA(L2_TABLE, 2, 0x80000000, PTE_V | PTE_R | PTE_W | PTE_X | PTE_A | PTE_D)
  SET_PTE_PA(L2_TABLE, 3, 0x80200000, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D)    /* misaligned 1 GiB */
  SET_PTE(L2_TABLE, 1, l1_table, PTE_V)
  SET_PTE(l1_table, 0, l0_table, PTE_V)
  SET_PTE_PA(l1_table, 1, 0x80200000, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D)     /* 2 MiB */
  SET_PTE_PA(l1_table, 2, 0x80201000, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D)     /* misaligned 2 MiB */
  SET_PTE(l0_table, 0, page0, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D)
  SET_PTE(l0_table, 1, page1, PTE_V | PTE_R | PTE_A)
  SET_PTE(l0_table, 2, code_page, PTE_V | PTE_X | PTE_A)
  SET_PTE(l0_table, 3, page3, PTE_V | PTE_R | PTE_W | PTE_U | PTE_A | PTE_D)
  SET_PTE(l0_table, 4, page4, PTE_V | PTE_R | PTE_W)                             /* A = 0, D = 0 */
  SET_PTE(l0_table, 5, page5, PTE_V | PTE_R | PTE_W | PTE_A)                     /* D = 0 */
  SET_PTE(l0_table, 6, page0, PTE_R | PTE_W | PTE_A | PTE_D)                     /* V = 0 */
  SET_PTE(l0_table, 7, page0, PTE_V | PTE_W | PTE_A | PTE_D)                     /* W without R */
  SET_PTE(l0_table, 8, page0, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D)             /* no X */
  SET_PTE(l0_table, 9, page0, PTE_V | PTE_R | PTE_A)                             /* remapped later */
  SET_PTE(l0_table, 10, user_code, PTE_V | PTE_R | PTE_X | PTE_U | PTE_A)
  TOP_SETUP
  li a0, SATP_VALUE
  la a1, ROOT_TABLE
  srli a1, a1, 12
  or a0, a0, a1
  csrw satp, a0
  csrr a1, satp
  li TESTNUM, 1
  CHECK_REG(a0, a1)
  sfence.vma

  /* 4 KiB page read and write */
  li TESTNUM, 2
  S_BEGIN(1f)
  li a0, VA(0)
  ld s2, 0(a0)
  li a1, 0x55
  sd a1, 8(a0)
  ecall
1:CHECK(s2, 0x1111)
  la a0, page0
  ld a0, 8(a0)
  CHECK(a0, 0x55)
  LOAD_TRAP(a0, trap_count)
  CHECK(a0, 0)
  /* read-only page: load works, store faults with stval = VA */
  li TESTNUM, 3
  S_BEGIN(1f)
  li a0, VA(1)
  ld s2, 0(a0)
  sd a0, 16(a0)
  ecall
1:CHECK(s2, 0x2222)
  LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 15)
  LOAD_TRAP(a0, trap_tval)
  CHECK(a0, VA(1) + 16)
  /* execute-only page: runs, but loads fault unless MXR */
  li TESTNUM, 4
  S_BEGIN(1f)
  li s2, 0
  li a0, VA(2)
  jalr ra, 0(a0)
  ecall
1:CHECK(s2, 0x77)
  LOAD_TRAP(a0, trap_count)
  CHECK(a0, 0)
  li TESTNUM, 5
  S_BEGIN(1f)
  li a0, VA(2)
  lw s2, 0(a0)
  ecall
1:LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 13)
  LOAD_TRAP(a0, trap_tval)
  CHECK(a0, VA(2))
  li TESTNUM, 6
  S_BEGIN(1f)
  li a1, SSTATUS_MXR
  csrs sstatus, a1
  li a0, VA(2)
  lw s2, 0(a0)
  csrc sstatus, a1
  ecall
1:LOAD_TRAP(a0, trap_count)
  CHECK(a0, 0)
  la a0, code_page
  lw a0, 0(a0)
  CHECK_REG(a0, s2)
  /* fetch from a page without X: instruction page fault, tval = target */
  li TESTNUM, 7
  S_BEGIN(1f)
  li a0, VA(8)
  jalr ra, 0(a0)
  ecall
1:LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 12)
  LOAD_TRAP(a0, trap_tval)
  CHECK(a0, VA(8))
  /* U page from S: faults without SUM, works with SUM; never executable from S */
  li TESTNUM, 8
  S_BEGIN(1f)
  li a0, VA(3)
  ld s2, 0(a0)
  ecall
1:LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 13)
  li TESTNUM, 9
  S_BEGIN(1f)
  li a1, SSTATUS_SUM
  csrs sstatus, a1
  li a0, VA(3)
  ld s2, 0(a0)
  csrc sstatus, a1
  ecall
1:CHECK(s2, 0x3333)
  LOAD_TRAP(a0, trap_count)
  CHECK(a0, 0)
  li TESTNUM, 10
  S_BEGIN(1f)
  li a1, SSTATUS_SUM
  csrs sstatus, a1
  li a0, VA(10)
  jalr ra, 0(a0)
  csrc sstatus, a1
  ecall
1:LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 12)
  /* U mode: runs on its U page, reads a U page, faults on an S page */
  li TESTNUM, 11
  CLEAR_TRAP_RECORD
  SET_MTRAP(u_fault_hook)
  la t5, 1f
  la t6, trap_resume
  sd t5, 0(t6)
  li t5, MSTATUS_MPP_MASK
  csrc mstatus, t5
  li t5, VA(10)
  csrw mepc, t5
  li a1, VA(3)
  li a4, VA(0)
  li s2, 0
  li s3, 0
  mret
1:SET_MTRAP(mtrap_skip)
  CHECK(s2, 0x3333)
  LOAD_TRAP(a0, trap_count)
  CHECK(a0, 1)
  LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 13)
  LOAD_TRAP(a0, trap_tval)
  CHECK(a0, VA(0))
  /* A = 0: either a page fault or the hardware sets A (the spec allows both) */
  li TESTNUM, 12
  S_BEGIN(1f)
  li a0, VA(4)
  ld s2, 0(a0)
  ecall
1:LOAD_TRAP(a0, trap_count)
  beqz a0, 2f
  LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 13)
  j 3f
2:CHECK(s2, 0x4444)
  GET_PTE(a0, l0_table, 4)
  andi a0, a0, PTE_A
  CHECK(a0, PTE_A)
3:/* D = 0 on a writable page: a store faults or sets D */
  li TESTNUM, 13
  S_BEGIN(1f)
  li a0, VA(5)
  li a1, 0x66
  sd a1, 0(a0)
  ecall
1:LOAD_TRAP(a0, trap_count)
  beqz a0, 2f
  LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 15)
  j 3f
2:GET_PTE(a0, l0_table, 5)
  andi a0, a0, PTE_D
  CHECK(a0, PTE_D)
  la a0, page5
  ld a0, 0(a0)
  CHECK(a0, 0x66)
3:/* invalid PTE and the reserved W-without-R encoding fault */
  li TESTNUM, 14
  S_BEGIN(1f)
  li a0, VA(6)
  ld s2, 0(a0)
  ecall
1:LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 13)
  LOAD_TRAP(a0, trap_tval)
  CHECK(a0, VA(6))
  li TESTNUM, 15
  S_BEGIN(1f)
  li a0, VA(7)
  ld s2, 0(a0)
  ecall
1:LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 13)
  li TESTNUM, 16                          /* store to it: store page fault */
  S_BEGIN(1f)
  li a0, VA(6)
  sd a0, 0(a0)
  ecall
1:LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 15)
  /* superpages */
  li TESTNUM, 17
  S_BEGIN(1f)
  li a0, 0x40201238
  ld s2, 0(a0)
  ecall
1:CHECK(s2, 0x5555)
  LOAD_TRAP(a0, trap_count)
  CHECK(a0, 0)
  li TESTNUM, 18                          /* misaligned megapage */
  S_BEGIN(1f)
  li a0, 0x40400000
  ld s2, 0(a0)
  ecall
1:LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 13)
  LOAD_TRAP(a0, trap_tval)
  CHECK(a0, 0x40400000)
  li TESTNUM, 19                          /* misaligned gigapage */
  S_BEGIN(1f)
  li a0, 0xc0000008
  ld s2, 0(a0)
  ecall
1:LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 13)
  LOAD_TRAP(a0, trap_tval)
  CHECK(a0, 0xc0000008)
  /* SFENCE.VMA makes a changed PTE visible */
  li TESTNUM, 20
  S_BEGIN(1f)
  li a0, VA(9)
  ld s2, 0(a0)
  ecall
1:CHECK(s2, 0x1111)
  SET_PTE(l0_table, 9, page1, PTE_V | PTE_R | PTE_A)
  li TESTNUM, 21
  S_BEGIN(1f)
  sfence.vma
  li a0, VA(9)
  ld s2, 0(a0)
  ecall
1:CHECK(s2, 0x2222)
  /* a non-canonical address faults */
  li TESTNUM, 22
  S_BEGIN(1f)
  li a0, NONCANONICAL_VA
  ld s2, 0(a0)
  ecall
1:LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 13)
  TOP_TESTS
  /* MPRV = 1, MPP = S: M-mode loads and stores are translated as S */
  li TESTNUM, 33
  CLEAR_TRAP_RECORD
  li a4, MSTATUS_MPRV
  li a0, MSTATUS_MPP_MASK
  csrc mstatus, a0
  li a0, MSTATUS_MPP_S
  csrs mstatus, a0
  li a1, VA(0)
  li a2, VA(6)
  csrs mstatus, a4
  ld s2, 0(a1)                            /* page0 through the page table */
  sd s2, 24(a1)
  ld s3, 0(a2)                            /* invalid PTE: load page fault, taken in M */
  csrc mstatus, a4                        /* (the trap returned with MPP = U: no loads before this) */
  CHECK(s2, 0x1111)
  la a0, page0
  ld a0, 24(a0)
  CHECK(a0, 0x1111)
  LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 13)
  LOAD_TRAP(a0, trap_tval)
  CHECK(a0, VA(6))
  /* an mret to a mode below M clears MPRV */
  li TESTNUM, 34
  csrs mstatus, a4
  RUN_S(1f)
  ecall
1:csrr a0, mstatus
  and a0, a0, a4
  CHECK(a0, 0)
  /* M mode is not translated */
  li TESTNUM, 40
  la a0, page0
  ld a0, 0(a0)
  CHECK(a0, 0x1111)
  /* writing an unsupported MODE leaves satp unchanged */
  li TESTNUM, 41
  csrr a0, satp
  li a1, (1 << 60)
  csrw satp, a1
  csrr a1, satp
  CHECK_REG(a0, a1)
  csrw satp, zero
  sfence.vma
  CLEAR_MTRAP
TEST_END

/* code reached through VA(2) (execute-only, S) and VA(10) (U) */
  .section .text
  .align 12
code_page:
  li s2, 0x77
  ret
  .align 12
  .option push
  .option norvc
user_code:                                /* U: a1 = U page, a4 = S page */
  ld s2, 0(a1)
  ld s3, 0(a4)
  ecall
  .option pop

/* M hook for the U test: mepc is a virtual address M cannot read, so the faulting instruction
   is known to be 4 bytes; an ecall returns to trap_resume */
  .align 2
u_fault_hook:
  csrr t0, mcause
  li t1, 8
  beq t0, t1, 1f
  la t1, trap_cause
  sd t0, 0(t1)
  csrr t0, mtval
  sd t0, 8(t1)
  li t0, 1
  sd t0, 24(t1)
  csrr t0, mepc
  addi t0, t0, 4
  csrw mepc, t0
  csrr t0, mscratch
  mret
1:la t1, trap_resume
  ld t0, 0(t1)
  csrw mepc, t0
  li t0, MSTATUS_MPP_MASK
  csrs mstatus, t0
  csrr t0, mscratch
  mret
  .align 12

  .data
  .align 12
page0: .fill 4096, 1, 0
page1: .fill 4096, 1, 0
page3: .fill 4096, 1, 0
page4: .fill 4096, 1, 0
page5: .fill 4096, 1, 0
  .bss
  .align 12
l1_table: .fill 4096, 1, 0
l0_table: .fill 4096, 1, 0
