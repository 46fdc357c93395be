/* Hostile guest: mtvec points outside RAM, then an illegal instruction: every trap faults on
 * fetching the handler, forever.  The emulator must keep control (budget ends the run). */
#include "test.h"
TEST_BEGIN
  li t0, 0x1000000000
  csrw mtvec, t0
  .word 0xfe000033
  j pass
TEST_END
