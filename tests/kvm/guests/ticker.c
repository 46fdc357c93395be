/* Runs forever: a LAPIC periodic timer wakes the CPU from HLT; every 20th tick it prints the count. What a
 * snapshot must carry over: RAM (the count), the registers, the LAPIC's timer and the IDT. */
#include "rt.h"

volatile u64 ticks;

static void on_timer(struct frame *f) {
  ticks++;
  lapic_write(0xB0, 0);
}

int kmain(void) {
  idt_init();
  outb(0x21, 0xFF);
  outb(0xA1, 0xFF);
  set_handler(64, on_timer);
  lapic_enable();
  lapic_write(0x3E0, 0xB);
  lapic_write(0x320, 64 | (1 << 17));
  lapic_write(0x380, 5000000);
  sti();
  u64 shown = 0;
  for (;;) {
    hlt();
    if (ticks / 20 != shown) {
      shown = ticks / 20;
      puts("tick ");
      putdec(ticks);
      puts("\n");
    }
  }
}
