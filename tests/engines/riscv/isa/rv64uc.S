/* RV64C: every RV64 compressed instruction, written with explicit c.* mnemonics, plus
 * hand-encoded .2byte forms (shift amounts >= 32, negative LUI/ADDIW, large ADDI4SPN/ADDI16SP). */
#include "test.h"
  .option rvc
TEST_BEGIN
  /* CI / CR integer forms */
  TEST_CASE(1, a0, 31, c.li a0, 31)
  TEST_CASE(2, a0, -32, c.li a0, -32)
  TEST_CASE(3, a0, 0x1f, c.li a0, 0; c.addi a0, 31)
  TEST_CASE(4, a0, -1, c.li a0, 0; .2byte 0x157d)                       /* c.addi a0, -1 */
  TEST_CASE(5, a0, 0xffffffff80000000, li a0, 0x7fffffff; c.addiw a0, 1)
  TEST_CASE(6, a0, 0xffffffffffffffe0, li a0, 0x100000000; .2byte 0x3501) /* c.addiw a0, -32 */
  TEST_CASE(7, a0, 0x0000000000012345, li a0, 0xffffffff00012345; c.addiw a0, 0)   /* sext.w */
  TEST_CASE(8, a1, 0x1f000, c.lui a1, 0x1f)
  TEST_CASE(9, a1, 0xfffffffffffff000, .2byte 0x75fd)                   /* c.lui a1, 0xfffff */
  TEST_CASE(10, a2, -32, .2byte 0x5601)                                  /* c.li a2, -32 */
  TEST_CASE(11, a0, 0x0000000000000001, li a0, 0x8000000000000000; c.srli a0, 63)
  TEST_CASE(12, a0, 0x0000000040000000, li a0, 0x8000000000000000; .2byte 0x9105)   /* c.srli a0, 33 */
  TEST_CASE(13, a0, 0xffffffffffffffff, li a0, 0x8000000000000000; .2byte 0x957d)   /* c.srai a0, 63 */
  TEST_CASE(14, a0, 0xffffff0000000000, li a0, -1; .2byte 0x1522) /* c.slli a0, 40 */
  TEST_CASE(15, a0, 0xc000000000000000, li a0, 0x8000000000000000; c.srai a0, 1)
  TEST_CASE(16, a0, 0x10, li a0, 1; c.slli a0, 4)
  TEST_CASE(17, a0, 0xffffffffffffffe0, li a0, -1; c.andi a0, -32)
  TEST_CASE(18, a0, 0x5, li a0, 0xff; c.andi a0, 5)
  TEST_CASE(19, a0, 0x3, li a0, 10; li a1, 7; c.sub a0, a1)
  TEST_CASE(20, a0, 0xf0f0, li a0, 0xff00; li a1, 0x0ff0; c.xor a0, a1)
  TEST_CASE(21, a0, 0xfff0, li a0, 0xff00; li a1, 0x0ff0; c.or a0, a1)
  TEST_CASE(22, a0, 0x0f00, li a0, 0xff00; li a1, 0x0ff0; c.and a0, a1)
  TEST_CASE(23, a0, 0xffffffff80000000, li a0, 0x7fffffff; li a1, -1; c.subw a0, a1)
  TEST_CASE(24, a0, 0xffffffff80000000, li a0, 0x7fffffff; li a1, 1; c.addw a0, a1)
  TEST_CASE(25, a2, 0x1234, li a1, 0x1234; li a2, 0; c.mv a2, a1)
  TEST_CASE(26, a2, 0x1235, li a1, 0x1234; li a2, 1; c.add a2, a1)
  TEST_CASE(27, s0, 7, li s0, 7; c.nop)
  /* stack-pointer forms: c.addi4spn, c.addi16sp, c.lwsp/ldsp/swsp/sdsp */
  li TESTNUM, 28
  mv s1, sp
  c.addi16sp sp, -64
  sub a0, s1, sp
  CHECK(a0, 64)
  c.addi4spn a1, sp, 16
  sub a0, a1, sp
  CHECK(a0, 16)
  li a2, 0xfedcba9876543210
  c.sdsp a2, 8(sp)
  c.ldsp a3, 8(sp)
  CHECK_REG(a2, a3)
  li TESTNUM, 29
  li a2, 0x80000001
  c.swsp a2, 4(sp)
  c.lwsp a3, 4(sp)
  CHECK(a3, 0xffffffff80000001)
  c.addi16sp sp, 64
  CHECK_REG(s1, sp)
  li TESTNUM, 30
  .2byte 0x7101                      /* c.addi16sp sp, -512 */
  sub a0, s1, sp
  CHECK(a0, 512)
  .2byte 0x1fe8                      /* c.addi4spn a0, sp, 1020 */
  sub a0, a0, sp
  CHECK(a0, 1020)
  mv sp, s1
  /* register-based loads and stores */
  li TESTNUM, 31
  la a0, cbuf
  li a1, 0x1122334455667788
  c.sd a1, 8(a0)
  c.ld a2, 8(a0)
  CHECK_REG(a1, a2)
  c.sw a1, 16(a0)
  c.lw a3, 16(a0)
  CHECK(a3, 0x55667788)
  li a1, 0xffffffff
  c.sw a1, 20(a0)
  c.lw a3, 20(a0)
  CHECK(a3, -1)
  /* FP loads and stores */
  li TESTNUM, 32
  la a0, cbuf
  li a1, 0x400921fb54442d18
  sd a1, 24(a0)
  c.fld fa0, 24(a0)
  c.fsd fa0, 32(a0)
  ld a2, 32(a0)
  CHECK_REG(a1, a2)
  li TESTNUM, 33
  addi sp, sp, -32
  c.fsdsp fa0, 16(sp)
  c.fldsp fa1, 16(sp)
  fmv.x.d a2, fa1
  CHECK_REG(a1, a2)
  addi sp, sp, 32
  /* control transfer */
  TEST_CASE(34, a0, 1, li a0, 0; c.j 1f; li a0, 2; 1: c.addi a0, 1)
  TEST_CASE(35, a0, 1, li a0, 0; c.beqz a0, 1f; li a0, 5; 1: c.addi a0, 1)
  TEST_CASE(36, a0, 6, li a0, 5; c.beqz a0, 1f; c.addi a0, 1; 1:)
  TEST_CASE(37, a0, 6, li a0, 5; c.bnez a0, 1f; li a0, 9; 1: c.addi a0, 1)
  TEST_CASE(38, a0, 1, li a0, 0; c.bnez a0, 1f; c.addi a0, 1; 1:)
  li TESTNUM, 39
  la a1, 2f
  c.jr a1
  j fail
2:li TESTNUM, 40
  la a1, 3f
  c.jalr a1
4:j fail
3:la a2, 4b
  CHECK_REG(ra, a2)                  /* link is pc + 2 */
  /* c.ebreak raises a breakpoint exception (cause 3) with mepc at the 2-byte instruction */
  li TESTNUM, 41
  CLEAR_TRAP_RECORD
  SET_MTRAP(mtrap_skip)
5:c.ebreak
  CLEAR_MTRAP
  LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 3)
  LOAD_TRAP(a0, trap_epc)
  la a1, 5b
  CHECK_REG(a0, a1)
  /* the all-zero halfword is an illegal instruction (cause 2) */
  li TESTNUM, 42
  CLEAR_TRAP_RECORD
  SET_MTRAP(mtrap_skip)
  .2byte 0x0000
  CLEAR_MTRAP
  LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 2)
  /* reserved compressed encodings are illegal: c.addi16sp 0, c.lwsp/c.ldsp x0, c.jr x0, c.lui 0 */
  li TESTNUM, 44
  CLEAR_TRAP_RECORD
  SET_MTRAP(mtrap_skip)
  .2byte 0x6101                      /* c.addi16sp sp, 0 */
  .2byte 0x4002                      /* c.lwsp x0, 0(sp) */
  .2byte 0x6002                      /* c.ldsp x0, 0(sp) */
  .2byte 0x8002                      /* c.jr x0 */
  .2byte 0x6581                      /* c.lui a1, 0 */
  CLEAR_MTRAP
  LOAD_TRAP(a0, trap_count)
  CHECK(a0, 5)
  LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 2)
  /* 32-bit instructions at 2-byte aligned addresses */
  li TESTNUM, 43
  c.nop
  li a0, 0x12345678
  addiw a0, a0, 1
  CHECK(a0, 0x12345679)
TEST_END
  .data
  .align 3
cbuf: .fill 64, 1, 0
