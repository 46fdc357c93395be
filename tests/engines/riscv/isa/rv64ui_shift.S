/* RV64I shifts: SLL/SRL/SRA, immediate forms, W forms (shift amount masking, sign extension). */
#include "test.h"
TEST_BEGIN
  TEST_RR(1, sll, 0x0000000000000002, 1, 1)
  TEST_RR(2, sll, 0x8000000000000000, 1, 63)
  TEST_RR(3, sll, 0x0000000000000002, 1, 65)            /* only the low 6 bits count */
  TEST_RR(4, sll, 0x1212121000000000, 0x21212121, 36)
  TEST_RR(5, srl, 0x7fffffffffffffff, -1, 1)
  TEST_RR(6, srl, 1, 0x8000000000000000, 63)
  TEST_RR(7, srl, 0x8000000000000000, 0x8000000000000000, 64)
  TEST_RR(8, sra, 0xffffffffffffffff, 0x8000000000000000, 63)
  TEST_RR(9, sra, 0xc000000000000000, 0x8000000000000000, 1)
  TEST_RR(10, sra, 0x3fffffffffffffff, 0x7fffffffffffffff, 1)
  TEST_RI(11, slli, 0x8000000000000000, 1, 63)
  TEST_RI(12, slli, 0x0000000100000000, 1, 32)
  TEST_RI(13, srli, 0x00000000ffffffff, -1, 32)
  TEST_RI(14, srai, 0xffffffffffffffff, 0x8000000000000000, 63)
  TEST_RI(15, srai, 0xffffffff80000000, 0x8000000000000000, 32)
  TEST_RI(16, srli, 0x8000000000000000, 0x8000000000000000, 0)
  TEST_RR(17, sllw, 0xffffffff80000000, 1, 31)
  TEST_RR(18, sllw, 0x0000000000000001, 1, 32)          /* 5-bit amount */
  TEST_RR(19, sllw, 0x0000000012345678, 0xffffffff12345678, 0)
  TEST_RR(20, srlw, 0x0000000000000001, 0x80000000, 31)
  TEST_RR(21, srlw, 0x000000007fffffff, 0xffffffffffffffff, 1)
  TEST_RR(22, srlw, 0xffffffff80000000, 0x1234567880000000, 32)   /* amount 0: sext of low word */
  TEST_RR(23, sraw, 0xffffffffffffffff, 0x80000000, 31)
  TEST_RR(24, sraw, 0xffffffffc0000000, 0x80000000, 1)
  TEST_RR(25, sraw, 0x0000000000000000, 0xffffffff7fffffff, 31)
  TEST_RI(26, slliw, 0xffffffff80000000, 1, 31)
  TEST_RI(27, slliw, 0x0000000000000000, 0xffffffff00000000, 1)
  TEST_RI(28, srliw, 0x0000000000000001, 0xffffffff80000000, 31)
  TEST_RI(29, srliw, 0xffffffff87654321, 0x1234567887654321, 0)
  TEST_RI(30, sraiw, 0xffffffffffffffff, 0x80000000, 31)
  TEST_RI(31, sraiw, 0x0000000000012345, 0xabcdef0012345678, 12)
  TEST_RR_SAME(32, sll, 0x100, 1, 8)
  TEST_RR(33, sra, 0xfedcba9876543210, 0xfedcba9876543210, 0xffffffffffffffc0)
TEST_END
