/* Test macros for virtkit's bare-metal ISA tests (assembled with the C preprocessor).
 *
 * A test program is `TEST_BEGIN`, numbered cases, `TEST_END`.  gp holds the number of the
 * running case and t6 (x31) is the comparison scratch register: cases must not use either.
 * A mismatch exits through HTIF with the case number (1..254; 255 = unexpected trap).
 */
#ifndef VIRTKIT_ISA_TEST_H
#define VIRTKIT_ISA_TEST_H

#define TESTNUM gp

#define TEST_BEGIN   .text; .globl main; main:
#define TEST_END     pass: li a0, 0; j exit; \
                     fail: mv a0, TESTNUM; bnez a0, 1f; li a0, 254; 1: j exit;

/* Run `code`, then compare register `reg` with the 64-bit constant `expected`. */
#define TEST_CASE(n, reg, expected, code...) \
  li TESTNUM, n; code; li t6, expected; bne reg, t6, fail;

/* Compare two registers / a register with a constant inside a case already numbered. */
#define CHECK(reg, expected) li t6, expected; bne reg, t6, fail;
#define CHECK_REG(a, b) bne a, b, fail;

#define TEST_RR(n, inst, result, v1, v2) \
  TEST_CASE(n, a2, result, li a0, v1; li a1, v2; inst a2, a0, a1)
/* destination = source register (rd == rs1) */
#define TEST_RR_SAME(n, inst, result, v1, v2) \
  TEST_CASE(n, a0, result, li a0, v1; li a1, v2; inst a0, a0, a1)
#define TEST_RI(n, inst, result, v1, imm) \
  TEST_CASE(n, a2, result, li a0, v1; inst a2, a0, imm)
#define TEST_R(n, inst, result, v1) \
  TEST_CASE(n, a2, result, li a0, v1; inst a2, a0)
/* x0 as destination is discarded, x0 as source reads 0 */
#define TEST_RR_ZERODEST(n, inst, v1, v2) \
  TEST_CASE(n, x0, 0, li a0, v1; li a1, v2; inst x0, a0, a1)

/* Load `inst` from label+offset. */
#define TEST_LD(n, inst, result, offset, label) \
  TEST_CASE(n, a2, result, la a0, label; inst a2, offset(a0))
/* Store value with `st` at label+offset, read back with `ld`. */
#define TEST_ST(n, ld, st, result, value, offset, label) \
  TEST_CASE(n, a2, result, la a0, label; li a1, value; st a1, offset(a0); ld a2, offset(a0))

/* Branch taken / not taken: the case fails on the wrong path. */
#define TEST_BR_TAKEN(n, inst, v1, v2) \
  li TESTNUM, n; li a0, v1; li a1, v2; inst a0, a1, 2f; j fail; 2:
#define TEST_BR_NOT_TAKEN(n, inst, v1, v2) \
  li TESTNUM, n; li a0, v1; li a1, v2; inst a0, a1, fail;

/* ---- floating point: operands and results as raw bit patterns, fflags checked too ---- */
#define FLAG_NX 0x01
#define FLAG_UF 0x02
#define FLAG_OF 0x04
#define FLAG_DZ 0x08
#define FLAG_NV 0x10

#define LOAD_D(freg, bits) li t5, bits; fmv.d.x freg, t5;
#define LOAD_S(freg, bits) li t5, bits; fmv.w.x freg, t5;
/* a2 <- the 32 bits of an S result, zero-extended */
#define GET_S(reg, freg) fmv.x.w reg, freg; slli reg, reg, 32; srli reg, reg, 32;

#define CHECK_FLAGS(flags) csrr a3, fflags; li t6, flags; bne a3, t6, fail;

#define TEST_FP_D2(n, inst, flags, result, a, b) \
  li TESTNUM, n; LOAD_D(f0, a); LOAD_D(f1, b); csrwi fflags, 0; inst f2, f0, f1; \
  fmv.x.d a2, f2; CHECK_FLAGS(flags); CHECK(a2, result)
#define TEST_FP_D1(n, inst, flags, result, a) \
  li TESTNUM, n; LOAD_D(f0, a); csrwi fflags, 0; inst f2, f0; \
  fmv.x.d a2, f2; CHECK_FLAGS(flags); CHECK(a2, result)
#define TEST_FP_D3(n, inst, flags, result, a, b, c) \
  li TESTNUM, n; LOAD_D(f0, a); LOAD_D(f1, b); LOAD_D(f3, c); csrwi fflags, 0; inst f2, f0, f1, f3; \
  fmv.x.d a2, f2; CHECK_FLAGS(flags); CHECK(a2, result)
#define TEST_FP_S2(n, inst, flags, result, a, b) \
  li TESTNUM, n; LOAD_S(f0, a); LOAD_S(f1, b); csrwi fflags, 0; inst f2, f0, f1; \
  GET_S(a2, f2); CHECK_FLAGS(flags); CHECK(a2, result)
#define TEST_FP_S1(n, inst, flags, result, a) \
  li TESTNUM, n; LOAD_S(f0, a); csrwi fflags, 0; inst f2, f0; \
  GET_S(a2, f2); CHECK_FLAGS(flags); CHECK(a2, result)
#define TEST_FP_S3(n, inst, flags, result, a, b, c) \
  li TESTNUM, n; LOAD_S(f0, a); LOAD_S(f1, b); LOAD_S(f3, c); csrwi fflags, 0; inst f2, f0, f1, f3; \
  GET_S(a2, f2); CHECK_FLAGS(flags); CHECK(a2, result)
/* FP compare / classify / convert to integer: integer result in a2 */
#define TEST_FP_D2_INT(n, inst, flags, result, a, b) \
  li TESTNUM, n; LOAD_D(f0, a); LOAD_D(f1, b); csrwi fflags, 0; inst a2, f0, f1; \
  CHECK_FLAGS(flags); CHECK(a2, result)
#define TEST_FP_S2_INT(n, inst, flags, result, a, b) \
  li TESTNUM, n; LOAD_S(f0, a); LOAD_S(f1, b); csrwi fflags, 0; inst a2, f0, f1; \
  CHECK_FLAGS(flags); CHECK(a2, result)
#define TEST_FP_D_TOINT(n, inst, flags, result, a) \
  li TESTNUM, n; LOAD_D(f0, a); csrwi fflags, 0; inst; CHECK_FLAGS(flags); CHECK(a2, result)
#define TEST_FP_S_TOINT(n, inst, flags, result, a) \
  li TESTNUM, n; LOAD_S(f0, a); csrwi fflags, 0; inst; CHECK_FLAGS(flags); CHECK(a2, result)

/* ---- privilege helpers ---- */
#define MSTATUS_MPP_MASK (3 << 11)
#define MSTATUS_MPP_S (1 << 11)
#define MSTATUS_SPP (1 << 8)

/* Install a hook address (label) for M-mode traps; 0 uninstalls. */
#define SET_MTRAP(label) la t5, trap_hook; la t6, label; sd t6, 0(t5);
#define CLEAR_MTRAP      la t5, trap_hook; sd zero, 0(t5);
/* Reset the recorded trap state. */
#define CLEAR_TRAP_RECORD la t5, trap_cause; sd zero, 0(t5); sd zero, 8(t5); sd zero, 16(t5); \
                          sd zero, 24(t5); sd zero, 32(t5); sd zero, 40(t5); sd zero, 56(t5);
#define LOAD_TRAP(reg, sym) la reg, sym; ld reg, 0(reg);

/* Enter S or U mode at label (from M). */
#define GOTO_S(label) li t5, MSTATUS_MPP_MASK; csrc mstatus, t5; li t5, MSTATUS_MPP_S; csrs mstatus, t5; \
                      la t5, label; csrw mepc, t5; mret;
#define GOTO_U(label) li t5, MSTATUS_MPP_MASK; csrc mstatus, t5; la t5, label; csrw mepc, t5; mret;

/* Run the following code in U (or S) mode; an `ecall` there returns to M at `resume`
   (resume_cause then holds 8 or 9).  Other traps are recorded by mtrap_skip and skipped. */
#define RUN_MODE(resume, mpp) la t5, resume; la t6, trap_resume; sd t5, 0(t6); SET_MTRAP(mtrap_skip); \
                      li t5, MSTATUS_MPP_MASK; csrc mstatus, t5; li t5, mpp; csrs mstatus, t5; \
                      la t5, 97f; csrw mepc, t5; mret; 97:
#define RUN_U(resume) RUN_MODE(resume, 0)
#define RUN_S(resume) RUN_MODE(resume, MSTATUS_MPP_S)

#define CLINT_BASE 0x02000000
#define CLINT_MSIP (CLINT_BASE)
#define CLINT_MTIMECMP (CLINT_BASE + 0x4000)
#define CLINT_MTIME (CLINT_BASE + 0xbff8)

#endif
