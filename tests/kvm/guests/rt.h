/* The runtime of virtkit's x86-64 test kernels: port I/O, the serial console, the debug-exit port, an IDT
 * whose handlers are C functions, the local APIC, MSRs and CPUID. Each kernel defines kmain(); it returns
 * PASS or FAIL (or calls debug_exit), which the VM's exit status reports as (code << 1) | 1. */
#pragma once
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

#define PASS 0x10 /* exit status 33 */
#define FAIL 0x11 /* exit status 35 */

struct frame {
  u64 r11, r10, r9, r8, rdi, rsi, rbp, rbx, rdx, rcx, rax;
  u64 vector, error, rip, cs, rflags, rsp, ss;
};

static inline void outb(u16 p, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(p)); }
static inline void outl(u16 p, u32 v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(p)); }
static inline u8 inb(u16 p) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline u32 inl(u16 p) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline u32 mmio_read32(u64 a) { return *(volatile u32 *)a; }
static inline void mmio_write32(u64 a, u32 v) { *(volatile u32 *)a = v; }
static inline u64 read_cr2(void) { u64 v; __asm__ volatile("mov %%cr2, %0" : "=r"(v)); return v; }
static inline u64 read_cr3(void) { u64 v; __asm__ volatile("mov %%cr3, %0" : "=r"(v)); return v; }
static inline void write_cr3(u64 v) { __asm__ volatile("mov %0, %%cr3" ::"r"(v) : "memory"); }
static inline void invlpg(u64 a) { __asm__ volatile("invlpg (%0)" ::"r"(a) : "memory"); }
static inline u64 rdmsr(u32 i) { u32 lo, hi; __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(i)); return (u64)hi << 32 | lo; }
static inline void wrmsr(u32 i, u64 v) { __asm__ volatile("wrmsr" ::"c"(i), "a"((u32)v), "d"((u32)(v >> 32))); }
static inline void cpuid(u32 leaf, u32 sub, u32 r[4]) {
  __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}
static inline void sti(void) { __asm__ volatile("sti"); }
static inline void cli(void) { __asm__ volatile("cli"); }
static inline void hlt(void) { __asm__ volatile("hlt"); }
static inline void pause(void) { __asm__ volatile("pause"); }

void puts(const char *s);
void puthex(u64 v);
void putdec(u64 v);
void debug_exit(u32 code) __attribute__((noreturn));
void check(int ok, const char *what);
extern int failures;

typedef void (*handler_t)(struct frame *f);
void idt_init(void);
void set_handler(int vector, handler_t h);
void set_user_gate(int vector);
void *memcpy(void *d, const void *s, u64 n);
void *memset(void *d, int c, u64 n);
int memcmp(const void *a, const void *b, u64 n);
const char *cmdline(void);
u64 cmdline_hex(const char *key, u64 dflt);

#define LAPIC 0xFEE00000UL
static inline u32 lapic_read(u32 r) { return mmio_read32(LAPIC + r); }
static inline void lapic_write(u32 r, u32 v) { mmio_write32(LAPIC + r, v); }
void lapic_enable(void);

extern u32 mb_magic, mb_info;
extern char trampoline_start[], trampoline_end[];
