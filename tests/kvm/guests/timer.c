/* The local APIC timer: periodic interrupts on vector 64, each acknowledged with an EOI, while the CPU
 * halts between them. */
#include "rt.h"

volatile int ticks;

static void on_timer(struct frame *f) {
  ticks++;
  lapic_write(0xB0, 0); /* EOI */
}

int kmain(void) {
  idt_init();
  outb(0x21, 0xFF); /* the 8259 PICs masked: a BIOS may have left the PIT ticking on IRQ 0 */
  outb(0xA1, 0xFF);
  set_handler(64, on_timer);
  lapic_enable();
  lapic_write(0x3E0, 0xB);                /* divide by 1 */
  lapic_write(0x320, 64 | (1 << 17));     /* LVT timer: vector 64, periodic */
  lapic_write(0x380, 2000000);            /* initial count */
  sti();
  for (int i = 0; i < 100000 && ticks < 5; i++)
    hlt();
  cli();
  lapic_write(0x320, 1 << 16); /* masked */
  puts("ticks: ");
  putdec(ticks);
  puts("\n");
  check(ticks >= 5, "five LAPIC timer interrupts, each after a HLT");
  return failures ? FAIL : PASS;
}
