/* A triple fault: an empty IDT, then int3 (#GP -> #DF -> shutdown). */
#include "rt.h"

int kmain(void) {
  puts("about to triple-fault\n");
  struct { u16 limit; u64 base; } __attribute__((packed)) none = {0, 0};
  __asm__ volatile("lidt %0; int3" ::"m"(none));
  return FAIL;
}
