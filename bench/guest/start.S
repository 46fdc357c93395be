.section .text.init
.globl _start
_start:
    la sp, stack_top
    tail main_
.section .bss
.align 12
    .space 8192
stack_top:
