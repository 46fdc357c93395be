/* Differential program: the architectural state after traps (mcause, mepc, mtval where the spec
 * fixes it, mstatus privilege-stack bits, scause/sepc/sstatus for delegated traps), printed so
 * virtkit and QEMU can be compared byte for byte.  Implementation-defined values (mtval of an
 * illegal instruction, misa, WARL bits) are left out. */
#include "lib.h"

extern volatile uint64_t trap_hook, trap_cause, trap_tval, trap_epc, trap_count, trap_status, trap_in_s;
extern volatile uint64_t trap_resume, resume_cause;
extern char mtrap_skip[], strap_skip[];
extern char u_ecall[], u_illegal[], s_ecall[], s_ebreak[];

/* the routines run in U or S: straight-line asm that ends in ecall (back to M via trap_resume) */
__asm__(".text\n.align 2\n"
        "u_ecall: ecall\n"
        "u_illegal: .word 0xfe000033\n ecall\n"
        "s_ecall: csrr a0, sstatus\n ecall\n"
        "s_ebreak: ebreak\n ecall\n");

#define STATUS_MASK 0x7e01aaull   /* SIE SPIE SPP MIE MPIE MPP MPRV SUM MXR TVM TW TSR */

static void enter(uint64_t mpp, char *fn) {
    __asm__ volatile("la t0, 1f\n\tsd t0, 0(%[res])\n\tli t0, 0x1800\n\tcsrc mstatus, t0\n\tcsrs mstatus, %[mpp]\n\t"
                     "csrw mepc, %[fn]\n\tmret\n1:"
                     :: [res] "r"(&trap_resume), [mpp] "r"(mpp << 11), [fn] "r"(fn)
                     : "ra", "t0", "t1", "t2", "t3", "t4", "t5", "t6", "a0", "a1", "a2", "a3", "a4", "a5", "a6",
                       "a7", "memory");
}

static void clear(void) {
    trap_cause = trap_tval = trap_epc = trap_count = trap_status = trap_in_s = resume_cause = 0;
}

static void report(const char *what, int with_tval) {
    put_str(what);
    put_str(" cause="); put_hex64(trap_cause);
    put_str(" epc="); put_hex64(trap_epc);
    put_str(" tval="); put_hex64(with_tval ? trap_tval : 0);
    put_str(" status="); put_hex64(trap_status & STATUS_MASK);
    put_str(" count="); put_hex64(trap_count);
    put_str(" in_s="); put_hex64(trap_in_s);
    put_str(" resume="); put_hex64(resume_cause);
    put_str(" mstatus="); put_hex64(read_csr(mstatus) & STATUS_MASK);
    htif_putchar('\n');
}

int main(void) {
    put_str("diff_trap\n");
    write_csr(mie, 0);
    trap_hook = (uint64_t)mtrap_skip;
    clear(); __asm__ volatile("ecall"); report("ecall-m", 0);
    clear(); __asm__ volatile("ebreak"); report("ebreak-m", 0);
    clear(); __asm__ volatile(".word 0xfe000033"); report("illegal-m", 0);
    clear(); { volatile uint64_t *p = (uint64_t *)0x1000000008ull; (void)*p; } report("load-access", 1);
    clear(); { volatile uint32_t *p = (uint32_t *)0x1000000100ull; *p = 1; } report("store-access", 1);
    clear(); enter(0, u_ecall); report("ecall-u", 0);
    clear(); enter(1, s_ecall); report("ecall-s", 0);
    clear(); enter(0, u_illegal); report("illegal-u", 0);
    write_csr(medeleg, (1 << 2) | (1 << 3));
    write_csr(stvec, (uint64_t)strap_skip);
    clear(); enter(0, u_illegal); report("illegal-u-deleg", 0);
    put_str("scause="); put_hex64(read_csr(scause)); put_str(" sepc="); put_hex64(read_csr(sepc));
    put_str(" sstatus="); put_hex64(read_csr(sstatus) & STATUS_MASK); htif_putchar('\n');
    clear(); enter(1, s_ebreak); report("ebreak-s-deleg", 0);
    put_str("scause="); put_hex64(read_csr(scause)); put_str(" sepc="); put_hex64(read_csr(sepc));
    put_str(" sstatus="); put_hex64(read_csr(sstatus) & STATUS_MASK); htif_putchar('\n');
    write_csr(medeleg, 0);
    trap_hook = 0;
    put_str("end\n");
    return 0;
}
