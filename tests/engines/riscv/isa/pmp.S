/* PMP: NAPOT and TOR regions, R/W/X checks for S and U (access faults with mtval), unlocked
 * entries do not restrict M, locked entries do and ignore later writes, lowest entry wins. */
#include "test.h"

#define PMP_R 0x01
#define PMP_W 0x02
#define PMP_X 0x04
#define PMP_TOR 0x08
#define PMP_NAPOT 0x18
#define PMP_L 0x80
#define NAPOT_4K(reg) srli reg, reg, 2; ori reg, reg, 0x1ff;

TEST_BEGIN
  csrw mie, zero
  SET_MTRAP(mtrap_skip)
  /* entry 0: pmp_ro NAPOT R; entry 1/2: TOR [pmp_none, +4K) no access; entry 7: everything RWX */
  la a0, pmp_ro
  NAPOT_4K(a0)
  csrw pmpaddr0, a0
  la a0, pmp_none
  srli a0, a0, 2
  csrw pmpaddr1, a0
  la a0, pmp_none + 4096
  srli a0, a0, 2
  csrw pmpaddr2, a0
  li a0, -1
  csrw pmpaddr7, a0
  li a0, (PMP_NAPOT | PMP_R) | ((PMP_TOR) << 16) | ((PMP_NAPOT | PMP_R | PMP_W | PMP_X) << 56)
  csrw pmpcfg0, a0
  sfence.vma
  li TESTNUM, 1
  csrr a1, pmpcfg0
  CHECK_REG(a0, a1)
  /* S: read-only region */
  li TESTNUM, 2
  CLEAR_TRAP_RECORD
  RUN_S(1f)
  la a0, pmp_ro
  ld s2, 0(a0)
  li a1, 9
  sd a1, 8(a0)
  ecall
1:CHECK(s2, 0xabcd)
  LOAD_TRAP(a0, trap_count)
  CHECK(a0, 1)
  LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 7)
  LOAD_TRAP(a0, trap_tval)
  la a1, pmp_ro + 8
  CHECK_REG(a0, a1)
  /* S: executing in a region without X */
  li TESTNUM, 3
  CLEAR_TRAP_RECORD
  RUN_S(1f)
  la a0, pmp_ro
  jalr ra, 0(a0)
  ecall
1:LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 1)
  LOAD_TRAP(a0, trap_tval)
  la a1, pmp_ro
  CHECK_REG(a0, a1)
  /* U: TOR region without permissions (load, store), last byte too */
  li TESTNUM, 4
  CLEAR_TRAP_RECORD
  RUN_U(1f)
  la a0, pmp_none
  ld s2, 0(a0)
  ecall
1:LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 5)
  LOAD_TRAP(a0, trap_tval)
  la a1, pmp_none
  CHECK_REG(a0, a1)
  li TESTNUM, 5
  CLEAR_TRAP_RECORD
  RUN_U(1f)
  la a0, pmp_none + 4095
  sb a0, 0(a0)
  ecall
1:LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 7)
  li TESTNUM, 6                          /* just past the TOR top: allowed by entry 7 */
  CLEAR_TRAP_RECORD
  RUN_U(1f)
  la a0, pmp_none + 4096
  ld s2, 0(a0)
  ecall
1:LOAD_TRAP(a0, trap_count)
  CHECK(a0, 0)
  CHECK(s2, 0x7777)
  /* M is not restricted by unlocked entries */
  li TESTNUM, 7
  CLEAR_TRAP_RECORD
  la a0, pmp_ro
  li a1, 0x55
  sd a1, 16(a0)
  la a0, pmp_none
  ld a1, 0(a0)
  LOAD_TRAP(a0, trap_count)
  CHECK(a0, 0)
  /* a locked entry (entry 3, read-only) applies to M as well and ignores writes */
  li TESTNUM, 8
  la a0, pmp_locked
  NAPOT_4K(a0)
  csrw pmpaddr3, a0
  li a1, ((PMP_NAPOT | PMP_R | PMP_L) << 24)
  csrs pmpcfg0, a1
  sfence.vma
  CLEAR_TRAP_RECORD
  la a2, pmp_locked
  ld s2, 0(a2)
  sd a2, 0(a2)
  LOAD_TRAP(a1, trap_cause)
  CHECK(a1, 7)
  CHECK(s2, 0x1234)
  li TESTNUM, 9
  li a1, 0
  csrw pmpaddr3, a1                      /* ignored: locked */
  csrr a1, pmpaddr3
  CHECK_REG(a0, a1)
  li a1, (0xff << 24)
  csrc pmpcfg0, a1                       /* ignored for the locked byte */
  csrr a1, pmpcfg0
  srli a1, a1, 24
  andi a1, a1, 0xff
  CHECK(a1, PMP_NAPOT | PMP_R | PMP_L)
  /* lowest-numbered match wins: entry 0 (R) over entry 7 (RWX) for S */
  li TESTNUM, 10
  CLEAR_TRAP_RECORD
  RUN_S(1f)
  la a0, pmp_ro
  sw a0, 0(a0)
  ecall
1:LOAD_TRAP(a0, trap_cause)
  CHECK(a0, 7)
  CLEAR_MTRAP
TEST_END

  .data
  .align 12
pmp_ro:     .dword 0xabcd
  .align 12
pmp_none:   .dword 0x6666
  .align 12
pmp_after:  .dword 0x7777
  .align 12
pmp_locked: .dword 0x1234
  .align 12
