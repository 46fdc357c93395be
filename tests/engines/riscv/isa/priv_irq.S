/* Privileged architecture, interrupts: CLINT timer (mtimecmp) and software (msip) interrupts,
 * mip pending bits, priority (MSI before MTI), WFI wake-up, vectored mtvec, M interrupts taken
 * from U even with mstatus.MIE = 0, S-mode interrupts through mideleg. CLINT at 0x0200_0000. */
#include "test.h"

#define MIP_SSIP (1 << 1)
#define MIP_MSIP (1 << 3)
#define MIP_STIP (1 << 5)
#define MIP_MTIP (1 << 7)
#define MSTATUS_SIE (1 << 1)
#define MSTATUS_MIE (1 << 3)
#define IRQ(n) (0x8000000000000000 | (n))

/* wait (bounded) until trap_count becomes nonzero */
#define WAIT_TRAP li a5, 20000000; 81: LOAD_TRAP(a4, trap_count); bnez a4, 82f; addi a5, a5, -1; bnez a5, 81b; j fail; 82:
#define TIMER_IN(ticks) li a4, CLINT_MTIME; ld a4, 0(a4); addi a4, a4, ticks; li a5, CLINT_MTIMECMP; sd a4, 0(a5);
/* poll mip (bounded) until (mip & bit) == want: device-to-mip delivery may take a few cycles */
#define WAIT_MIP(bit, want) li a5, 1000000; 86: csrr a4, mip; andi a4, a4, bit; li t6, want; beq a4, t6, 87f; \
  addi a5, a5, -1; bnez a5, 86b; j fail; 87:
#define TIMER_OFF li a4, -1; li a5, CLINT_MTIMECMP; sd a4, 0(a5);

TEST_BEGIN
  csrw mie, zero
  TIMER_OFF
  SET_MTRAP(mtrap_skip)
  /* mtime advances */
  li TESTNUM, 1
  li a0, CLINT_MTIME
  ld a1, 0(a0)
  li a5, 20000000
1:ld a2, 0(a0)
  bne a1, a2, 2f
  addi a5, a5, -1
  bnez a5, 1b
  j fail
2:
  /* MTIP follows mtime >= mtimecmp even while disabled */
  li TESTNUM, 2
  li a0, CLINT_MTIMECMP
  sd zero, 0(a0)
  li a5, 1000000
1:csrr a1, mip
  andi a1, a1, MIP_MTIP
  bnez a1, 2f
  addi a5, a5, -1
  bnez a5, 1b
  j fail
2:TIMER_OFF
  li a5, 1000000
1:csrr a1, mip
  andi a1, a1, MIP_MTIP
  beqz a1, 2f
  addi a5, a5, -1
  bnez a5, 1b
  j fail
2:
  /* timer interrupt taken: mcause = interrupt 7 */
  li TESTNUM, 3
  CLEAR_TRAP_RECORD
  li a0, MIP_MTIP
  csrs mie, a0
  csrsi mstatus, MSTATUS_MIE
  TIMER_IN(100)
  WAIT_TRAP
  csrci mstatus, MSTATUS_MIE
  LOAD_TRAP(a0, trap_cause)
  CHECK(a0, IRQ(7))
  LOAD_TRAP(a0, trap_status)             /* MPIE holds the old MIE = 1, MIE cleared */
  andi a1, a0, (1 << 7)
  beqz a1, fail
  andi a1, a0, MSTATUS_MIE
  bnez a1, fail
  TIMER_OFF
  /* software interrupt: msip sets MSIP, taken as interrupt 3, cleared by writing 0 */
  li TESTNUM, 4
  CLEAR_TRAP_RECORD
  li a0, CLINT_MSIP
  li a1, 1
  sw a1, 0(a0)
  WAIT_MIP(MIP_MSIP, MIP_MSIP)
  li a1, MIP_MSIP
  csrs mie, a1
  csrsi mstatus, MSTATUS_MIE
  WAIT_TRAP
  csrci mstatus, MSTATUS_MIE
  LOAD_TRAP(a1, trap_cause)
  CHECK(a1, IRQ(3))
  sw zero, 0(a0)
  WAIT_MIP(MIP_MSIP, 0)
  /* priority: with MSI and MTI both pending, MSI is taken first */
  li TESTNUM, 5
  CLEAR_TRAP_RECORD
  li a0, CLINT_MSIP
  li a1, 1
  sw a1, 0(a0)
  li a0, CLINT_MTIMECMP
  sd zero, 0(a0)
1:csrr a1, mip
  andi a1, a1, MIP_MTIP
  beqz a1, 1b
  SET_MTRAP(irq_first)
  li a1, MIP_MSIP | MIP_MTIP
  csrs mie, a1
  csrsi mstatus, MSTATUS_MIE
  WAIT_TRAP
  csrci mstatus, MSTATUS_MIE
  LOAD_TRAP(a1, trap_cause)
  CHECK(a1, IRQ(3))
  li a0, CLINT_MSIP
  sw zero, 0(a0)
  TIMER_OFF
  SET_MTRAP(mtrap_skip)
  /* WFI with MIE = 0 resumes (no trap) once the enabled timer interrupt is pending */
  li TESTNUM, 6
  CLEAR_TRAP_RECORD
  li a1, MIP_MTIP
  csrs mie, a1
  TIMER_IN(200)
  wfi
1:csrr a1, mip
  andi a1, a1, MIP_MTIP
  beqz a1, 1b
  LOAD_TRAP(a1, trap_count)
  CHECK(a1, 0)
  TIMER_OFF
  /* WFI with MIE = 1: the interrupt is taken (at or right after the WFI; the hook leaves MTIE
     enabled and returns with MIE = 0, so a WFI re-executed after the trap still wakes up) */
  li TESTNUM, 7
  CLEAR_TRAP_RECORD
  SET_MTRAP(irq_global_off)
  TIMER_IN(200)
  csrsi mstatus, MSTATUS_MIE
  wfi
  WAIT_TRAP
  csrci mstatus, MSTATUS_MIE
  SET_MTRAP(mtrap_skip)
  csrw mie, zero
  LOAD_TRAP(a1, trap_cause)
  CHECK(a1, IRQ(7))
  TIMER_OFF
  /* vectored mtvec: interrupt n goes to base + 4n, exceptions to base */
  li TESTNUM, 8
  CLEAR_TRAP_RECORD
  la a0, vector_table
  ori a0, a0, 1
  csrw mtvec, a0
  li a0, CLINT_MSIP
  li a1, 1
  sw a1, 0(a0)
  li a1, MIP_MSIP
  csrs mie, a1
  csrsi mstatus, MSTATUS_MIE
  WAIT_TRAP
  csrci mstatus, MSTATUS_MIE
  LOAD_TRAP(a1, trap_cause)
  CHECK(a1, 0x103)                       /* vector entry 3 ran */
  li TESTNUM, 9
  CLEAR_TRAP_RECORD
  li a1, MIP_MTIP
  csrs mie, a1
  TIMER_IN(100)
  csrsi mstatus, MSTATUS_MIE
  WAIT_TRAP
  csrci mstatus, MSTATUS_MIE
  LOAD_TRAP(a1, trap_cause)
  CHECK(a1, 0x107)
  TIMER_OFF
  li TESTNUM, 10
  CLEAR_TRAP_RECORD
  ecall
  LOAD_TRAP(a1, trap_cause)
  CHECK(a1, 0x100)                       /* exception: base entry */
  la a0, trap_vector
  csrw mtvec, a0
  /* M interrupts are taken in U even with mstatus.MIE = 0 */
  li TESTNUM, 11
  CLEAR_TRAP_RECORD
  csrci mstatus, MSTATUS_MIE
  li a0, CLINT_MSIP
  li a1, 1
  sw a1, 0(a0)
  li a1, MIP_MSIP
  csrs mie, a1
  RUN_U(1f)
  nop
  nop
  ecall
1:LOAD_TRAP(a1, trap_cause)
  CHECK(a1, IRQ(3))
  li a0, CLINT_MSIP
  sw zero, 0(a0)
  /* S software interrupt delegated with mideleg, raised by S itself through sip */
  li TESTNUM, 12
  CLEAR_TRAP_RECORD
  li a0, MIP_SSIP | MIP_STIP
  csrw mideleg, a0
  la a0, strap_skip
  csrw stvec, a0
  RUN_S(1f)
  li a1, MIP_SSIP
  csrs sie, a1
  csrsi sstatus, MSTATUS_SIE
  csrs sip, a1
  nop
  nop
  csrci sstatus, MSTATUS_SIE
  csrc sip, a1
  ecall
1:LOAD_TRAP(a1, trap_in_s)
  CHECK(a1, 1)
  LOAD_TRAP(a1, trap_cause)
  CHECK(a1, IRQ(1))
  /* S timer interrupt: M sets mip.STIP, S takes it (interrupt 5) */
  li TESTNUM, 13
  CLEAR_TRAP_RECORD
  li a1, MIP_STIP
  csrs mip, a1
  RUN_S(1f)
  li a1, MIP_STIP
  csrs sie, a1
  csrsi sstatus, MSTATUS_SIE
  nop
  nop
  csrci sstatus, MSTATUS_SIE
  ecall
1:LOAD_TRAP(a1, trap_cause)
  CHECK(a1, IRQ(5))
  li a1, MIP_STIP
  csrc mip, a1
  /* a delegated S interrupt is not taken in M */
  li TESTNUM, 14
  CLEAR_TRAP_RECORD
  li a1, MIP_SSIP
  csrs mip, a1
  csrs mie, a1
  csrsi mstatus, MSTATUS_MIE
  nop
  nop
  csrci mstatus, MSTATUS_MIE
  LOAD_TRAP(a1, trap_count)
  CHECK(a1, 0)
  li a1, MIP_SSIP
  csrc mip, a1
  /* entering U with an M interrupt (MSI) and a delegated S interrupt (SSI) both pending: both are
     enabled there at once and the M-level one is taken first, then the S one (last cause = SSI) */
  li TESTNUM, 15
  CLEAR_TRAP_RECORD
  li a0, CLINT_MSIP
  li a1, 1
  sw a1, 0(a0)
  WAIT_MIP(MIP_MSIP, MIP_MSIP)
  li a1, MIP_SSIP
  csrs mip, a1
  li a1, MIP_SSIP | MIP_MSIP
  csrw mie, a1
  RUN_U(1f)
  nop
  nop
  ecall
1:LOAD_TRAP(a1, trap_count)
  CHECK(a1, 2)
  LOAD_TRAP(a1, trap_cause)
  CHECK(a1, IRQ(1))
  li a0, CLINT_MSIP
  sw zero, 0(a0)
  li a1, MIP_SSIP
  csrc mip, a1
  csrw mie, zero
  csrw mideleg, zero
  CLEAR_MTRAP
TEST_END

/* hook: record the first interrupt, mask every interrupt source */
  .align 2
irq_first:
  csrr t0, mcause
  la t1, trap_cause
  sd t0, 0(t1)
  li t0, 1
  la t1, trap_count
  sd t0, 0(t1)
  csrw mie, zero
  csrr t0, mscratch
  mret

/* hook: record the interrupt, return with mstatus.MIE = 0 (MPIE cleared), leave mie alone */
  .align 2
irq_global_off:
  csrr t0, mcause
  la t1, trap_cause
  sd t0, 0(t1)
  li t0, 1
  la t1, trap_count
  sd t0, 0(t1)
  li t0, (1 << 7)
  csrc mstatus, t0
  csrr t0, mscratch
  mret

/* vectored table: entry n records 0x100 + n and masks the interrupts */
  .align 8
  .option push
  .option norvc                           /* 4-byte entries */
vector_table:
  j vec_exc
  j vec_bad
  j vec_bad
  j vec_3
  j vec_bad
  j vec_bad
  j vec_bad
  j vec_7
  .option pop
vec_bad:
  li a0, 253
  j exit
vec_exc:
  csrw mscratch, t0
  li t0, 0x100
  la t1, trap_cause
  sd t0, 0(t1)
  csrr t0, mepc
  addi t0, t0, 4
  csrw mepc, t0
  csrr t0, mscratch
  mret
vec_3:
  li t0, 0x103
  j vec_irq
vec_7:
  li t0, 0x107
vec_irq:
  la t1, trap_cause
  sd t0, 0(t1)
  li t0, 1
  la t1, trap_count
  sd t0, 0(t1)
  csrw mie, zero
  li t0, CLINT_MSIP
  sw zero, 0(t0)
  li t0, -1
  li t1, CLINT_MTIMECMP
  sd t0, 0(t1)
  mret
