/* RV64I control transfer: all six branches (signed/unsigned edges), JAL/JALR link and target rules. */
#include "test.h"
TEST_BEGIN
  .option norvc
  TEST_BR_TAKEN(1, beq, 5, 5)
  TEST_BR_NOT_TAKEN(2, beq, 5, 6)
  TEST_BR_TAKEN(3, bne, 0, -1)
  TEST_BR_NOT_TAKEN(4, bne, -1, -1)
  TEST_BR_TAKEN(5, blt, -1, 0)
  TEST_BR_NOT_TAKEN(6, blt, 0, -1)
  TEST_BR_NOT_TAKEN(7, blt, 3, 3)
  TEST_BR_TAKEN(8, bge, 3, 3)
  TEST_BR_TAKEN(9, bge, 0, 0x8000000000000000)
  TEST_BR_NOT_TAKEN(10, bge, 0x8000000000000000, 0x7fffffffffffffff)
  TEST_BR_TAKEN(11, bltu, 0, -1)
  TEST_BR_NOT_TAKEN(12, bltu, -1, 0)
  TEST_BR_NOT_TAKEN(13, bltu, 7, 7)
  TEST_BR_TAKEN(14, bgeu, -1, 0x7fffffffffffffff)
  TEST_BR_TAKEN(15, bgeu, 9, 9)
  TEST_BR_NOT_TAKEN(16, bgeu, 0, 1)
  /* backward branch loop: count to 10 */
  TEST_CASE(17, a0, 10, li a0, 0; li a1, 10; 3: addi a0, a0, 1; blt a0, a1, 3b)
  /* jal writes pc+4 */
  li TESTNUM, 18
  jal a0, 4f
5:j fail
4:la a1, 5b
  CHECK_REG(a0, a1)
  /* jalr: target = (rs1 + imm) & ~1, link = pc + 4, rd == rs1 uses the old rs1 */
  li TESTNUM, 19
  la a0, 6f
  addi a0, a0, -3
  jalr a1, 4(a0)       /* (6f - 3 + 4) & ~1 = 6f */
7:j fail
  .align 2
6:la a2, 7b
  CHECK_REG(a1, a2)
  li TESTNUM, 20
  la a0, 8f
  jalr a0, 0(a0)
9:j fail
8:la a2, 9b
  CHECK_REG(a0, a2)
  /* jal x0 / jalr x0 do not write */
  TEST_CASE(21, x0, 0, jal x0, 10f; j fail; 10:)
  li TESTNUM, 22
  la a0, 11f
  jalr x0, -4(a0)
  j fail
  j 12f
11:j fail
12:
  /* call / ret through ra */
  li TESTNUM, 23
  li a0, 41
  call inc
  CHECK(a0, 42)
  j 13f
inc:
  addi a0, a0, 1
  ret
13:
TEST_END
