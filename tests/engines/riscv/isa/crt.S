/* Start file for virtkit's bare-metal ISA tests and differential programs.
 *
 * _start: trap vector, FPU on, stack, zeroed .bss, then main(); main's return value is the
 * HTIF exit code.  HTIF: tohost = (code << 1) | 1 ends the run (0 = pass, n = failing test n);
 * tohost = (1 << 56) | (1 << 48) | ch prints ch on the console, and the host acknowledges by
 * writing a non-zero value to fromhost.
 *
 * Traps: the vector jumps to the address in `trap_hook` (a test installs one; t0 is saved in
 * mscratch) or, if it is 0, prints the trap and exits with 255.  mtrap_skip / strap_skip are
 * ready-made hooks that record cause/tval/epc, skip the trapping instruction (or return to ra
 * for instruction-fetch faults) and mask the interrupt that was taken.  If `trap_resume` is set,
 * an ecall from U or S mode returns to M mode at that address instead (see RUN_U / RUN_S).
 * _start also opens PMP entry 0 over all memory so S and U mode can run.
 */

#define CAUSE_FETCH_MISALIGNED 0
#define CAUSE_FETCH_ACCESS 1
#define CAUSE_FETCH_PAGE_FAULT 12

  .section .text.init, "ax"
  .globl _start
_start:
  la t0, 1f                 /* PMP entry 0 = all memory RWX for S/U (skipped if PMP traps) */
  csrw mtvec, t0
  li t0, -1
  csrw pmpaddr0, t0
  li t0, 0x1f               /* NAPOT | X | W | R */
  csrw pmpcfg0, t0
  .align 2
1:la t0, trap_vector
  csrw mtvec, t0
  csrr t0, mhartid
  bnez t0, park
  li t0, (1 << 13)          /* mstatus.FS = Initial: FP instructions allowed */
  csrs mstatus, t0
  csrwi fcsr, 0
  la sp, _stack_top
  la t0, _bss_start
  la t1, _bss_end
1:bgeu t0, t1, 2f
  sd zero, 0(t0)
  addi t0, t0, 8
  j 1b
2:call main
  j exit
/* Other harts wait here until hart 0 stores an entry point in smp_entry and sends them a
   software interrupt (CLINT msip); they start there with a0 = hartid, their own stack
   (_stack_top - hartid * 32 KiB) and the FPU on. */
park:
  li t0, (1 << 13)
  csrs mstatus, t0
  li t0, (1 << 3)             /* MSIE: a pending msip wakes WFI (MIE stays 0, no trap) */
  csrw mie, t0
1:wfi
  la t0, smp_entry
  ld t1, 0(t0)
  beqz t1, 1b
  csrr a0, mhartid
  li t2, 0x02000000
  slli t0, a0, 2
  add t2, t2, t0
  sw zero, 0(t2)              /* clear our msip */
  csrw mie, zero
  la sp, _stack_top
  slli t0, a0, 15
  sub sp, sp, t0
  jr t1

/* exit(a0): report a0 to the host through HTIF and never return. */
  .globl exit
exit:
  slli a0, a0, 1
  ori a0, a0, 1
  la t0, tohost
1:sd a0, 0(t0)
  j 1b

/* htif_putchar(a0): one byte on the HTIF console (device 1, command 1); waits for fromhost. */
  .globl htif_putchar
htif_putchar:
  andi a0, a0, 0xff
  li t0, 0x0101
  slli t0, t0, 48
  or t0, t0, a0
  la t1, tohost
  la t2, fromhost
  sd t0, 0(t1)
1:ld t0, 0(t2)
  beqz t0, 1b
  sd zero, 0(t2)
  ret

  .align 6
  .globl trap_vector
trap_vector:
  csrw mscratch, t0
  la t0, trap_hook
  ld t0, 0(t0)
  beqz t0, unexpected_trap
  jr t0

unexpected_trap:
  la sp, _trap_stack_top
  la a0, msg_trap
  call htif_puts
  csrr a0, mcause
  call htif_puthex
  la a0, msg_epc
  call htif_puts
  csrr a0, mepc
  call htif_puthex
  la a0, msg_tval
  call htif_puts
  csrr a0, mtval
  call htif_puthex
  li a0, '\n'
  call htif_putchar
  li a0, 255
  j exit

/* htif_puts(a0 = NUL-terminated string) */
  .globl htif_puts
htif_puts:
  addi sp, sp, -16
  sd ra, 0(sp)
  sd s0, 8(sp)
  mv s0, a0
1:lbu a0, 0(s0)
  beqz a0, 2f
  call htif_putchar
  addi s0, s0, 1
  j 1b
2:ld ra, 0(sp)
  ld s0, 8(sp)
  addi sp, sp, 16
  ret

/* htif_puthex(a0): 16 hex digits */
  .globl htif_puthex
htif_puthex:
  addi sp, sp, -32
  sd ra, 0(sp)
  sd s0, 8(sp)
  sd s1, 16(sp)
  mv s0, a0
  li s1, 60
1:srl a0, s0, s1
  andi a0, a0, 15
  addi a0, a0, '0'
  li t0, '9'
  ble a0, t0, 2f
  addi a0, a0, 'a' - '0' - 10
2:call htif_putchar
  addi s1, s1, -4
  bgez s1, 1b
  ld ra, 0(sp)
  ld s0, 8(sp)
  ld s1, 16(sp)
  addi sp, sp, 32
  ret

/* M-mode hook: record the trap, skip the instruction (fetch faults return to ra), mask interrupts. */
  .align 2
  .globl mtrap_skip
mtrap_skip:
  csrr t0, mscratch           /* restore the test's t0, use mscratch as save slot for t1 */
  csrw mscratch, t1
  la t1, trap_save
  sd t0, 0(t1)
  sd t2, 8(t1)
  csrr t0, mcause
  ld t2, 64(t1)               /* trap_resume set and an ecall from U or S: back to M there */
  beqz t2, 6f
  addi t2, t0, -8
  beqz t2, 5f
  addi t2, t0, -9
  bnez t2, 6f
5:ld t2, 64(t1)
  sd zero, 64(t1)
  sd t0, 72(t1)               /* resume_cause */
  csrw mepc, t2
  li t2, (3 << 11)
  csrs mstatus, t2
  j 4f
6:
  sd t0, 16(t1)
  csrr t2, mtval
  sd t2, 24(t1)
  csrr t2, mepc
  sd t2, 32(t1)
  ld t2, 40(t1)
  addi t2, t2, 1
  sd t2, 40(t1)
  csrr t2, mstatus
  sd t2, 48(t1)
  bltz t0, 3f                 /* interrupt: mask it in mie, return to the same pc */
  li t2, CAUSE_FETCH_MISALIGNED
  beq t0, t2, 1f
  li t2, CAUSE_FETCH_ACCESS
  beq t0, t2, 1f
  li t2, CAUSE_FETCH_PAGE_FAULT
  beq t0, t2, 1f
  csrr t2, mepc               /* skip a 2- or 4-byte instruction */
  lhu t0, 0(t2)
  andi t0, t0, 3
  addi t2, t2, 2
  li t1, 3
  bne t0, t1, 2f
  addi t2, t2, 2
  j 2f
1:mv t2, ra
2:csrw mepc, t2
  j 4f
3:li t2, 1
  sll t2, t2, t0              /* shift uses the low 6 bits: the interrupt code */
  csrc mie, t2
4:la t1, trap_save
  ld t0, 0(t1)
  ld t2, 8(t1)
  csrr t1, mscratch
  mret

/* S-mode hook (install in stvec): the same for traps delegated to S. */
  .align 2
  .globl strap_skip
strap_skip:
  csrw sscratch, t1
  la t1, trap_save
  sd t0, 0(t1)
  sd t2, 8(t1)
  csrr t0, scause
  sd t0, 16(t1)
  csrr t2, stval
  sd t2, 24(t1)
  csrr t2, sepc
  sd t2, 32(t1)
  ld t2, 40(t1)
  addi t2, t2, 1
  sd t2, 40(t1)
  csrr t2, sstatus
  sd t2, 48(t1)
  li t2, 1
  sd t2, 56(t1)
  bltz t0, 3f
  li t2, CAUSE_FETCH_MISALIGNED
  beq t0, t2, 1f
  li t2, CAUSE_FETCH_ACCESS
  beq t0, t2, 1f
  li t2, CAUSE_FETCH_PAGE_FAULT
  beq t0, t2, 1f
  csrr t2, sepc
  lhu t0, 0(t2)
  andi t0, t0, 3
  addi t2, t2, 2
  li t1, 3
  bne t0, t1, 2f
  addi t2, t2, 2
  j 2f
1:mv t2, ra
2:csrw sepc, t2
  j 4f
3:li t2, 1
  sll t2, t2, t0
  csrc sie, t2
4:la t1, trap_save
  ld t0, 0(t1)
  ld t2, 8(t1)
  csrr t1, sscratch
  sret

  .section .rodata
msg_trap: .asciz "unexpected trap: mcause=0x"
msg_epc:  .asciz " mepc=0x"
msg_tval: .asciz " mtval=0x"

  .section .tohost, "aw", @progbits
  .align 6
  .globl tohost
tohost: .dword 0
  .size tohost, 8
  .align 6
  .globl fromhost
fromhost: .dword 0
  .size fromhost, 8

  .data
  .align 3
  .globl trap_hook, trap_save, trap_cause, trap_tval, trap_epc, trap_count, trap_status, trap_in_s
  .globl trap_resume, resume_cause
trap_hook:   .dword 0
trap_save:   .dword 0, 0     /* layout fixed: the hooks address these by offset from trap_save */
trap_cause:  .dword 0
trap_tval:   .dword 0
trap_epc:    .dword 0
trap_count:  .dword 0
trap_status: .dword 0
trap_in_s:   .dword 0
trap_resume: .dword 0       /* M-mode address an ecall from U/S returns to (mtrap_skip) */
resume_cause: .dword 0      /* mcause of that ecall (8 from U, 9 from S) */
  .globl smp_entry
smp_entry:   .dword 0       /* where parked harts start (see park) */
