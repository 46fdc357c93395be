/* A ring-3 CPU-bound workload: the kernel drops to user mode (iretq to ring 3 on pages marked user) and
 * runs work() (work.c, the same source as the host's compute_native.c), timing it with rdtsc, and prints
 * the result and the cycles (back in ring 0, see user_main). The number of rounds
 * is on the command line (rounds=0x...). */
#include "rt.h"

struct tss { u32 r0; u64 rsp0, rsp1, rsp2; u64 r1; u64 ist[7]; u64 r2; u16 r3, iomap; } __attribute__((packed));
static struct tss tss __attribute__((aligned(16)));
static u64 gdt[7] __attribute__((aligned(16)));
static u8 user_stack[16384] __attribute__((aligned(4096)));
static u8 kstack[16384] __attribute__((aligned(16)));
volatile u64 result;

u64 work(u64 rounds);
static inline u64 rdtsc(void) { u32 lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return (u64)hi << 32 | lo; }

/* runs in ring 3; an exception (ud2) brings the result and the cycles back to ring 0 (rdi, rsi): kvm_pvm
 * delivers exceptions from ring 3 to the guest's IDT as hardware does, while it answers `int N` with #UD
 * and runs a `syscall` handler without its ring-0 privileges */
void user_main(u64 rounds) {
  u64 t0 = rdtsc();
  u64 r = work(rounds);
  u64 t1 = rdtsc();
  __asm__ volatile("ud2" ::"D"(r), "S"(t1 - t0) : "memory");
  for (;;)
    ;
}

static void on_ud(struct frame *f) {
  puts("result ");
  puthex(f->rdi & 0xFFFFFFFF);
  puts(" cycles ");
  putdec(f->rsi);
  puts("\n");
  debug_exit((f->cs & 3) == 3 ? PASS : FAIL);
}

__asm__(".text\n.globl user_entry\nuser_entry:\n  mov %rbx, %rdi\n  call user_main\n1: jmp 1b\n");
extern char user_entry[];

int kmain(void) {
  u64 rounds = cmdline_hex("rounds", 0x1000000);
  idt_init();
  set_handler(6, on_ud);
  u64 *pml4 = (u64 *)(read_cr3() & ~0xFFFUL);
  u64 *pdpt = (u64 *)(pml4[0] & ~0xFFFUL);
  pml4[0] |= 4;
  for (int i = 0; i < 4; i++) {
    pdpt[i] |= 4;
    u64 *pd = (u64 *)(pdpt[i] & ~0xFFFUL);
    for (int j = 0; j < 512; j++)
      pd[j] |= 4;
  }
  write_cr3(read_cr3());
  gdt[1] = 0x00AF9A000000FFFFUL;  /* 0x08 kernel code */
  gdt[2] = 0x00CF92000000FFFFUL;  /* 0x10 kernel data */
  gdt[3] = 0x00CFF2000000FFFFUL;  /* 0x18 user data (dpl 3) */
  gdt[4] = 0x00AFFA000000FFFFUL;  /* 0x20 user code (dpl 3, 64-bit) */
  u64 tb = (u64)&tss;
  tss.rsp0 = (u64)kstack + sizeof kstack;
  tss.iomap = sizeof tss;
  gdt[5] = (sizeof tss - 1) | (tb & 0xFFFFFF) << 16 | 0x89UL << 40 | ((tb >> 24) & 0xFF) << 56;
  gdt[6] = tb >> 32;
  struct { u16 l; u64 b; } __attribute__((packed)) g = {sizeof gdt - 1, (u64)gdt};
  __asm__ volatile("lgdt %0; mov $0x28, %%ax; ltr %%ax" ::"m"(g) : "rax");
  puts("entering ring 3\n");
  __asm__ volatile("push $0x1B\n push %0\n push $0x0002\n push $0x23\n push %1\n mov %2, %%rbx\n iretq"
                   ::"r"((u64)user_stack + sizeof user_stack), "r"((u64)user_entry), "r"(rounds) : "memory");
  return FAIL;
}
