/* A virtio-blk read through a virtio-mmio transport (version 2, split virtqueue, polled): sector 0 of the
 * disk must start with "VIRTKIT-BLOCK-TEST". virtio_base/virtio_stride on the command line say where the
 * transports are (virtkit's microVM: 0xd0000000, 4 KiB apart; QEMU's microvm: 0xfeb00000, 512 apart). */
#include "rt.h"

#define QSIZE 8
struct desc { u64 addr; u32 len; u16 flags, next; };
static struct desc ring_desc[QSIZE] __attribute__((aligned(4096)));
static struct { u16 flags, idx, ring[QSIZE], event; } avail __attribute__((aligned(4096)));
static struct { u16 flags, idx; struct { u32 id, len; } ring[QSIZE]; u16 event; } used __attribute__((aligned(4096)));
static struct { u32 type, reserved; u64 sector; } req;
static u8 data[512] __attribute__((aligned(512)));
static volatile u8 status = 0xFF;

static void w(u64 t, u32 r, u32 v) { mmio_write32(t + r, v); }
static u32 r(u64 t, u32 reg) { return mmio_read32(t + reg); }

int kmain(void) {
  u64 base = cmdline_hex("virtio_base", 0xD0000000UL), stride = cmdline_hex("virtio_stride", 0x1000), t = 0;
  for (int i = 0; i < 32; i++) {
    u64 c = base + i * stride;
    if (r(c, 0) == 0x74726976 && r(c, 8) == 2) {
      t = c;
      break;
    }
  }
  check(t != 0, "a virtio-blk transport");
  if (!t)
    return FAIL;
  w(t, 0x70, 0);     /* reset */
  w(t, 0x70, 1 | 2); /* ACKNOWLEDGE | DRIVER */
  w(t, 0x24, 1);
  w(t, 0x20, 1);     /* VIRTIO_F_VERSION_1 */
  w(t, 0x24, 0);
  w(t, 0x20, 0);
  w(t, 0x70, 1 | 2 | 8); /* FEATURES_OK */
  check(r(t, 0x70) & 8, "the device accepts the features");
  u64 capacity = r(t, 0x100) | (u64)r(t, 0x104) << 32;
  puts("capacity ");
  putdec(capacity);
  puts(" sectors\n");
  w(t, 0x30, 0);
  check(r(t, 0x34) >= QSIZE, "queue 0 holds 8 descriptors");
  w(t, 0x38, QSIZE);
  w(t, 0x80, (u32)(u64)ring_desc);
  w(t, 0x84, 0);
  w(t, 0x90, (u32)(u64)&avail);
  w(t, 0x94, 0);
  w(t, 0xA0, (u32)(u64)&used);
  w(t, 0xA4, 0);
  w(t, 0x44, 1);
  w(t, 0x70, 1 | 2 | 8 | 4); /* DRIVER_OK */
  req.type = 0;
  req.sector = 0;
  ring_desc[0] = (struct desc){(u64)&req, sizeof req, 1, 1};
  ring_desc[1] = (struct desc){(u64)data, sizeof data, 1 | 2, 2};
  ring_desc[2] = (struct desc){(u64)&status, 1, 2, 0};
  avail.ring[0] = 0;
  __asm__ volatile("mfence" ::: "memory");
  avail.idx = 1;
  __asm__ volatile("mfence" ::: "memory");
  w(t, 0x50, 0); /* notify queue 0 */
  for (int i = 0; i < 100000000 && *(volatile u16 *)&used.idx != 1; i++)
    pause();
  check(*(volatile u16 *)&used.idx == 1, "the request came back in the used ring");
  check(status == 0, "status VIRTIO_BLK_S_OK");
  check(!memcmp(data, "VIRTKIT-BLOCK-TEST", 18), "sector 0 holds the disk's first bytes");
  data[18] = 0;
  puts("sector 0: ");
  puts((char *)data);
  puts("\n");
  return failures ? FAIL : PASS;
}
