/* F/D details: NaN-boxing of single values (fmv.w.x / flw box, an unboxed value reads as the
 * canonical NaN), fmv.x.w sign extension, fcvt.s.d / fcvt.d.s, FP loads/stores, sticky fflags,
 * mstatus.FS = Off makes FP instructions illegal, FS becomes Dirty (and SD set) on FP writes,
 * invalid dynamic and reserved static rounding modes are illegal, underflow detected after rounding. */
#include "test.h"
#define MSTATUS_FS (3 << 13)
TEST_BEGIN
  SET_MTRAP(mtrap_skip)
  /* fmv.w.x boxes: the upper 32 bits read back as ones */
  TEST_CASE(1, a0, 0xffffffff3f800000, li a1, 0x3f800000; fmv.w.x f0, a1; fmv.x.d a0, f0)
  /* flw boxes too */
  TEST_CASE(2, a0, 0xffffffffc0490fdb, la a1, fdata; flw f1, 0(a1); fmv.x.d a0, f1)
  /* fmv.x.w sign-extends bit 31 */
  TEST_CASE(3, a0, 0xffffffffc0490fdb, fmv.x.w a0, f1)
  TEST_CASE(4, a0, 0x000000003f800000, fmv.x.w a0, f0)
  /* an improperly boxed single reads as the canonical NaN */
  li TESTNUM, 5
  li a1, 0x000000003f800000
  fmv.d.x f2, a1
  li a1, 0x3f800000
  fmv.w.x f3, a1
  csrwi fflags, 0
  fadd.s f4, f2, f3
  fmv.x.w a0, f4
  CHECK(a0, 0x7fc00000)
  CHECK_FLAGS(0)
  TEST_CASE(6, a0, 0x7fc00000, fsgnj.s f4, f2, f2; fmv.x.w a0, f4)
  TEST_CASE(7, a0, 0x200, fclass.s a0, f2)           /* quiet NaN */
  /* fsw stores the low 32 bits, fsd the whole register */
  li TESTNUM, 8
  la a1, fbuf
  li a2, 0x1122334455667788
  fmv.d.x f5, a2
  fsd f5, 0(a1)
  ld a0, 0(a1)
  CHECK_REG(a0, a2)
  fsw f5, 8(a1)
  lwu a0, 8(a1)
  CHECK(a0, 0x55667788)
  fld f6, 0(a1)
  fmv.x.d a0, f6
  CHECK_REG(a0, a2)
  /* conversions between formats */
  TEST_CASE(9, a0, 0x3ff0000000000000, li a1, 0x3f800000; fmv.w.x f0, a1; fcvt.d.s f1, f0; fmv.x.d a0, f1)
  li TESTNUM, 10                                     /* 0.1 (double) -> single: inexact */
  li a1, 0x3fb999999999999a
  fmv.d.x f0, a1
  csrwi fflags, 0
  fcvt.s.d f1, f0
  fmv.x.w a0, f1
  CHECK(a0, 0x3dcccccd)
  CHECK_FLAGS(FLAG_NX)
  li TESTNUM, 11                                     /* 1e300 -> single: overflow to inf */
  li a1, 0x7e37e43c8800759c
  fmv.d.x f0, a1
  csrwi fflags, 0
  fcvt.s.d f1, f0
  fmv.x.w a0, f1
  CHECK(a0, 0x7f800000)
  CHECK_FLAGS(FLAG_OF | FLAG_NX)
  li TESTNUM, 12                                     /* signaling NaN -> canonical NaN, NV */
  li a1, 0x7ff0000000000001
  fmv.d.x f0, a1
  csrwi fflags, 0
  fcvt.s.d f1, f0
  fmv.x.w a0, f1
  CHECK(a0, 0x7fc00000)
  CHECK_FLAGS(FLAG_NV)
  li TESTNUM, 13
  li a1, 0x7f800001
  fmv.w.x f0, a1
  csrwi fflags, 0
  fcvt.d.s f1, f0
  fmv.x.d a0, f1
  CHECK(a0, 0x7ff8000000000000)
  CHECK_FLAGS(FLAG_NV)
  /* fflags are sticky: NX then DZ accumulate; fcsr shows them */
  li TESTNUM, 14
  csrwi fflags, 0
  li a1, 0x3ff0000000000000
  fmv.d.x f0, a1
  li a1, 0x4008000000000000
  fmv.d.x f1, a1
  fdiv.d f2, f0, f1
  fmv.d.x f3, zero
  fdiv.d f2, f0, f3
  fadd.d f2, f0, f0                                   /* exact: adds nothing */
  CHECK_FLAGS(FLAG_NX | FLAG_DZ)
  csrr a0, fcsr
  CHECK(a0, FLAG_NX | FLAG_DZ)
  /* FS dirty after an FP write: FS = 3 and SD (bit 63) set */
  li TESTNUM, 15
  li a1, MSTATUS_FS
  csrc mstatus, a1
  li a1, (1 << 13)
  csrs mstatus, a1
  fmv.d.x f0, zero
  csrr a0, mstatus
  srli a1, a0, 13
  andi a1, a1, 3
  CHECK(a1, 3)
  bgez a0, fail
  /* FS = Off: FP instructions and fcsr access are illegal */
  li TESTNUM, 16
  li a1, MSTATUS_FS
  csrc mstatus, a1
  CLEAR_TRAP_RECORD
  fadd.d f0, f1, f2
  csrr a0, fcsr
  fld f0, 0(sp)
  fmv.x.d a0, f0
  LOAD_TRAP(a0, trap_count)
  CHECK(a0, 4)
  LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 2)
  li a1, (1 << 13)
  csrs mstatus, a1
  /* dynamic rounding with an invalid frm (5, 6, 7) is illegal */
  li TESTNUM, 17
  CLEAR_TRAP_RECORD
  csrwi frm, 5
  fadd.d f0, f1, f2, dyn
  csrwi frm, 7
  fadd.d f0, f1, f2, dyn
  csrwi frm, 0
  LOAD_TRAP(a0, trap_count)
  CHECK(a0, 2)
  LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 2)
  /* ...but instructions that do not round ignore frm */
  li TESTNUM, 18
  CLEAR_TRAP_RECORD
  csrwi frm, 6
  fsgnj.d f0, f1, f2
  fmv.x.d a0, f0
  csrwi frm, 0
  LOAD_TRAP(a0, trap_count)
  CHECK(a0, 0)
  /* reserved static rounding mode (rm = 5 or 6) is illegal: fadd.d f0, f1, f2 with rm = 5 / 6 */
  li TESTNUM, 19
  CLEAR_TRAP_RECORD
  .word 0x02208053 | (5 << 12)
  .word 0x02208053 | (6 << 12)
  LOAD_TRAP(a0, trap_count)
  CHECK(a0, 2)
  LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 2)
  /* tininess is detected after rounding: max-subnormal x (1 + ulp) rounds up to the smallest
     normal, NX but no UF (in RNE/RUP/RMM); truncated it stays subnormal, UF | NX */
  TEST_FP_D2(20, fmul.d, FLAG_NX, 0x0010000000000000, 0x3ff0000000000001, 0x000fffffffffffff)
  li TESTNUM, 21
  LOAD_D(f0, 0x3ff0000000000001)
  LOAD_D(f1, 0x000fffffffffffff)
  csrwi fflags, 0
  fmul.d f2, f0, f1, rtz
  fmv.x.d a2, f2
  CHECK_FLAGS(FLAG_UF | FLAG_NX)
  CHECK(a2, 0x000fffffffffffff)
  TEST_FP_S2(22, fmul.s, FLAG_NX, 0x00800000, 0x3f800001, 0x007fffff)
  /* half of the smallest subnormal: ties to even gives +0 with UF | NX; 0.75 x 3 ulps -> 2 ulps */
  TEST_FP_D2(23, fmul.d, FLAG_UF | FLAG_NX, 0x0, 0x3fe0000000000000, 0x0000000000000001)
  TEST_FP_D2(24, fmul.d, FLAG_UF | FLAG_NX, 0x2, 0x3fe8000000000000, 0x0000000000000003)
  CLEAR_MTRAP
TEST_END
  .data
  .align 3
fdata: .word 0xc0490fdb, 0
fbuf:  .fill 32, 1, 0
