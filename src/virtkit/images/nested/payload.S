/* The nested guest: runs in VS-mode at guest physical 0x80000000 under the L1 guest's KVM. Prints through
 * SBI legacy console_putchar (KVM hands it to the VMM), writes 64 pages (each a G-stage fault that KVM
 * serves by mapping the page), sums 1..100000, prints the verdict and shuts down through SBI. */
.section .text
.globl _start
_start:
    la s1, hello
    call puts
    li t0, 0x80100000
    li t1, 64
1:  sd t1, 0(t0)
    li t2, 4096
    add t0, t0, t2
    addi t1, t1, -1
    bnez t1, 1b
    li t0, 0
    li t1, 100000
2:  add t0, t0, t1
    addi t1, t1, -1
    bnez t1, 2b
    li t2, 5000050000
    la s1, good
    beq t0, t2, 3f
    la s1, bad
3:  call puts
    li a7, 8                    # legacy shutdown
    ecall
4:  j 4b
puts:                           # the string at s1 (a0 and a1 come back with the call's results)
    lbu a0, 0(s1)
    beqz a0, 5f
    li a7, 1                    # legacy console_putchar
    ecall
    addi s1, s1, 1
    j puts
5:  ret
hello: .asciz "NESTED-GUEST: hello from VS-mode under the guest's KVM\n"
good: .asciz "NESTED-GUEST: sum 1..100000 = 5000050000\n"
bad: .asciz "NESTED-GUEST: wrong sum\n"
