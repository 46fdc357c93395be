/* Exit round trips: `count` writes to I/O port `port` (each one a VM exit the VMM answers), timed with
 * rdtsc in the guest. count=0x... port=0x... on the command line. */
#include "rt.h"

static inline u64 rdtsc(void) { u32 lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return (u64)hi << 32 | lo; }

int kmain(void) {
  u64 n = cmdline_hex("count", 100000), port = cmdline_hex("port", 0x80);
  outb(port, 0); /* (the first one pays for anything lazy) */
  u64 t0 = rdtsc();
  for (u64 i = 0; i < n; i++)
    outb(port, (u8)i);
  u64 t1 = rdtsc();
  puts("exits ");
  putdec(n);
  puts(" cycles ");
  putdec(t1 - t0);
  puts("\n");
  return PASS;
}
