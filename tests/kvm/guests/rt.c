#include "rt.h"

int failures;

static void serial_putc(char c) {
  for (int i = 0; i < 100000 && !(inb(0x3F8 + 5) & 0x20); i++)
    pause();
  outb(0x3F8, c);
}

void puts(const char *s) {
  for (; *s; s++) {
    if (*s == '\n')
      serial_putc('\r');
    serial_putc(*s);
  }
}

void puthex(u64 v) {
  char b[19] = "0x";
  int n = 2;
  int started = 0;
  for (int i = 60; i >= 0; i -= 4) {
    int d = (v >> i) & 15;
    if (d || started || i == 0) {
      b[n++] = "0123456789abcdef"[d];
      started = 1;
    }
  }
  b[n] = 0;
  puts(b);
}

void putdec(u64 v) {
  char b[21];
  int n = 20;
  b[n] = 0;
  do {
    b[--n] = '0' + v % 10;
    v /= 10;
  } while (v);
  puts(b + n);
}

void debug_exit(u32 code) {
  outl(0xF4, code);
  for (;;) {
    cli();
    hlt();
  }
}

void check(int ok, const char *what) {
  puts(ok ? "ok: " : "FAILED: ");
  puts(what);
  puts("\n");
  if (!ok)
    failures++;
}

void *memcpy(void *d, const void *s, u64 n) {
  u8 *dd = d;
  const u8 *ss = s;
  while (n--)
    *dd++ = *ss++;
  return d;
}

void *memset(void *d, int c, u64 n) {
  u8 *dd = d;
  while (n--)
    *dd++ = c;
  return d;
}

int memcmp(const void *a, const void *b, u64 n) {
  const u8 *x = a, *y = b;
  for (; n; n--, x++, y++)
    if (*x != *y)
      return *x - *y;
  return 0;
}

/* -- the IDT: 256 gates, the stubs of boot.S for the vectors the tests use ---------------------------- */
struct gate {
  u16 off0, sel;
  u8 ist, type;
  u16 off1;
  u32 off2, zero;
} __attribute__((packed));

static struct gate idt[256] __attribute__((aligned(16)));
static handler_t handlers[256];

#define STUBS X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15) X(16) X(17) X(18) X(19) X(32) X(33) X(36) X(64) X(255)
#define X(n) extern char isr##n[];
STUBS
#undef X

static void gate(int v, void *fn) {
  u64 a = (u64)fn;
  idt[v] = (struct gate){(u16)a, 0x08, 0, 0x8E, (u16)(a >> 16), (u32)(a >> 32), 0};
}

void idt_init(void) {
#define X(n) gate(n, isr##n);
  STUBS
#undef X
  struct {
    u16 limit;
    u64 base;
  } __attribute__((packed)) p = {sizeof(idt) - 1, (u64)idt};
  __asm__ volatile("lidt %0" ::"m"(p));
}

void set_handler(int vector, handler_t h) { handlers[vector] = h; }

void set_user_gate(int vector) { idt[vector].type = 0xEE; /* DPL 3: `int vector` from ring 3 */ }

void trap(struct frame *f) {
  handler_t h = handlers[f->vector & 255];
  if (h) {
    h(f);
    return;
  }
  puts("unexpected exception ");
  putdec(f->vector);
  puts(" at rip ");
  puthex(f->rip);
  puts(" error ");
  puthex(f->error);
  puts(" cr2 ");
  puthex(read_cr2());
  puts("\n");
  debug_exit(FAIL);
}

void lapic_enable(void) {
  wrmsr(0x1B, rdmsr(0x1B) | (1 << 11)); /* IA32_APIC_BASE: global enable */
  lapic_write(0xF0, 0x100 | 0xFF);        /* SVR: enabled, spurious vector 255 */
  lapic_write(0x80, 0);                   /* TPR: accept everything */
}

/* the Multiboot command line: "key=0x..." values the host passes (QEMU's -append, virtkit's --append) */
const char *cmdline(void) {
  u32 *info = (u32 *)(u64)mb_info;
  if (mb_magic != 0x2BADB002 || !(info[0] & 4) || !info[4])
    return "";
  return (const char *)(u64)info[4];
}

u64 cmdline_hex(const char *key, u64 dflt) {
  const char *s = cmdline();
  u64 klen = 0;
  while (key[klen])
    klen++;
  for (; *s; s++) {
    if ((s == cmdline() || s[-1] == ' ') && !memcmp(s, key, klen) && s[klen] == '=') {
      const char *p = s + klen + 1;
      u64 v = 0;
      if (p[0] == '0' && p[1] == 'x')
        p += 2;
      for (;; p++) {
        int d = *p >= '0' && *p <= '9' ? *p - '0' : *p >= 'a' && *p <= 'f' ? *p - 'a' + 10 : -1;
        if (d < 0)
          break;
        v = v * 16 + d;
      }
      return v;
    }
  }
  return dflt;
}

__attribute__((weak)) void ap_main(void) {
  for (;;)
    hlt();
}
