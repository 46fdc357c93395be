/* Privileged architecture, synchronous traps: ecall causes from M/S/U, ebreak, illegal
 * instructions with mtval, mret/sret state transitions (MPP/MPIE/MIE, SPP/SPIE/SIE), medeleg
 * delegation to S (and never from M), MPP/SPP recorded at the trap, TW/TVM/TSR. */
#include "test.h"

#define ILLEGAL_INSN 0xfe000033          /* OP with funct7 = 0x7f: not an instruction */
#define MSTATUS_SIE (1 << 1)
#define MSTATUS_MIE (1 << 3)
#define MSTATUS_SPIE (1 << 5)
#define MSTATUS_MPIE (1 << 7)
#define MSTATUS_TVM (1 << 20)
#define MSTATUS_TW (1 << 21)
#define MSTATUS_TSR (1 << 22)

TEST_BEGIN
  csrw mie, zero
  SET_MTRAP(mtrap_skip)
  /* ecall from M: cause 11, mepc = the ecall */
  li TESTNUM, 1
  CLEAR_TRAP_RECORD
1:ecall
  LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 11)
  LOAD_TRAP(a0, trap_epc)
  la a1, 1b
  CHECK_REG(a0, a1)
  /* ebreak: cause 3, mtval = its address or 0 */
  li TESTNUM, 2
  CLEAR_TRAP_RECORD
1:ebreak
  LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 3)
  LOAD_TRAP(a0, trap_tval)
  beqz a0, 2f
  la a1, 1b
  CHECK_REG(a0, a1)
2:
  /* illegal instruction: cause 2, mtval = instruction bits or 0 */
  li TESTNUM, 3
  CLEAR_TRAP_RECORD
1:.word ILLEGAL_INSN
  LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 2)
  LOAD_TRAP(a0, trap_tval)
  beqz a0, 2f
  CHECK(a0, ILLEGAL_INSN)
2:LOAD_TRAP(a0, trap_epc)
  la a1, 1b
  CHECK_REG(a0, a1)
  /* ecall from S and from U */
  li TESTNUM, 4
  CLEAR_TRAP_RECORD
  RUN_S(1f)
  ecall
1:LOAD_TRAP(a0, resume_cause)
  CHECK(a0, 9)
  li TESTNUM, 5
  CLEAR_TRAP_RECORD
  RUN_U(1f)
  ecall
1:LOAD_TRAP(a0, resume_cause)
  CHECK(a0, 8)
  /* a trap from S records MPP = S */
  li TESTNUM, 6
  CLEAR_TRAP_RECORD
  RUN_S(1f)
  .word ILLEGAL_INSN
  ecall
1:LOAD_TRAP(a0, trap_status)
  srli a1, a0, 11
  andi a1, a1, 3
  CHECK(a1, 1)
  /* a trap from U records MPP = U */
  li TESTNUM, 7
  CLEAR_TRAP_RECORD
  RUN_U(1f)
  .word ILLEGAL_INSN
  ecall
1:LOAD_TRAP(a0, trap_status)
  srli a1, a0, 11
  andi a1, a1, 3
  CHECK(a1, 0)
  /* mret: MIE <- MPIE, MPIE <- 1, MPP <- U, pc <- mepc (staying in M when MPP = M) */
  li TESTNUM, 8
  li a0, MSTATUS_MPP_MASK | MSTATUS_MPIE
  csrs mstatus, a0
  li a0, MSTATUS_MIE
  csrc mstatus, a0
  la a0, 1f
  csrw mepc, a0
  mret
  j fail
1:csrr a0, mstatus
  andi a1, a0, MSTATUS_MIE
  CHECK(a1, MSTATUS_MIE)
  andi a1, a0, MSTATUS_MPIE
  CHECK(a1, MSTATUS_MPIE)
  li a1, MSTATUS_MPP_MASK
  and a1, a0, a1
  CHECK(a1, 0)
  li a0, MSTATUS_MIE
  csrc mstatus, a0
  /* sret from M: goes to SPP (S), SIE <- SPIE, SPIE <- 1, SPP <- U */
  li TESTNUM, 9
  CLEAR_TRAP_RECORD
  la t5, trap_resume
  la t6, 2f
  sd t6, 0(t5)
  li a0, MSTATUS_SPP | MSTATUS_SPIE
  csrs mstatus, a0
  li a0, MSTATUS_SIE
  csrc mstatus, a0
  la a0, 1f
  csrw sepc, a0
  sret
  j fail
1:ecall                                   /* from S */
2:LOAD_TRAP(a0, resume_cause)
  CHECK(a0, 9)
  csrr a0, mstatus
  andi a1, a0, MSTATUS_SIE
  CHECK(a1, MSTATUS_SIE)
  andi a1, a0, MSTATUS_SPIE
  CHECK(a1, MSTATUS_SPIE)
  andi a1, a0, MSTATUS_SPP
  CHECK(a1, 0)
  li a0, MSTATUS_SIE
  csrc mstatus, a0

  /* medeleg: illegal instruction and breakpoint delegated to S */
  li TESTNUM, 10
  la a0, strap_skip
  csrw stvec, a0
  li a0, (1 << 2) | (1 << 3)
  csrw medeleg, a0
  csrr a1, medeleg
  CHECK_REG(a0, a1)
  CLEAR_TRAP_RECORD
  RUN_U(1f)
3:.word ILLEGAL_INSN
  ecall
1:LOAD_TRAP(a0, trap_in_s)
  CHECK(a0, 1)
  LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 2)
  LOAD_TRAP(a0, trap_epc)
  la a1, 3b
  CHECK_REG(a0, a1)
  LOAD_TRAP(a0, trap_status)               /* sstatus.SPP = U */
  andi a0, a0, MSTATUS_SPP
  CHECK(a0, 0)
  csrr a0, scause
  CHECK(a0, 2)
  csrr a0, stval
  beqz a0, 2f
  CHECK(a0, ILLEGAL_INSN)
2:LOAD_TRAP(a0, resume_cause)             /* the ecall was not delegated */
  CHECK(a0, 8)
  /* delegated ebreak from S: SPP = S */
  li TESTNUM, 11
  CLEAR_TRAP_RECORD
  RUN_S(1f)
  ebreak
  ecall
1:LOAD_TRAP(a0, trap_in_s)
  CHECK(a0, 1)
  LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 3)
  LOAD_TRAP(a0, trap_status)
  andi a0, a0, MSTATUS_SPP
  CHECK(a0, MSTATUS_SPP)
  /* traps in M are never delegated */
  li TESTNUM, 12
  CLEAR_TRAP_RECORD
  .word ILLEGAL_INSN
  LOAD_TRAP(a0, trap_in_s)
  CHECK(a0, 0)
  LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 2)
  /* delegating ecall from U: U's ecall lands in S (scause 8); the S handler records it and
     makes its own ecall, which is not delegated and returns to M */
  li TESTNUM, 13
  li a0, (1 << 8)
  csrw medeleg, a0
  la a0, s_forward
  csrw stvec, a0
  CLEAR_TRAP_RECORD
  RUN_U(1f)
  ecall
  j fail
1:LOAD_TRAP(a0, trap_in_s)
  CHECK(a0, 1)
  LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 8)
  LOAD_TRAP(a0, resume_cause)
  CHECK(a0, 9)
  csrw medeleg, zero
  /* TW: WFI in S traps as illegal when mstatus.TW = 1 (no interrupt is pending) */
  li TESTNUM, 14
  li a0, MSTATUS_TW
  csrs mstatus, a0
  CLEAR_TRAP_RECORD
  RUN_S(1f)
  wfi
  ecall
1:LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 2)
  li a0, MSTATUS_TW
  csrc mstatus, a0
  /* TVM: satp and sfence.vma trap in S */
  li TESTNUM, 15
  li a0, MSTATUS_TVM
  csrs mstatus, a0
  CLEAR_TRAP_RECORD
  RUN_S(1f)
  csrr a1, satp
  sfence.vma
  ecall
1:LOAD_TRAP(a0, trap_count)
  CHECK(a0, 2)
  LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 2)
  li a0, MSTATUS_TVM
  csrc mstatus, a0
  /* without TVM both work in S */
  li TESTNUM, 16
  CLEAR_TRAP_RECORD
  RUN_S(1f)
  csrr a1, satp
  sfence.vma
  ecall
1:LOAD_TRAP(a0, trap_count)
  CHECK(a0, 0)
  /* TSR: sret traps in S */
  li TESTNUM, 17
  li a0, MSTATUS_TSR
  csrs mstatus, a0
  CLEAR_TRAP_RECORD
  RUN_S(1f)
  sret
  ecall
1:LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 2)
  li a0, MSTATUS_TSR
  csrc mstatus, a0
  /* mret in S is always illegal; sret in U too */
  li TESTNUM, 18
  CLEAR_TRAP_RECORD
  RUN_S(1f)
  mret
  ecall
1:LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 2)
  li TESTNUM, 19
  CLEAR_TRAP_RECORD
  RUN_U(1f)
  sret
  ecall
1:LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 2)
  /* sfence.vma is illegal in U */
  li TESTNUM, 20
  CLEAR_TRAP_RECORD
  RUN_U(1f)
  sfence.vma
  ecall
1:LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 2)
  CLEAR_MTRAP
  j pass

  .align 2
s_forward:                                /* S-mode trap handler: record, then ecall to M */
  csrr t0, scause
  la t1, trap_cause
  sd t0, 0(t1)
  li t0, 1
  la t1, trap_in_s
  sd t0, 0(t1)
  ecall
  j fail
TEST_END
