/* rdmsr/wrmsr: a value written to IA32_SYSENTER_ESP reads back; the TSC moves; an MSR that does not exist
 * raises #GP (vector 13), which the handler survives. */
#include "rt.h"

volatile u64 resume;
volatile int gp_seen;

static void on_gp(struct frame *f) {
  gp_seen++;
  f->rip = resume;
}

int kmain(void) {
  idt_init();
  set_handler(13, on_gp);
  wrmsr(0x175, 0x12345678ABCUL);
  check(rdmsr(0x175) == 0x12345678ABCUL, "IA32_SYSENTER_ESP written and read back");
  u64 t0 = rdmsr(0x10);
  for (volatile int i = 0; i < 1000; i++)
    ;
  check(rdmsr(0x10) > t0, "IA32_TIME_STAMP_COUNTER moves");
  __asm__ volatile("lea 1f(%%rip), %%rax; mov %%rax, resume(%%rip); mov $0xDEADBEEF, %%ecx; rdmsr; 1:" ::: "rax", "rcx", "rdx", "memory");
  check(gp_seen == 1, "rdmsr of a missing MSR raises #GP");
  return failures ? FAIL : PASS;
}
