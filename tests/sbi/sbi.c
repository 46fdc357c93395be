/* An SBI conformance probe: an S-mode program that calls every SBI extension it finds and checks return
 * codes, bad arguments, HSM state changes and timer and IPI delivery; prints one line per check and ends
 * with the system reset extension. */
typedef unsigned long u64;
typedef long s64;
struct sbiret { s64 error; s64 value; };

static struct sbiret ecall(u64 ext, u64 fid, u64 a0, u64 a1, u64 a2, u64 a3) {
    register u64 r0 asm("a0") = a0, r1 asm("a1") = a1, r2 asm("a2") = a2, r3 asm("a3") = a3;
    register u64 r6 asm("a6") = fid, r7 asm("a7") = ext;
    asm volatile("ecall" : "+r"(r0), "+r"(r1) : "r"(r2), "r"(r3), "r"(r6), "r"(r7) : "memory");
    struct sbiret r = {(s64)r0, (s64)r1};
    return r;
}

static void putc_(char c) { register u64 a0 asm("a0") = c, a7 asm("a7") = 1; asm volatile("ecall" : "+r"(a0) : "r"(a7) : "memory", "a1"); }
static void puts_(const char *s) { while (*s) putc_(*s++); }
static void putn(s64 v) {
    char b[24]; int i = 0; u64 u = v < 0 ? -(u64)v : (u64)v;
    if (v < 0) putc_('-');
    do { b[i++] = '0' + u % 10; u /= 10; } while (u);
    while (i) putc_(b[--i]);
}
static void puthex(u64 v) { puts_("0x"); for (int s = 60; s >= 0; s -= 4) putc_("0123456789abcdef"[(v >> s) & 15]); }

static int passed, failed;
static void check(const char *what, int ok, s64 got) {
    puts_(ok ? "SBI-CHECK ok " : "SBI-CHECK FAIL "); puts_(what); puts_(" ("); putn(got); puts_(")\n");
    if (ok) passed++; else failed++;
}

#define EXT_BASE 0x10
#define EXT_TIME 0x54494D45
#define EXT_IPI 0x735049
#define EXT_RFENCE 0x52464E43
#define EXT_HSM 0x48534D
#define EXT_SRST 0x53525354
#define ERR_NOT_SUPPORTED (-2)
#define ERR_INVALID_PARAM (-3)
#define ERR_ALREADY_AVAILABLE (-6)

volatile u64 timer_irqs, soft_irqs, second_ran, second_opaque;
extern char stacks[];
void trap_entry(void);
void second_entry(void);

void trap(u64 cause) {
    if (cause == ((1UL << 63) | 5)) { timer_irqs++; ecall(EXT_TIME, 0, ~0UL, 0, 0, 0); }
    else if (cause == ((1UL << 63) | 1)) { soft_irqs++; asm volatile("csrc sip, %0" :: "r"(2)); }
    else { puts_("SBI-CHECK FAIL unexpected trap "); puthex(cause); putc_('\n'); failed++; }
}

void second(u64 hartid, u64 opaque) {
    second_opaque = opaque;
    second_ran = hartid;
    ecall(EXT_HSM, 1, 0, 0, 0, 0);  /* hart_stop: never returns */
    for (;;) asm volatile("wfi");
}

static u64 rdtime(void) { u64 t; asm volatile("rdtime %0" : "=r"(t)); return t; }

void main_(u64 hartid) {
    struct sbiret r;
    puts_("SBI-SUITE start\n");
    r = ecall(EXT_BASE, 0, 0, 0, 0, 0);
    check("base: spec version 1.0 or later", r.error == 0 && (r.value >> 24) >= 1, r.value);
    r = ecall(EXT_BASE, 1, 0, 0, 0, 0);
    check("base: implementation id", r.error == 0, r.value);
    r = ecall(EXT_BASE, 2, 0, 0, 0, 0);
    check("base: implementation version", r.error == 0, r.value);
    u64 exts[] = {EXT_TIME, EXT_IPI, EXT_RFENCE, EXT_HSM, EXT_SRST};
    const char *names[] = {"base: probe TIME", "base: probe IPI", "base: probe RFENCE", "base: probe HSM", "base: probe SRST"};
    for (int i = 0; i < 5; i++) { r = ecall(EXT_BASE, 3, exts[i], 0, 0, 0); check(names[i], r.error == 0 && r.value != 0, r.value); }
    r = ecall(EXT_BASE, 3, 0x0BADBEEF, 0, 0, 0);
    check("base: probe of an unknown extension is 0", r.error == 0 && r.value == 0, r.value);
    for (u64 f = 4; f <= 6; f++) { r = ecall(EXT_BASE, f, 0, 0, 0, 0); check("base: machine ids", r.error == 0, r.value); }
    r = ecall(EXT_BASE, 99, 0, 0, 0, 0);
    check("base: unknown function is NOT_SUPPORTED", r.error == ERR_NOT_SUPPORTED, r.error);
    r = ecall(0x0BADBEEF, 0, 0, 0, 0, 0);
    check("an unknown extension is NOT_SUPPORTED", r.error == ERR_NOT_SUPPORTED, r.error);

    /* TIME: a timer interrupt arrives after set_timer */
    asm volatile("csrw stvec, %0" :: "r"(trap_entry));
    asm volatile("csrs sie, %0" :: "r"((1 << 5) | (1 << 1)));
    asm volatile("csrs sstatus, %0" :: "r"(2));
    r = ecall(EXT_TIME, 0, rdtime() + 20000, 0, 0, 0);
    check("time: set_timer", r.error == 0, r.error);
    for (u64 i = 0; i < 200000000 && !timer_irqs; i++) asm volatile("nop");
    check("time: the timer interrupt arrives", timer_irqs == 1, timer_irqs);

    /* IPI to ourselves */
    r = ecall(EXT_IPI, 0, 1, hartid, 0, 0);
    check("ipi: send_ipi to self", r.error == 0, r.error);
    for (u64 i = 0; i < 100000000 && !soft_irqs; i++) asm volatile("nop");
    check("ipi: the software interrupt arrives", soft_irqs == 1, soft_irqs);
    r = ecall(EXT_IPI, 0, 1, hartid + 1000, 0, 0);
    check("ipi: a hart mask beyond the harts is INVALID_PARAM", r.error == ERR_INVALID_PARAM, r.error);

    /* RFENCE */
    r = ecall(EXT_RFENCE, 0, 1, hartid, 0, 0);
    check("rfence: remote_fence_i", r.error == 0, r.error);
    r = ecall(EXT_RFENCE, 1, 1, hartid, 0, ~0UL);
    check("rfence: remote_sfence_vma", r.error == 0, r.error);
    r = ecall(EXT_RFENCE, 0, 1, hartid + 1000, 0, 0);
    check("rfence: a bad hart mask is INVALID_PARAM", r.error == ERR_INVALID_PARAM, r.error);

    /* HSM */
    r = ecall(EXT_HSM, 2, hartid, 0, 0, 0);
    check("hsm: this hart is STARTED", r.error == 0 && r.value == 0, r.value);
    r = ecall(EXT_HSM, 2, 1000, 0, 0, 0);
    check("hsm: status of a hart that does not exist is INVALID_PARAM", r.error == ERR_INVALID_PARAM, r.error);
    r = ecall(EXT_HSM, 0, hartid, (u64)second_entry, 0, 0);
    check("hsm: starting a started hart is ALREADY_AVAILABLE", r.error == ERR_ALREADY_AVAILABLE, r.error);
    u64 other = hartid ^ 1;
    r = ecall(EXT_HSM, 2, other, 0, 0, 0);
    if (r.error == 0) {
        check("hsm: the other hart is STOPPED", r.value == 1, r.value);
        r = ecall(EXT_HSM, 0, other, (u64)second_entry, 0x5eed, 0);
        check("hsm: hart_start", r.error == 0, r.error);
        for (u64 i = 0; i < 200000000 && second_opaque != 0x5eed; i++) asm volatile("nop");
        check("hsm: the other hart ran with a0 = its id and a1 = opaque", second_opaque == 0x5eed && second_ran == other, second_ran);
        s64 st = -1;
        for (u64 i = 0; i < 200000000; i++) { r = ecall(EXT_HSM, 2, other, 0, 0, 0); st = r.value; if (st == 1) break; }
        check("hsm: after hart_stop it is STOPPED again", st == 1, st);
    }

    /* SRST: a bad type is refused, then the real shutdown */
    r = ecall(EXT_SRST, 0, 0x10, 0, 0, 0);
    check("srst: an unknown reset type is INVALID_PARAM", r.error == ERR_INVALID_PARAM, r.error);
    puts_("SBI-SUITE done "); putn(passed); puts_(" passed "); putn(failed); puts_(" failed\n");
    ecall(EXT_SRST, 0, 0, failed ? 1 : 0, 0, 0);
    puts_("SBI-CHECK FAIL system_reset returned\n");
    for (;;) asm volatile("wfi");
}
