/* Zicsr: CSRRW/S/C and the immediate forms (old value returned, bits set/cleared), the x0 rules
 * (rs1 = x0 / uimm = 0 never writes, so read-only CSRs can be read with csrrs/csrrc), writes to
 * read-only CSRs and M-mode CSRs from S mode are illegal instructions, misa and fcsr aliasing. */
#include "test.h"
TEST_BEGIN
  TEST_CASE(1, a0, 0x1234, li a1, 0x1234; csrw mscratch, a1; csrr a0, mscratch)
  TEST_CASE(2, a0, 0x1234, li a1, -1; csrrw a0, mscratch, a1)
  TEST_CASE(3, a0, -1, csrr a0, mscratch)
  TEST_CASE(4, a0, 0xff00, li a1, 0xff00; csrw mscratch, a1; li a1, 0x0ff0; csrrs a0, mscratch, a1)
  TEST_CASE(5, a0, 0xfff0, csrr a0, mscratch)
  TEST_CASE(6, a0, 0xfff0, li a1, 0xf0f0; csrrc a0, mscratch, a1)
  TEST_CASE(7, a0, 0x0f00, csrr a0, mscratch)
  TEST_CASE(8, a0, 0x0f00, csrrwi a0, mscratch, 31)
  TEST_CASE(9, a0, 31, csrrsi a0, mscratch, 0)
  TEST_CASE(10, a0, 0x1f, csrrci a0, mscratch, 0x3)
  TEST_CASE(11, a0, 0x1c, csrr a0, mscratch)
  TEST_CASE(12, a0, 0x1f, csrrsi a0, mscratch, 0x3; csrr a0, mscratch)
  /* 64-bit values round-trip */
  TEST_CASE(13, a0, 0x8000000000000001, li a1, 0x8000000000000001; csrw mscratch, a1; csrr a0, mscratch)
  /* rd = x0 still writes */
  TEST_CASE(14, a0, 77, li a1, 77; csrrw x0, mscratch, a1; csrr a0, mscratch)
  /* reading read-only CSRs with rs1 = x0 / uimm = 0 is legal */
  li TESTNUM, 15
  CLEAR_TRAP_RECORD
  SET_MTRAP(mtrap_skip)
  csrrs a0, mhartid, x0
  csrrc a0, mhartid, x0
  csrrsi a0, mhartid, 0
  csrrci a0, mvendorid, 0
  csrr a0, marchid
  csrr a0, mimpid
  LOAD_TRAP(a1, trap_count)
  CHECK(a1, 0)
  /* writing a read-only CSR is illegal, even with the same value or via a set with nonzero rs1 */
  li TESTNUM, 16
  CLEAR_TRAP_RECORD
  csrr a1, mhartid
1:csrw mhartid, a1
  LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 2)
  LOAD_TRAP(a0, trap_epc)
  la a2, 1b
  CHECK_REG(a0, a2)
  LOAD_TRAP(a0, trap_tval)            /* mtval = the instruction bits, or 0 (both allowed) */
  beqz a0, 2f
  lwu a2, 0(a2)
  CHECK_REG(a0, a2)
2:li TESTNUM, 17
  CLEAR_TRAP_RECORD
  li a1, 1
  csrrs a0, cycle, a1
  LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 2)
  li TESTNUM, 18
  CLEAR_TRAP_RECORD
  csrrsi a0, instret, 1
  LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 2)
  li TESTNUM, 19
  CLEAR_TRAP_RECORD
  csrrwi a0, time, 0
  LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 2)
  /* misa: MXL = 2 (64-bit) and I, M, A, F, D, C, S, U present */
  li TESTNUM, 20
  csrr a0, misa
  srli a1, a0, 62
  CHECK(a1, 2)
  li a2, (1 << ('I' - 'A')) | (1 << ('M' - 'A')) | (1 << ('A' - 'A')) | (1 << ('F' - 'A')) | (1 << ('D' - 'A')) | (1 << ('C' - 'A')) | (1 << ('S' - 'A')) | (1 << ('U' - 'A'))
  and a1, a0, a2
  CHECK_REG(a1, a2)
  /* fcsr = frm << 5 | fflags */
  TEST_CASE(21, a0, 0xff, li a1, 0xff; csrw fcsr, a1; csrr a0, fcsr)
  TEST_CASE(22, a0, 0x7, csrr a0, frm)
  TEST_CASE(23, a0, 0x1f, csrr a0, fflags)
  TEST_CASE(24, a0, 0x3f, csrwi frm, 1; csrr a0, fcsr)
  TEST_CASE(25, a0, 0x21, csrwi fflags, 1; csrr a0, fcsr)
  TEST_CASE(26, a0, 0x01, csrrwi a0, fflags, 0; csrr a0, fcsr; srli a0, a0, 5)
  TEST_CASE(27, a0, 0, csrwi fcsr, 0; csrr a0, fcsr)
  /* an M-mode CSR is illegal from S mode; an S-mode CSR works there */
  li TESTNUM, 28
  CLEAR_TRAP_RECORD
  RUN_S(3f)
  csrr a0, mscratch
  li a1, 0x55
  csrw sscratch, a1
  csrr a2, sscratch
  ecall
3:LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 2)
  LOAD_TRAP(a0, resume_cause)
  CHECK(a0, 9)
  CHECK(a2, 0x55)
  /* an S-mode CSR is illegal from U mode */
  li TESTNUM, 29
  CLEAR_TRAP_RECORD
  RUN_U(4f)
  csrr a0, sstatus
  ecall
4:LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 2)
  LOAD_TRAP(a0, resume_cause)
  CHECK(a0, 8)
  CLEAR_MTRAP
TEST_END
