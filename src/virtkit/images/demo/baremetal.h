/* Freestanding helpers for virtkit's bare-metal C programs: HTIF console, exit, CSR access. */
#ifndef VIRTKIT_BAREMETAL_H
#define VIRTKIT_BAREMETAL_H
#include <stdint.h>

void htif_putchar(int ch);
void exit(int code) __attribute__((noreturn));

#define read_csr(name) ({ uint64_t v_; __asm__ volatile("csrr %0, " #name : "=r"(v_)); v_; })

static inline void put_str(const char *s) { while (*s) htif_putchar(*s++); }

static inline void put_hex(uint64_t v, int digits) {
    for (int i = (digits - 1) * 4; i >= 0; i -= 4) htif_putchar("0123456789abcdef"[(v >> i) & 15]);
}

static inline void put_udec(uint64_t u) {
    char buf[24];
    int n = 0;
    do { buf[n++] = (char)('0' + u % 10); u /= 10; } while (u);
    while (n) htif_putchar(buf[--n]);
}

/* Called by crt.S on any trap: report it (the program then exits with 255). */
static inline void report_trap(uint64_t cause, uint64_t epc, uint64_t tval) {
    put_str("\nunexpected trap: mcause=0x"); put_hex(cause, 16);
    put_str(" mepc=0x"); put_hex(epc, 16);
    put_str(" mtval=0x"); put_hex(tval, 16);
    htif_putchar('\n');
}
#define DEFINE_TRAP_REPORT \
    void trap_report(uint64_t c, uint64_t e, uint64_t t) { report_trap(c, e, t); }
#endif
