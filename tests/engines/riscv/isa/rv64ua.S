/* RV64A: every AMO in .W and .D form (old value returned, .W sign-extended, only 32 bits
 * written), signed/unsigned min/max edges, LR/SC success, failure without a reservation and
 * after a successful SC, and SC to another address. */
#include "test.h"
TEST_BEGIN
  li TESTNUM, 1; la a0, amo_buf; li a1, 0xffffffff; sd a1, 0(a0); li a1, 0x1; amoswap.w a2, a1, (a0); CHECK(a2, 0xffffffffffffffff); ld a3, 0(a0); CHECK(a3, 0x1)
  li TESTNUM, 2; la a0, amo_buf; li a1, 0x8000000000000000; sd a1, 0(a0); li a1, 0x7fffffffffffffff; amoswap.w a2, a1, (a0); CHECK(a2, 0x0); ld a3, 0(a0); CHECK(a3, 0x80000000ffffffff)
  li TESTNUM, 3; la a0, amo_buf; li a1, 0x1234567880000000; sd a1, 0(a0); li a1, 0xfffffff0; amoswap.w a2, a1, (a0); CHECK(a2, 0xffffffff80000000); ld a3, 0(a0); CHECK(a3, 0x12345678fffffff0)
  li TESTNUM, 4; la a0, amo_buf; li a1, 0xffffffff; sd a1, 0(a0); li a1, 0x1; amoadd.w a2, a1, (a0); CHECK(a2, 0xffffffffffffffff); ld a3, 0(a0); CHECK(a3, 0x0)
  li TESTNUM, 5; la a0, amo_buf; li a1, 0x8000000000000000; sd a1, 0(a0); li a1, 0x7fffffffffffffff; amoadd.w a2, a1, (a0); CHECK(a2, 0x0); ld a3, 0(a0); CHECK(a3, 0x80000000ffffffff)
  li TESTNUM, 6; la a0, amo_buf; li a1, 0x1234567880000000; sd a1, 0(a0); li a1, 0xfffffff0; amoadd.w a2, a1, (a0); CHECK(a2, 0xffffffff80000000); ld a3, 0(a0); CHECK(a3, 0x123456787ffffff0)
  li TESTNUM, 7; la a0, amo_buf; li a1, 0xffffffff; sd a1, 0(a0); li a1, 0x1; amoand.w a2, a1, (a0); CHECK(a2, 0xffffffffffffffff); ld a3, 0(a0); CHECK(a3, 0x1)
  li TESTNUM, 8; la a0, amo_buf; li a1, 0x8000000000000000; sd a1, 0(a0); li a1, 0x7fffffffffffffff; amoand.w a2, a1, (a0); CHECK(a2, 0x0); ld a3, 0(a0); CHECK(a3, 0x8000000000000000)
  li TESTNUM, 9; la a0, amo_buf; li a1, 0x1234567880000000; sd a1, 0(a0); li a1, 0xfffffff0; amoand.w a2, a1, (a0); CHECK(a2, 0xffffffff80000000); ld a3, 0(a0); CHECK(a3, 0x1234567880000000)
  li TESTNUM, 10; la a0, amo_buf; li a1, 0xffffffff; sd a1, 0(a0); li a1, 0x1; amoor.w a2, a1, (a0); CHECK(a2, 0xffffffffffffffff); ld a3, 0(a0); CHECK(a3, 0xffffffff)
  li TESTNUM, 11; la a0, amo_buf; li a1, 0x8000000000000000; sd a1, 0(a0); li a1, 0x7fffffffffffffff; amoor.w a2, a1, (a0); CHECK(a2, 0x0); ld a3, 0(a0); CHECK(a3, 0x80000000ffffffff)
  li TESTNUM, 12; la a0, amo_buf; li a1, 0x1234567880000000; sd a1, 0(a0); li a1, 0xfffffff0; amoor.w a2, a1, (a0); CHECK(a2, 0xffffffff80000000); ld a3, 0(a0); CHECK(a3, 0x12345678fffffff0)
  li TESTNUM, 13; la a0, amo_buf; li a1, 0xffffffff; sd a1, 0(a0); li a1, 0x1; amoxor.w a2, a1, (a0); CHECK(a2, 0xffffffffffffffff); ld a3, 0(a0); CHECK(a3, 0xfffffffe)
  li TESTNUM, 14; la a0, amo_buf; li a1, 0x8000000000000000; sd a1, 0(a0); li a1, 0x7fffffffffffffff; amoxor.w a2, a1, (a0); CHECK(a2, 0x0); ld a3, 0(a0); CHECK(a3, 0x80000000ffffffff)
  li TESTNUM, 15; la a0, amo_buf; li a1, 0x1234567880000000; sd a1, 0(a0); li a1, 0xfffffff0; amoxor.w a2, a1, (a0); CHECK(a2, 0xffffffff80000000); ld a3, 0(a0); CHECK(a3, 0x123456787ffffff0)
  li TESTNUM, 16; la a0, amo_buf; li a1, 0xffffffff; sd a1, 0(a0); li a1, 0x1; amomax.w a2, a1, (a0); CHECK(a2, 0xffffffffffffffff); ld a3, 0(a0); CHECK(a3, 0x1)
  li TESTNUM, 17; la a0, amo_buf; li a1, 0x8000000000000000; sd a1, 0(a0); li a1, 0x7fffffffffffffff; amomax.w a2, a1, (a0); CHECK(a2, 0x0); ld a3, 0(a0); CHECK(a3, 0x8000000000000000)
  li TESTNUM, 18; la a0, amo_buf; li a1, 0x1234567880000000; sd a1, 0(a0); li a1, 0xfffffff0; amomax.w a2, a1, (a0); CHECK(a2, 0xffffffff80000000); ld a3, 0(a0); CHECK(a3, 0x12345678fffffff0)
  li TESTNUM, 19; la a0, amo_buf; li a1, 0xffffffff; sd a1, 0(a0); li a1, 0x1; amomin.w a2, a1, (a0); CHECK(a2, 0xffffffffffffffff); ld a3, 0(a0); CHECK(a3, 0xffffffff)
  li TESTNUM, 20; la a0, amo_buf; li a1, 0x8000000000000000; sd a1, 0(a0); li a1, 0x7fffffffffffffff; amomin.w a2, a1, (a0); CHECK(a2, 0x0); ld a3, 0(a0); CHECK(a3, 0x80000000ffffffff)
  li TESTNUM, 21; la a0, amo_buf; li a1, 0x1234567880000000; sd a1, 0(a0); li a1, 0xfffffff0; amomin.w a2, a1, (a0); CHECK(a2, 0xffffffff80000000); ld a3, 0(a0); CHECK(a3, 0x1234567880000000)
  li TESTNUM, 22; la a0, amo_buf; li a1, 0xffffffff; sd a1, 0(a0); li a1, 0x1; amomaxu.w a2, a1, (a0); CHECK(a2, 0xffffffffffffffff); ld a3, 0(a0); CHECK(a3, 0xffffffff)
  li TESTNUM, 23; la a0, amo_buf; li a1, 0x8000000000000000; sd a1, 0(a0); li a1, 0x7fffffffffffffff; amomaxu.w a2, a1, (a0); CHECK(a2, 0x0); ld a3, 0(a0); CHECK(a3, 0x80000000ffffffff)
  li TESTNUM, 24; la a0, amo_buf; li a1, 0x1234567880000000; sd a1, 0(a0); li a1, 0xfffffff0; amomaxu.w a2, a1, (a0); CHECK(a2, 0xffffffff80000000); ld a3, 0(a0); CHECK(a3, 0x12345678fffffff0)
  li TESTNUM, 25; la a0, amo_buf; li a1, 0xffffffff; sd a1, 0(a0); li a1, 0x1; amominu.w a2, a1, (a0); CHECK(a2, 0xffffffffffffffff); ld a3, 0(a0); CHECK(a3, 0x1)
  li TESTNUM, 26; la a0, amo_buf; li a1, 0x8000000000000000; sd a1, 0(a0); li a1, 0x7fffffffffffffff; amominu.w a2, a1, (a0); CHECK(a2, 0x0); ld a3, 0(a0); CHECK(a3, 0x8000000000000000)
  li TESTNUM, 27; la a0, amo_buf; li a1, 0x1234567880000000; sd a1, 0(a0); li a1, 0xfffffff0; amominu.w a2, a1, (a0); CHECK(a2, 0xffffffff80000000); ld a3, 0(a0); CHECK(a3, 0x1234567880000000)
  li TESTNUM, 28; la a0, amo_buf; li a1, 0xffffffff; sd a1, 0(a0); li a1, 0x1; amoswap.d a2, a1, (a0); CHECK(a2, 0xffffffff); ld a3, 0(a0); CHECK(a3, 0x1)
  li TESTNUM, 29; la a0, amo_buf; li a1, 0x8000000000000000; sd a1, 0(a0); li a1, 0x7fffffffffffffff; amoswap.d a2, a1, (a0); CHECK(a2, 0x8000000000000000); ld a3, 0(a0); CHECK(a3, 0x7fffffffffffffff)
  li TESTNUM, 30; la a0, amo_buf; li a1, 0x1234567880000000; sd a1, 0(a0); li a1, 0xfffffff0; amoswap.d a2, a1, (a0); CHECK(a2, 0x1234567880000000); ld a3, 0(a0); CHECK(a3, 0xfffffff0)
  li TESTNUM, 31; la a0, amo_buf; li a1, 0xffffffff; sd a1, 0(a0); li a1, 0x1; amoadd.d a2, a1, (a0); CHECK(a2, 0xffffffff); ld a3, 0(a0); CHECK(a3, 0x100000000)
  li TESTNUM, 32; la a0, amo_buf; li a1, 0x8000000000000000; sd a1, 0(a0); li a1, 0x7fffffffffffffff; amoadd.d a2, a1, (a0); CHECK(a2, 0x8000000000000000); ld a3, 0(a0); CHECK(a3, 0xffffffffffffffff)
  li TESTNUM, 33; la a0, amo_buf; li a1, 0x1234567880000000; sd a1, 0(a0); li a1, 0xfffffff0; amoadd.d a2, a1, (a0); CHECK(a2, 0x1234567880000000); ld a3, 0(a0); CHECK(a3, 0x123456797ffffff0)
  li TESTNUM, 34; la a0, amo_buf; li a1, 0xffffffff; sd a1, 0(a0); li a1, 0x1; amoand.d a2, a1, (a0); CHECK(a2, 0xffffffff); ld a3, 0(a0); CHECK(a3, 0x1)
  li TESTNUM, 35; la a0, amo_buf; li a1, 0x8000000000000000; sd a1, 0(a0); li a1, 0x7fffffffffffffff; amoand.d a2, a1, (a0); CHECK(a2, 0x8000000000000000); ld a3, 0(a0); CHECK(a3, 0x0)
  li TESTNUM, 36; la a0, amo_buf; li a1, 0x1234567880000000; sd a1, 0(a0); li a1, 0xfffffff0; amoand.d a2, a1, (a0); CHECK(a2, 0x1234567880000000); ld a3, 0(a0); CHECK(a3, 0x80000000)
  li TESTNUM, 37; la a0, amo_buf; li a1, 0xffffffff; sd a1, 0(a0); li a1, 0x1; amoor.d a2, a1, (a0); CHECK(a2, 0xffffffff); ld a3, 0(a0); CHECK(a3, 0xffffffff)
  li TESTNUM, 38; la a0, amo_buf; li a1, 0x8000000000000000; sd a1, 0(a0); li a1, 0x7fffffffffffffff; amoor.d a2, a1, (a0); CHECK(a2, 0x8000000000000000); ld a3, 0(a0); CHECK(a3, 0xffffffffffffffff)
  li TESTNUM, 39; la a0, amo_buf; li a1, 0x1234567880000000; sd a1, 0(a0); li a1, 0xfffffff0; amoor.d a2, a1, (a0); CHECK(a2, 0x1234567880000000); ld a3, 0(a0); CHECK(a3, 0x12345678fffffff0)
  li TESTNUM, 40; la a0, amo_buf; li a1, 0xffffffff; sd a1, 0(a0); li a1, 0x1; amoxor.d a2, a1, (a0); CHECK(a2, 0xffffffff); ld a3, 0(a0); CHECK(a3, 0xfffffffe)
  li TESTNUM, 41; la a0, amo_buf; li a1, 0x8000000000000000; sd a1, 0(a0); li a1, 0x7fffffffffffffff; amoxor.d a2, a1, (a0); CHECK(a2, 0x8000000000000000); ld a3, 0(a0); CHECK(a3, 0xffffffffffffffff)
  li TESTNUM, 42; la a0, amo_buf; li a1, 0x1234567880000000; sd a1, 0(a0); li a1, 0xfffffff0; amoxor.d a2, a1, (a0); CHECK(a2, 0x1234567880000000); ld a3, 0(a0); CHECK(a3, 0x123456787ffffff0)
  li TESTNUM, 43; la a0, amo_buf; li a1, 0xffffffff; sd a1, 0(a0); li a1, 0x1; amomax.d a2, a1, (a0); CHECK(a2, 0xffffffff); ld a3, 0(a0); CHECK(a3, 0xffffffff)
  li TESTNUM, 44; la a0, amo_buf; li a1, 0x8000000000000000; sd a1, 0(a0); li a1, 0x7fffffffffffffff; amomax.d a2, a1, (a0); CHECK(a2, 0x8000000000000000); ld a3, 0(a0); CHECK(a3, 0x7fffffffffffffff)
  li TESTNUM, 45; la a0, amo_buf; li a1, 0x1234567880000000; sd a1, 0(a0); li a1, 0xfffffff0; amomax.d a2, a1, (a0); CHECK(a2, 0x1234567880000000); ld a3, 0(a0); CHECK(a3, 0x1234567880000000)
  li TESTNUM, 46; la a0, amo_buf; li a1, 0xffffffff; sd a1, 0(a0); li a1, 0x1; amomin.d a2, a1, (a0); CHECK(a2, 0xffffffff); ld a3, 0(a0); CHECK(a3, 0x1)
  li TESTNUM, 47; la a0, amo_buf; li a1, 0x8000000000000000; sd a1, 0(a0); li a1, 0x7fffffffffffffff; amomin.d a2, a1, (a0); CHECK(a2, 0x8000000000000000); ld a3, 0(a0); CHECK(a3, 0x8000000000000000)
  li TESTNUM, 48; la a0, amo_buf; li a1, 0x1234567880000000; sd a1, 0(a0); li a1, 0xfffffff0; amomin.d a2, a1, (a0); CHECK(a2, 0x1234567880000000); ld a3, 0(a0); CHECK(a3, 0xfffffff0)
  li TESTNUM, 49; la a0, amo_buf; li a1, 0xffffffff; sd a1, 0(a0); li a1, 0x1; amomaxu.d a2, a1, (a0); CHECK(a2, 0xffffffff); ld a3, 0(a0); CHECK(a3, 0xffffffff)
  li TESTNUM, 50; la a0, amo_buf; li a1, 0x8000000000000000; sd a1, 0(a0); li a1, 0x7fffffffffffffff; amomaxu.d a2, a1, (a0); CHECK(a2, 0x8000000000000000); ld a3, 0(a0); CHECK(a3, 0x8000000000000000)
  li TESTNUM, 51; la a0, amo_buf; li a1, 0x1234567880000000; sd a1, 0(a0); li a1, 0xfffffff0; amomaxu.d a2, a1, (a0); CHECK(a2, 0x1234567880000000); ld a3, 0(a0); CHECK(a3, 0x1234567880000000)
  li TESTNUM, 52; la a0, amo_buf; li a1, 0xffffffff; sd a1, 0(a0); li a1, 0x1; amominu.d a2, a1, (a0); CHECK(a2, 0xffffffff); ld a3, 0(a0); CHECK(a3, 0x1)
  li TESTNUM, 53; la a0, amo_buf; li a1, 0x8000000000000000; sd a1, 0(a0); li a1, 0x7fffffffffffffff; amominu.d a2, a1, (a0); CHECK(a2, 0x8000000000000000); ld a3, 0(a0); CHECK(a3, 0x7fffffffffffffff)
  li TESTNUM, 54; la a0, amo_buf; li a1, 0x1234567880000000; sd a1, 0(a0); li a1, 0xfffffff0; amominu.d a2, a1, (a0); CHECK(a2, 0x1234567880000000); ld a3, 0(a0); CHECK(a3, 0xfffffff0)
  /* .aq/.rl variants decode the same */
  li TESTNUM, 55; la a0, amo_buf; li a1, 5; sd a1, 0(a0); li a1, 3; amoadd.d.aqrl a2, a1, (a0); CHECK(a2, 5); ld a3, 0(a0); CHECK(a3, 8)
  /* LR/SC success: sc writes 0 to rd and stores */
  li TESTNUM, 56; la a0, amo_buf; li a1, 100; sd a1, 0(a0); lr.d a2, (a0); CHECK(a2, 100); addi a2, a2, 1; sc.d a3, a2, (a0); CHECK(a3, 0); ld a4, 0(a0); CHECK(a4, 101)
  /* a second SC without a new LR fails (nonzero rd), memory unchanged */
  li TESTNUM, 57; la a0, amo_buf; li a2, 555; sc.d a3, a2, (a0); beqz a3, fail; ld a4, 0(a0); CHECK(a4, 101)
  /* LR.W sign-extends, SC.W stores 32 bits */
  li TESTNUM, 58; la a0, amo_buf; li a1, 0x1111111180000000; sd a1, 0(a0); lr.w a2, (a0); CHECK(a2, 0xffffffff80000000); li a2, 7; sc.w a3, a2, (a0); CHECK(a3, 0); ld a4, 0(a0); CHECK(a4, 0x1111111100000007)
  /* SC to an address outside the reservation set fails */
  li TESTNUM, 59; la a0, amo_buf; la a5, amo_far; sd zero, 0(a5); lr.d a2, (a0); li a2, 9; sc.d a3, a2, (a5); beqz a3, fail; ld a4, 0(a5); CHECK(a4, 0)
  /* an LR/SC retry loop (atomic increment) */
  li TESTNUM, 60; la a0, amo_buf; sd zero, 0(a0); li a5, 50
1:lr.d a2, (a0); addi a2, a2, 1; sc.d a3, a2, (a0); bnez a3, 1b; addi a5, a5, -1; bnez a5, 1b; ld a4, 0(a0); CHECK(a4, 50)
  /* amo with rd = x0 still writes memory */
  li TESTNUM, 61; la a0, amo_buf; li a1, 1; sd a1, 0(a0); li a1, 2; amoadd.d x0, a1, (a0); ld a4, 0(a0); CHECK(a4, 3)
TEST_END
  .data
  .align 6
amo_buf: .dword 0, 0, 0, 0, 0, 0, 0, 0
  .fill 256, 1, 0
amo_far: .dword 0

