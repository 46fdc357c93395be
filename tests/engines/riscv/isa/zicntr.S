/* Zicntr: cycle, time and instret advance; mcounteren/scounteren gate them from S and U mode
 * (a gated read is an illegal instruction).  The `time` CSR may be absent in hardware and
 * emulated by M-mode firmware (QEMU's spike machine does that): a machine where reading time
 * traps in M mode skips the time checks (s5 = 0). */
#include "test.h"

/* read counter `csr` in the current mode and return: a0 = 1 if it trapped */
#define TRY_READ(csr) CLEAR_TRAP_RECORD; csrr a1, csr; LOAD_TRAP(a0, trap_count);

TEST_BEGIN
  li TESTNUM, 1
  rdcycle a0
  li a2, 200
1:addi a2, a2, -1
  bnez a2, 1b
  rdcycle a1
  bgeu a0, a1, fail
  li TESTNUM, 2
  rdinstret a0
  li a2, 200
1:addi a2, a2, -1
  bnez a2, 1b
  rdinstret a1
  sub a1, a1, a0
  li a3, 400
  bltu a1, a3, fail            /* at least the 400 loop instructions were retired */
  li TESTNUM, 3                /* time moves on (bounded wait), if implemented */
  SET_MTRAP(mtrap_skip)
  TRY_READ(time)
  xori s5, a0, 1
  beqz s5, 2f
  rdtime a0
  li a2, 50000000
1:rdtime a1
  bne a0, a1, 5f
  addi a2, a2, -1
  bnez a2, 1b
  j fail
5:bltu a1, a0, fail
2:
  /* the M-mode names read the same counters */
  li TESTNUM, 4
  csrr a0, mcycle
  csrr a1, cycle
  bltu a1, a0, fail
  csrr a0, minstret
  csrr a1, instret
  bltu a1, a0, fail

  /* mcounteren = 0: S-mode reads of cycle/time/instret trap */
  li TESTNUM, 5
  csrw mcounteren, zero
  csrw scounteren, zero
  RUN_S(3f)
  TRY_READ(cycle); mv s2, a0
  TRY_READ(time); mv s3, a0
  TRY_READ(instret); mv s4, a0
  ecall
3:CHECK(s2, 1)
  CHECK(s3, 1)
  CHECK(s4, 1)
  LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 2)
  /* mcounteren = CY|TM|IR: S reads them, U still gated by scounteren = 0 */
  li TESTNUM, 6
  li a0, 7
  csrw mcounteren, a0
  RUN_S(3f)
  TRY_READ(cycle); mv s2, a0
  TRY_READ(time); mv s3, a0
  TRY_READ(instret); mv s4, a0
  ecall
3:CHECK(s2, 0)
  beqz s5, 4f
  CHECK(s3, 0)
4:CHECK(s4, 0)
  li TESTNUM, 7
  RUN_U(3f)
  TRY_READ(cycle); mv s2, a0
  TRY_READ(instret); mv s4, a0
  ecall
3:CHECK(s2, 1)
  CHECK(s4, 1)
  /* scounteren = TM only: U reads time, not cycle */
  li TESTNUM, 8
  li a0, 2
  csrw scounteren, a0
  RUN_U(3f)
  TRY_READ(cycle); mv s2, a0
  TRY_READ(time); mv s3, a0
  ecall
3:CHECK(s2, 1)
  beqz s5, 4f
  CHECK(s3, 0)
4:
  /* both enabled: U reads all three */
  li TESTNUM, 9
  li a0, 7
  csrw scounteren, a0
  RUN_U(3f)
  TRY_READ(cycle); mv s2, a0
  TRY_READ(time); mv s3, a0
  TRY_READ(instret); mv s4, a0
  ecall
3:CHECK(s2, 0)
  beqz s5, 4f
  CHECK(s3, 0)
4:CHECK(s4, 0)
  /* mcounteren clear again gates U even with scounteren set */
  li TESTNUM, 10
  csrw mcounteren, zero
  RUN_U(3f)
  TRY_READ(time); mv s3, a0
  ecall
3:CHECK(s3, 1)
  CLEAR_MTRAP
TEST_END
