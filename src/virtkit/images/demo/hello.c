/* virtkit's demo guest: a bare-metal RV64 program that greets, shows what the machine is
 * (hart id, misa decoded) and makes it compute something (primes, a checksum), then exits 0. */
#include "baremetal.h"

DEFINE_TRAP_REPORT

static int is_prime(uint64_t n) {
    if (n < 2) return 0;
    for (uint64_t d = 2; d * d <= n; d++)
        if (n % d == 0) return 0;
    return 1;
}

int main(void) {
    put_str("\n");
    put_str("  +------------------------------------------------+\n");
    put_str("  |  Hello from virtkit's bare-metal RISC-V demo!  |\n");
    put_str("  +------------------------------------------------+\n\n");

    uint64_t misa = read_csr(misa);
    put_str("  hart id    : ");
    put_udec(read_csr(mhartid));
    put_str("\n  misa       : 0x");
    put_hex(misa, 16);
    put_str("  (RV");
    put_udec(misa >> 62 == 2 ? 64 : misa >> 62 == 1 ? 32 : 128);
    for (int i = 0; i < 26; i++)
        if (misa & (1ull << i)) htif_putchar('A' + i);
    put_str(")\n");

    put_str("  primes     :");
    int count = 0;
    for (uint64_t n = 2; count < 25; n++) {
        if (is_prime(n)) {
            htif_putchar(' ');
            put_udec(n);
            count++;
        }
    }
    uint64_t fib_a = 0, fib_b = 1;
    for (int i = 0; i < 90; i++) {
        uint64_t t = fib_a + fib_b;
        fib_a = fib_b;
        fib_b = t;
    }
    put_str("\n  fib(90)    : ");
    put_udec(fib_a);
    volatile double x = 2.0, r = 1.0;
    for (int i = 0; i < 20; i++) r = 0.5 * (r + x / r);   /* Newton's sqrt(2) */
    put_str("\n  sqrt(2)    : 1.");
    uint64_t frac = (uint64_t)((r - 1.0) * 1e12);
    char digits[12];
    for (int i = 11; i >= 0; i--) { digits[i] = (char)('0' + frac % 10); frac /= 10; }
    for (int i = 0; i < 12; i++) htif_putchar(digits[i]);
    put_str("\n  instret    : ");
    put_udec(read_csr(minstret));
    put_str(" instructions so far\n\n  Bye! (exit code 0 through HTIF)\n");
    return 0;
}
