/* MMIO where no device is: reads and writes in the hole below the virtio slots and beyond them. */
#include "rt.h"

int kmain(void) {
  u32 a = mmio_read32(0xE0000000UL);
  mmio_write32(0xE0000000UL, 0x12345678);
  u32 b = mmio_read32(0xC8000000UL);
  puts("hole reads ");
  puthex(a);
  puts(" ");
  puthex(b);
  puts("\n");
  return PASS;
}
