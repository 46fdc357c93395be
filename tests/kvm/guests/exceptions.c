/* The IDT: a divide error (vector 0) and page faults (vector 14) with the faulting address in CR2 and the
 * error code the CPU pushes (0: read of a page not present; 2: a write). Each handler resumes after the
 * faulting instruction. */
#include "rt.h"

volatile u64 resume, pf_cr2, pf_error;
volatile int de_seen, pf_seen;

static void on_de(struct frame *f) {
  de_seen++;
  f->rip = resume;
}

static void on_pf(struct frame *f) {
  pf_seen++;
  pf_cr2 = read_cr2();
  pf_error = f->error;
  f->rip = resume;
}

int kmain(void) {
  idt_init();
  set_handler(0, on_de);
  set_handler(14, on_pf);
  __asm__ volatile("lea 1f(%%rip), %%rax; mov %%rax, resume(%%rip);"
                   "xor %%edx, %%edx; mov $1, %%eax; xor %%ecx, %%ecx; div %%ecx; 1:" ::: "rax", "rcx", "rdx", "memory");
  check(de_seen == 1, "divide error caught (vector 0)");
  u64 addr = 0x140000000UL; /* 5 GiB: beyond the 4 GiB the boot page tables map */
  __asm__ volatile("lea 1f(%%rip), %%rax; mov %%rax, resume(%%rip); mov (%0), %%rax; 1:" ::"r"(addr) : "rax", "memory");
  check(pf_seen == 1, "page fault on a read caught (vector 14)");
  check(pf_cr2 == addr, "CR2 holds the faulting address");
  check(pf_error == 0, "error code 0: a supervisor read of a page not present");
  puts("cr2 ");
  puthex(pf_cr2);
  puts(" error ");
  puthex(pf_error);
  puts("\n");
  __asm__ volatile("lea 1f(%%rip), %%rax; mov %%rax, resume(%%rip); movq $7, 8(%0); 1:" ::"r"(addr) : "rax", "memory");
  check(pf_seen == 2 && pf_cr2 == addr + 8, "page fault on a write, CR2 right");
  check(pf_error == 2, "error code 2: a supervisor write of a page not present");
  return failures ? FAIL : PASS;
}
