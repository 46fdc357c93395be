/* Two harts (run with 2 harts): hart 0 wakes hart 1 with a CLINT software interrupt (IPI); both
 * then increment shared counters 2000 times each, with AMOADD and with an LR/SC loop, and hart 0
 * checks that no update was lost.  mhartid differs per hart. */
#include "test.h"
#define N 2000
TEST_BEGIN
  li TESTNUM, 1
  csrr a0, mhartid
  CHECK(a0, 0)
  la t0, smp_entry
  la t1, worker
  sd t1, 0(t0)
  fence rw, rw
  li t0, CLINT_MSIP + 4                   /* msip of hart 1 */
  li t1, 1
  sw t1, 0(t0)
  call work
  li TESTNUM, 2                           /* wait for hart 1 (bounded) */
  la a0, done
  li a5, 200000000
1:ld a1, 0(a0)
  bnez a1, 2f
  addi a5, a5, -1
  bnez a5, 1b
  j fail
2:fence rw, rw
  li TESTNUM, 3
  la a0, amo_counter
  ld a1, 0(a0)
  CHECK(a1, 2 * N)
  li TESTNUM, 4
  la a0, lrsc_counter
  ld a1, 0(a0)
  CHECK(a1, 2 * N)
  li TESTNUM, 5                           /* hart 1 saw mhartid = 1 */
  la a0, hart1_id
  ld a1, 0(a0)
  CHECK(a1, 1)
  j pass

work:                                     /* N x (amoadd + LR/SC increment) */
  li t0, N
  la t1, amo_counter
  la t2, lrsc_counter
  li t3, 1
1:amoadd.d zero, t3, (t1)
2:lr.d t4, (t2)
  addi t4, t4, 1
  sc.d t5, t4, (t2)
  bnez t5, 2b
  addi t0, t0, -1
  bnez t0, 1b
  ret

worker:                                   /* hart 1: a0 = hartid */
  la t0, hart1_id
  sd a0, 0(t0)
  call work
  fence rw, rw
  la t0, done
  li t1, 1
  amoswap.d zero, t1, (t0)
3:wfi
  j 3b
TEST_END
  .data
  .align 6
amo_counter: .dword 0
  .align 6
lrsc_counter: .dword 0
  .align 6
done: .dword 0
hart1_id: .dword 0
