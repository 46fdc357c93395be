/* RV64I loads and stores of every width: sign/zero extension, negative offsets, partial overwrite. */
#include "test.h"
TEST_BEGIN
  TEST_LD(1, lb, 0xffffffffffffff80, 0, data)
  TEST_LD(2, lbu, 0x80, 0, data)
  TEST_LD(3, lb, 0x7f, 1, data)
  TEST_LD(4, lh, 0xffffffffffff8001, 2, data)
  TEST_LD(5, lhu, 0x8001, 2, data)
  TEST_LD(6, lw, 0xffffffff80000001, 4, data)
  TEST_LD(7, lwu, 0x80000001, 4, data)
  TEST_LD(8, ld, 0x8000000000000001, 8, data)
  TEST_LD(9, ld, 0x7fffffffffffffff, 16, data)
  TEST_LD(10, lw, 0x7f000000, -4, data_end)
  TEST_LD(11, lb, 0x7f, -1, data_end)
  TEST_LD(12, lhu, 0xffff, -12, data_end)
  TEST_ST(13, lb, sb, 0xffffffffffffffaa, 0xaa, 0, buf)
  TEST_ST(14, lbu, sb, 0x55, 0x1255, 1, buf)
  TEST_ST(15, lh, sh, 0xffffffffffffbeef, 0xdeadbeef, 2, buf)
  TEST_ST(16, lw, sw, 0xffffffff89abcdef, 0x0123456789abcdef, 4, buf)
  TEST_ST(17, lwu, sw, 0x89abcdef, 0x0123456789abcdef, 4, buf)
  TEST_ST(18, ld, sd, 0x0123456789abcdef, 0x0123456789abcdef, 8, buf)
  TEST_ST(19, ld, sd, 0xfedcba9876543210, 0xfedcba9876543210, -8, buf_end)
  /* a byte store changes exactly one byte */
  TEST_CASE(20, a2, 0x0123456789ab00ef, la a0, buf; li a1, 0x0123456789abcdef; sd a1, 16(a0); sb x0, 17(a0); ld a2, 16(a0))
  TEST_CASE(21, a2, 0x0123456700000000, la a0, buf; sw x0, 16(a0); sh x0, 18(a0); ld a2, 16(a0); li a3, 0x01234567; slli a3, a3, 32; sd a3, 16(a0); ld a2, 16(a0))
  /* little-endian layout */
  TEST_CASE(22, a2, 0x04, la a0, buf; li a1, 0x0807060504030201; sd a1, 24(a0); lbu a2, 27(a0))
  TEST_CASE(23, a2, 0x0605, la a0, buf; lhu a2, 28(a0))
  /* load into the base register */
  TEST_CASE(24, a0, 0x0807060504030201, la a0, buf; addi a0, a0, 24; ld a0, 0(a0))
  /* store then load the same address with a computed base */
  TEST_CASE(25, a2, 99, la a0, buf; addi a0, a0, 2047; li a1, 99; sb a1, -2047+40(a0); addi a0, a0, -2047; lbu a2, 40(a0))
TEST_END

  .data
  .align 3
data:
  .byte 0x80, 0x7f
  .half 0x8001
  .word 0x80000001
  .dword 0x8000000000000001
  .dword 0x7fffffffffffffff
  .half 0xffff, 0x1234
  .word 0x7fffffff
  .byte 0, 0, 0, 0x7f
data_end:
  .align 3
buf: .fill 64, 1, 0
buf_end:
