/* Port I/O and MMIO exits with values both ways: the 16550's scratch register and CMOS RAM on ports, a
 * virtio-mmio transport's registers in memory space (its magic read; a feature-select write whose effect
 * is read back). virtio_base/virtio_stride on the command line say where the transports are. */
#include "rt.h"

int kmain(void) {
  outb(0x3FF, 0xA5);
  check(inb(0x3FF) == 0xA5, "16550 scratch register: out then in");
  outb(0x3FF, 0x5A);
  check(inb(0x3FF) == 0x5A, "16550 scratch register: a second value");
  outb(0x70, 0x40);
  outb(0x71, 0x3C);
  outb(0x70, 0x41);
  outb(0x71, 0xC3);
  outb(0x70, 0x40);
  check(inb(0x71) == 0x3C, "CMOS RAM byte 0x40 read back");
  u64 base = cmdline_hex("virtio_base", 0xD0000000UL), stride = cmdline_hex("virtio_stride", 0x1000);
  int found = 0;
  for (int i = 0; i < 32 && !found; i++) {
    u64 t = base + i * stride;
    if (mmio_read32(t) != 0x74726976 || mmio_read32(t + 8) == 0)
      continue;
    found = 1;
    check(mmio_read32(t + 4) == 2, "virtio-mmio version 2");
    mmio_write32(t + 0x14, 1); /* DeviceFeaturesSel = 1: the high word */
    u32 hi = mmio_read32(t + 0x10);
    mmio_write32(t + 0x14, 0);
    u32 lo = mmio_read32(t + 0x10);
    check(hi & 1, "device features, high word (selected by a write): VIRTIO_F_VERSION_1");
    check(lo != hi, "the low word differs: the select write took effect");
  }
  check(found, "a virtio-mmio transport with a device (magic 'virt')");
  return failures ? FAIL : PASS;
}
