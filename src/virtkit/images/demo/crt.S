/* Start file for virtkit's bare-metal C programs (the demo and bench/cpu workloads).
 *
 * _start: hart 0 only, FPU on, stack, zeroed .bss, main(); main's return value is the exit code.
 * HTIF: tohost = (code << 1) | 1 ends the run; tohost = (1 << 56) | (1 << 48) | ch prints ch,
 * the host acknowledges through fromhost.  Any trap prints mcause/mepc/mtval and exits 255.
 */
  .section .text.init, "ax"
  .globl _start
_start:
  la t0, trap_vector
  csrw mtvec, t0
  csrr t0, mhartid
  bnez t0, park
  li t0, (1 << 13)
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
park:
  wfi
  j park

  .globl exit
exit:
  slli a0, a0, 1
  ori a0, a0, 1
  la t0, tohost
1:sd a0, 0(t0)
  j 1b

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

  .align 2
trap_vector:
  la sp, _stack_top
  csrr a0, mcause
  csrr a1, mepc
  csrr a2, mtval
  call trap_report
  li a0, 255
  j exit

  .section .tohost, "aw", @progbits
  .align 6
  .globl tohost
tohost: .dword 0
  .size tohost, 8
  .align 6
  .globl fromhost
fromhost: .dword 0
  .size fromhost, 8
