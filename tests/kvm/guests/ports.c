/* Garbage to every port (but the debug exit and the i8042's reset command port): byte and dword writes and
 * reads of 0..0xffff; then the 16550 is set back to 8N1 and the kernel reports that it survived. */
#include "rt.h"

int kmain(void) {
  cli();
  u32 x = 0x12345678;
  for (u32 p = 0; p < 0x10000; p++) {
    if ((p >= 0xF4 && p <= 0xF7) || p == 0x64)
      continue;
    x = x * 1103515245 + 12345;
    outb(p, x >> 16);
    (void)inb(p);
    outl(p & ~3, x);
    (void)inl(p & ~3);
  }
  outb(0x3F8 + 3, 0x03); /* LCR: 8N1, DLAB off */
  outb(0x3F8 + 1, 0x00); /* IER: no interrupts */
  outb(0x3F8 + 4, 0x03); /* MCR: DTR, RTS, no loopback */
  puts("survived garbage on every port\n");
  return PASS;
}
