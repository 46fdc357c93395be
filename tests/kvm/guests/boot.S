/* Multiboot v1 entry of virtkit's x86-64 test kernels: the a.out kludge (a flat binary loaded at 1 MiB, so
 * QEMU's loader takes it too), 32-bit protected mode to long mode on identity page tables for the first
 * 4 GiB (2 MiB pages), then kmain(). kmain's return value is written to the debug-exit port. Application
 * processors start at the real-mode trampoline the BSP copies to 0x8000 (ap_boot in rt.c). */
#define MB_FLAGS 0x00010003
        .section .multiboot, "a"
        .align 4
mb_header:
        .long 0x1BADB002
        .long MB_FLAGS
        .long -(0x1BADB002 + MB_FLAGS)
        .long mb_header
        .long _load_start
        .long _load_end
        .long _bss_end
        .long _start32

        .section .text32, "ax"
        .code32
        .globl _start32
_start32:
        cli
        movl %eax, mb_magic
        movl %ebx, mb_info
        movl $boot_stack_top, %esp
        call build_tables
        call enter_long_mode
        ljmp $0x08, $start64

/* pml4[0] -> pdpt; pdpt[0..3] -> pd0..pd3; pdN[i] = (N*512+i) << 21 | present | writable | 2 MiB */
build_tables:
        movl $pdpt, %eax
        orl $3, %eax
        movl %eax, pml4
        xorl %ecx, %ecx
1:      movl %ecx, %eax
        shll $12, %eax
        addl $pd, %eax
        orl $3, %eax
        movl %eax, pdpt(,%ecx,8)
        incl %ecx
        cmpl $4, %ecx
        jne 1b
        xorl %ecx, %ecx
2:      movl %ecx, %eax
        shll $21, %eax
        orl $0x83, %eax
        movl %eax, pd(,%ecx,8)
        movl %ecx, %eax
        shrl $11, %eax
        movl %eax, pd+4(,%ecx,8)
        incl %ecx
        cmpl $2048, %ecx
        jne 2b
        ret

enter_long_mode:
        movl $pml4, %eax
        movl %eax, %cr3
        movl %cr4, %eax
        orl $0x20, %eax                 /* PAE */
        movl %eax, %cr4
        movl $0xC0000080, %ecx          /* EFER.LME */
        rdmsr
        orl $0x100, %eax
        wrmsr
        movl %cr0, %eax
        orl $0x80000001, %eax           /* PG, PE */
        movl %eax, %cr0
        lgdt gdt64_ptr
        ret

        .code64
start64:
        movw $0x10, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %ss
        movw %ax, %fs
        movw %ax, %gs
        movq $boot_stack_top, %rsp
        call kmain
        movl %eax, %edi
        call debug_exit
3:      hlt
        jmp 3b

/* the AP trampoline: copied to 0x8000 and started there by INIT/SIPI (vector 0x08), in real mode */
        .globl trampoline_start, trampoline_end
        .code16
trampoline_start:
        cli
        xorw %ax, %ax
        movw %ax, %ds
        lgdtl (0x8000 + tr_gdt_ptr - trampoline_start)
        movl %cr0, %eax
        orl $1, %eax
        movl %eax, %cr0
        ljmpl $0x18, $(0x8000 + tr32 - trampoline_start)
        .code32
tr32:
        movw $0x10, %ax
        movw %ax, %ds
        movw %ax, %ss
        movl $pml4, %eax
        movl %eax, %cr3
        movl %cr4, %eax
        orl $0x20, %eax
        movl %eax, %cr4
        movl $0xC0000080, %ecx
        rdmsr
        orl $0x100, %eax
        wrmsr
        movl %cr0, %eax
        orl $0x80000001, %eax
        movl %eax, %cr0
        lgdt gdt64_ptr
        ljmp $0x08, $ap_start64
        .align 8
tr_gdt:
        .quad 0
        .quad 0x00AF9A000000FFFF        /* 0x08: 64-bit code */
        .quad 0x00CF92000000FFFF        /* 0x10: data */
        .quad 0x00CF9A000000FFFF        /* 0x18: 32-bit code */
tr_gdt_ptr:
        .word 31
        .long 0x8000 + tr_gdt - trampoline_start
trampoline_end:

        .code64
ap_start64:
        movw $0x10, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %ss
        movq $ap_stack_top, %rsp
        call ap_main
4:      hlt
        jmp 4b

        .section .rodata
        .align 8
gdt64:
        .quad 0
        .quad 0x00AF9A000000FFFF        /* 0x08: 64-bit code */
        .quad 0x00CF92000000FFFF        /* 0x10: data */
gdt64_ptr:
        .word 23
        .quad gdt64

        .section .data
        .globl mb_magic, mb_info
mb_magic: .long 0
mb_info:  .long 0

        .section .bss
        .align 4096
pml4:   .skip 4096
pdpt:   .skip 4096
pd:     .skip 4 * 4096
        .align 16
        .skip 16384
boot_stack_top:
        .skip 16384
ap_stack_top:

/* exception and interrupt entry stubs: push a dummy error code where the CPU pushes none, the vector, the
 * registers; call trap(frame); the handler may change frame->rip. */
        .text
        .code64
        .macro STUB n, err
        .globl isr\n
isr\n:
        .if \err == 0
        pushq $0
        .endif
        pushq $\n
        jmp isr_common
        .endm
        STUB 0,0; STUB 1,0; STUB 2,0; STUB 3,0; STUB 4,0; STUB 5,0; STUB 6,0; STUB 7,0
        STUB 8,1; STUB 9,0; STUB 10,1; STUB 11,1; STUB 12,1; STUB 13,1; STUB 14,1; STUB 15,0
        STUB 16,0; STUB 17,1; STUB 18,0; STUB 19,0; STUB 32,0; STUB 33,0; STUB 36,0; STUB 64,0; STUB 255,0
isr_common:
        pushq %rax
        pushq %rcx
        pushq %rdx
        pushq %rbx
        pushq %rbp
        pushq %rsi
        pushq %rdi
        pushq %r8
        pushq %r9
        pushq %r10
        pushq %r11
        movq %rsp, %rdi
        call trap
        popq %r11
        popq %r10
        popq %r9
        popq %r8
        popq %rdi
        popq %rsi
        popq %rbp
        popq %rbx
        popq %rdx
        popq %rcx
        popq %rax
        addq $16, %rsp
        iretq
