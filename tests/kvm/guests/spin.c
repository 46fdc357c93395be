/* A loop with interrupts off: only the host can end this VM. */
#include "rt.h"

int kmain(void) {
  puts("spinning with interrupts off\n");
  cli();
  for (;;)
    __asm__ volatile("" ::: "memory");
}
