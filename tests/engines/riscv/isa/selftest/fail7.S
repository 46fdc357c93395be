/* Harness self-test: prints a line, passes case 6, fails case 7 on purpose. */
#include "test.h"
TEST_BEGIN
  la a0, msg
  call htif_puts
  TEST_RI(6, addi, 2, 1, 1)
  TEST_RI(7, addi, 3, 1, 1)
TEST_END
  .section .rodata
msg: .asciz "selftest: case 7 must fail\n"
