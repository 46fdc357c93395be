/* Console throughput from S-mode, three ways: the 16550 UART's registers (one store per byte after an LSR
 * poll), SBI legacy console_putchar (one SBI call per byte) and SBI DBCN console_write (one call per buffer).
 * Prints "RESULT <method> <bytes> <ticks>" per method (ticks of the 10 MHz time CSR), then powers off (SRST). */
typedef unsigned long u64;
struct sbiret { long error; long value; };

static struct sbiret ecall(u64 ext, u64 fid, u64 a0, u64 a1, u64 a2) {
    register u64 r0 asm("a0") = a0, r1 asm("a1") = a1, r2 asm("a2") = a2, r6 asm("a6") = fid, r7 asm("a7") = ext;
    asm volatile("ecall" : "+r"(r0), "+r"(r1) : "r"(r2), "r"(r6), "r"(r7) : "memory");
    struct sbiret r = {(long)r0, (long)r1};
    return r;
}
static void putc_(char c) { ecall(1, 0, (u64)c, 0, 0); }
static void puts_(const char *s) { while (*s) putc_(*s++); }
static void putn(u64 v) { char b[24]; int i = 0; do { b[i++] = '0' + v % 10; v /= 10; } while (v); while (i) putc_(b[--i]); }
static u64 rdtime(void) { u64 t; asm volatile("rdtime %0" : "=r"(t)); return t; }

#define UART ((volatile unsigned char *)0x10000000UL)
#define N 65536
static char buf[4096];

static void report(const char *what, u64 ticks) {
    puts_("\nRESULT "); puts_(what); puts_(" "); putn(N); puts_(" "); putn(ticks); puts_("\n");
}

void main_(void) {
    for (int i = 0; i < 4096; i++) buf[i] = (i % 64 == 63) ? '\n' : '.';
    u64 t = rdtime();
    for (int i = 0; i < N; i++) { while (!(UART[5] & 0x20)) ; UART[0] = buf[i & 4095]; }
    report("uart16550", rdtime() - t);
    t = rdtime();
    for (int i = 0; i < N; i++) putc_(buf[i & 4095]);
    report("sbi-putchar", rdtime() - t);
    struct sbiret r = ecall(0x10, 3, 0x4442434E, 0, 0);
    if (r.value) {
        t = rdtime();
        for (int i = 0; i < N; i += 4096) ecall(0x4442434E, 0, 4096, (u64)buf, 0);
        report("sbi-dbcn", rdtime() - t);
    }
    ecall(0x53525354, 0, 0, 0, 0);
    for (;;) asm volatile("wfi");
}
