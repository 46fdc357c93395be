/* Differential program: Sv39 permission checks.  A test page is mapped with many PTE flag
 * combinations (V R W X U A D) and probed by loads, stores and fetches from S mode (with and
 * without SUM/MXR) and from U mode (with and without MXR); each probe prints the trap cause and
 * tval (or the value read) and the PTE afterwards (hardware A/D updates).  Page faults go to M. */
#include "lib.h"

extern volatile uint64_t trap_hook, trap_cause, trap_tval, trap_epc, trap_count, trap_resume, resume_cause;
extern char mtrap_skip[], s_probe[], u_probe[], u_probe_end[];

/* probe routines: a0 = kind (0 load, 1 store, 2 fetch), a1 = address; result in a2; ecall back.
   s_probe runs in S from the identity map; u_probe lives on its own page, mapped U at VA = PA. */
__asm__(".text\n.globl s_probe, u_probe, u_probe_end\n.align 2\n.option push\n.option norvc\n"
        "s_probe: li a2, 0\n beqz a0, 1f\n addi a0, a0, -1\n beqz a0, 2f\n jalr ra, 0(a1)\n j 3f\n"
        "1: ld a2, 0(a1)\n j 3f\n2: sd a1, 8(a1)\n3: ecall\n"
        ".align 12\n"
        "u_probe: li a2, 0\n beqz a0, 1f\n addi a0, a0, -1\n beqz a0, 2f\n jalr ra, 0(a1)\n j 3f\n"
        "1: ld a2, 0(a1)\n j 3f\n2: sd a1, 8(a1)\n3: ecall\n"
        ".align 12\nu_probe_end:\n.option pop\n");

static uint64_t root[512] __attribute__((aligned(4096)));
static uint64_t l1_ram[512] __attribute__((aligned(4096)));      /* VA 0x8000_0000 .. +1 GiB */
static uint64_t l0_ram[512] __attribute__((aligned(4096)));      /* VA 0x8000_0000 .. +2 MiB, 4 KiB pages */
static uint64_t l1_test[512] __attribute__((aligned(4096)));     /* VA 0x4000_0000 .. */
static uint64_t l0_test[512] __attribute__((aligned(4096)));
static uint32_t test_page[1024] __attribute__((aligned(4096)));

#define PTE(pa, fl) ((((uint64_t)(pa)) >> 12) << 10 | (fl))
#define TEST_VA 0x40000000ull

static uint64_t rng = 0x6a09e667f3bcc909ull;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

static uint64_t probe(int mode, uint64_t kind, uint64_t addr) {
    uint64_t a2;
    register uint64_t ra0 __asm__("a0") = kind;
    register uint64_t ra1 __asm__("a1") = addr;
    register uint64_t ra2 __asm__("a2");
    char *entry = mode ? s_probe : u_probe;
    __asm__ volatile("la t0, 1f\n\tsd t0, 0(%[res])\n\tli t0, 0x1800\n\tcsrc mstatus, t0\n\tcsrs mstatus, %[mpp]\n\t"
                     "csrw mepc, %[fn]\n\tmret\n1:"
                     : "+r"(ra0), "+r"(ra1), "=r"(ra2)
                     : [res] "r"(&trap_resume), [mpp] "r"((uint64_t)mode << 11), [fn] "r"(entry)
                     : "ra", "t0", "t1", "t2", "t3", "t4", "t5", "t6", "a3", "a4", "a5", "a6", "a7", "memory");
    a2 = ra2;
    return a2;
}

int main(void) {
    put_str("diff_vm\n");
    write_csr(mie, 0);
    trap_hook = (uint64_t)mtrap_skip;
    /* identity map of RAM: first 2 MiB in 4 KiB pages (u_probe's page is U), the rest megapages */
    for (int i = 0; i < 512; i++) l0_ram[i] = PTE(0x80000000ull + 4096ull * i, 0xcf);      /* V R W X A D */
    uint64_t up = (uint64_t)u_probe;
    l0_ram[(up >> 12) & 511] = PTE(up, 0x5b);                    /* V R X U A (RAM base is 2 MiB aligned) */
    l1_ram[0] = PTE(l0_ram, 1);
    for (int i = 1; i < 512; i++) l1_ram[i] = PTE(0x80000000ull + (2ull << 20) * i, 0xcf);
    root[2] = PTE(l1_ram, 1);
    root[1] = PTE(l1_test, 1);
    l1_test[0] = PTE(l0_test, 1);
    write_csr(satp, (8ull << 60) | ((uint64_t)root >> 12));
    __asm__ volatile("sfence.vma" ::: "memory");

    static const char *kinds[3] = {"ld", "sd", "jr"};
    static const uint64_t status_bits[5] = {0, 1ull << 18, 1ull << 19, 0, 1ull << 19};   /* SUM / MXR */
    static const int modes[5] = {1, 1, 1, 0, 0};
    for (int round = 0; round < 68; round++) {
        /* every combination of R W X U A D with V set, then a few random ones without V */
        uint64_t r = (uint64_t)round;
        uint64_t flags = 1 | (r & 15) << 1 | ((r >> 4) & 3) << 6;
        if (round >= 64) flags = next() & 0xfe;
        for (int m = 0; m < 5; m++) {
            for (uint64_t kind = 0; kind < 3; kind++) {
                test_page[0] = 0x00008067;                                  /* ret, for fetches */
                test_page[1] = 0x0;
                test_page[2] = 0x12345678;
                test_page[3] = 0x9abcdef0;
                l0_test[0] = PTE(test_page, flags);
                __asm__ volatile("sfence.vma" ::: "memory");
                write_csr(mstatus, (read_csr(mstatus) & ~((1ull << 18) | (1ull << 19))) | status_bits[m]);
                trap_cause = trap_tval = trap_count = 0;
                uint64_t v = probe(modes[m], kind, TEST_VA);
                write_csr(mstatus, read_csr(mstatus) & ~((1ull << 18) | (1ull << 19)));
                put_hex32((uint32_t)flags); htif_putchar(' ');
                put_str(modes[m] ? "S" : "U"); htif_putchar('0' + (int)m); htif_putchar(' ');
                put_str(kinds[kind]);
                put_str(" traps="); put_hex32((uint32_t)trap_count);
                put_str(" cause="); put_hex32((uint32_t)trap_cause);
                put_str(" tval="); put_hex64(trap_tval);
                put_str(" val="); put_hex64(v);
                put_str(" mem="); put_hex32(test_page[2]);
                put_str(" pte="); put_hex32((uint32_t)(l0_test[0] & 0x3ff));
                htif_putchar('\n');
            }
        }
    }
    write_csr(satp, 0);
    __asm__ volatile("sfence.vma" ::: "memory");
    trap_hook = 0;
    put_str("end\n");
    return 0;
}
