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
#define EXT_DBCN 0x4442434E
#define EXT_SUSP 0x53555350
#define ERR_NOT_SUPPORTED (-2)
#define ERR_INVALID_PARAM (-3)
#define ERR_DENIED (-4)
#define ERR_ALREADY_AVAILABLE (-6)

volatile u64 timer_irqs, soft_irqs, second_ran, second_opaque, hold;
extern char stacks[];
void trap_entry(void);
void second_entry(void);
void resume_entry(void);
static void finish(void);

void trap(u64 cause) {
    if (cause == ((1UL << 63) | 5)) { timer_irqs++; ecall(EXT_TIME, 0, ~0UL, 0, 0, 0); }
    else if (cause == ((1UL << 63) | 1)) { soft_irqs++; asm volatile("csrc sip, %0" :: "r"(2)); }
    else { puts_("SBI-CHECK FAIL unexpected trap "); puthex(cause); putc_('\n'); failed++; }
}

void second(u64 hartid, u64 opaque) {
    second_opaque = opaque;
    second_ran = hartid;
    while (hold) asm volatile("nop");
    ecall(EXT_HSM, 1, 0, 0, 0, 0);  /* hart_stop: never returns */
    for (;;) asm volatile("wfi");
}

static u64 rdtime(void) { u64 t; asm volatile("rdtime %0" : "=r"(t)); return t; }
static int has(u64 ext) { return ecall(EXT_BASE, 3, ext, 0, 0, 0).value != 0; }
static u64 seed = 0x9E3779B97F4A7C15UL;
static u64 rnd(void) { seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17; return seed; }
static u64 boot_hart;

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

    /* HSM suspend: a retentive suspend returns once the armed timer is pending; a reserved type is refused */
    r = ecall(EXT_HSM, 3, 0x1, 0, 0, 0);
    check("hsm: a reserved suspend type is INVALID_PARAM", r.error == ERR_INVALID_PARAM, r.error);
    u64 until = rdtime() + 20000;
    ecall(EXT_TIME, 0, until, 0, 0, 0);
    r = ecall(EXT_HSM, 3, 0, 0, 0, 0);
    for (u64 i = 0; i < 100000000 && timer_irqs < 2; i++) asm volatile("nop");
    check("hsm: a retentive suspend returns when the timer fires", r.error == 0 && rdtime() >= until && timer_irqs == 2, timer_irqs);

    /* garbage: unknown functions of every extension and random extension ids are NOT_SUPPORTED, random
       harts INVALID_PARAM; nothing else happens */
    u64 bad = 0, known[] = {EXT_BASE, EXT_TIME, EXT_IPI, EXT_RFENCE, EXT_HSM, EXT_SRST};
    for (int i = 0; i < 6; i++)
        for (u64 f = 7; f < 40; f++) { r = ecall(known[i], f + (rnd() & 0xffff0), rnd(), rnd(), rnd(), rnd()); bad += r.error != ERR_NOT_SUPPORTED; }
    for (int i = 0; i < 300; i++) {
        u64 e = rnd() | 0x1000000000UL;
        r = ecall(e, rnd() & 7, rnd(), rnd(), rnd(), rnd()); bad += r.error != ERR_NOT_SUPPORTED;
        r = ecall(EXT_HSM, 0, 64 + (rnd() >> 1), rnd(), rnd(), 0); bad += r.error != ERR_INVALID_PARAM;
        r = ecall(EXT_IPI, 0, rnd() | 1, 64 + (rnd() >> 8), 0, 0); bad += r.error != ERR_INVALID_PARAM;
    }
    check("garbage calls get SBI errors", bad == 0, bad);

    /* DBCN and SUSP where the SBI has them (OpenSBI 1.3 and later; the VMM's) */
    if (has(EXT_DBCN)) {
        static const char msg[] = "SBI-DBCN written through the debug console\n";
        r = ecall(EXT_DBCN, 0, sizeof msg - 1, (u64)msg, 0, 0);
        check("dbcn: console_write", r.error == 0 && r.value == sizeof msg - 1, r.value);
        r = ecall(EXT_DBCN, 2, '\n', 0, 0, 0);
        check("dbcn: console_write_byte", r.error == 0, r.error);
        r = ecall(EXT_DBCN, 0, 16, 0x1000, 0, 0);
        check("dbcn: a buffer outside RAM is INVALID_PARAM", r.error == ERR_INVALID_PARAM, r.error);
        r = ecall(EXT_DBCN, 0, 16, (u64)msg, 1, 0);
        check("dbcn: a buffer above 4 GiB of address bits is INVALID_PARAM", r.error == ERR_INVALID_PARAM, r.error);
        static char buf[8];
        r = ecall(EXT_DBCN, 1, sizeof buf, (u64)buf, 0, 0);
        check("dbcn: console_read", r.error == 0 && r.value >= 0 && r.value <= 8, r.value);
    }
    if (has(EXT_SUSP)) {
        r = ecall(EXT_SUSP, 0, 1, (u64)resume_entry, 0, 0);
        check("susp: a reserved sleep type is INVALID_PARAM", r.error == ERR_INVALID_PARAM, r.error);
        if (second_ran == (hartid ^ 1)) {
            hold = 1;
            r = ecall(EXT_HSM, 0, hartid ^ 1, (u64)second_entry, 0, 0);
            r = ecall(EXT_SUSP, 0, 0, (u64)resume_entry, 0x5eed, 0);
            check("susp: refused while another hart runs", r.error == ERR_DENIED, r.error);
            hold = 0;
            for (u64 i = 0; i < 200000000; i++) if (ecall(EXT_HSM, 2, hartid ^ 1, 0, 0, 0).value == 1) break;
        }
        boot_hart = hartid;
        asm volatile("csrc sstatus, %0" :: "r"(2));
        ecall(EXT_TIME, 0, rdtime() + 20000, 0, 0, 0);
        r = ecall(EXT_SUSP, 0, 0, (u64)resume_entry, 0x5eed, 0);
        check("susp: system_suspend returned instead of resuming", 0, r.error);
    }
    finish();
}

void resumed(u64 hartid, u64 opaque) {
    u64 satp; asm volatile("csrr %0, satp" : "=r"(satp));
    check("susp: resumed at resume_addr with a0 = hart id, a1 = opaque", hartid == boot_hart && opaque == 0x5eed && satp == 0, opaque);
    asm volatile("csrw stvec, %0" :: "r"(trap_entry));
    asm volatile("csrs sstatus, %0" :: "r"(2));
    finish();
}

static void finish(void) {
    struct sbiret r;
    /* SRST: a bad type is refused, then the real shutdown */
    r = ecall(EXT_SRST, 0, 0x10, 0, 0, 0);
    check("srst: an unknown reset type is INVALID_PARAM", r.error == ERR_INVALID_PARAM, r.error);
    puts_("SBI-SUITE done "); putn(passed); puts_(" passed "); putn(failed); puts_(" failed\n");
    ecall(EXT_SRST, 0, 0, failed ? 1 : 0, 0, 0);
    puts_("SBI-CHECK FAIL system_reset returned\n");
    for (;;) asm volatile("wfi");
}
