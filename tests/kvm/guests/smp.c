/* SMP start: the BSP copies the real-mode trampoline to 0x8000 and wakes the processor with APIC ID 1 by
 * INIT and two startup IPIs (vector 0x08); the AP reaches long mode and reports its APIC ID. */
#include "rt.h"

volatile u32 ap_id = 0xFFFFFFFF;
volatile int ap_alive;

void ap_main(void) {
  ap_id = lapic_read(0x20) >> 24;
  ap_alive = 1;
  for (;;)
    hlt();
}

static void wait_icr(void) {
  for (int i = 0; i < 1000000 && (lapic_read(0x300) & (1 << 12)); i++)
    pause();
}

static void delay(int n) {
  for (volatile int i = 0; i < n; i++)
    pause();
}

int kmain(void) {
  memcpy((void *)0x8000, trampoline_start, trampoline_end - trampoline_start);
  lapic_enable();
  check((lapic_read(0x20) >> 24) == 0, "the BSP has APIC ID 0");
  lapic_write(0x310, 1 << 24);
  lapic_write(0x300, 0x4500); /* INIT, assert */
  wait_icr();
  delay(10000);
  for (int i = 0; i < 2; i++) {
    lapic_write(0x310, 1 << 24);
    lapic_write(0x300, 0x4600 | 0x08); /* STARTUP at 0x8000 */
    wait_icr();
    delay(2000);
  }
  for (int i = 0; i < 100000000 && !ap_alive; i++)
    pause();
  check(ap_alive, "the AP came up in long mode");
  check(ap_id == 1, "the AP has APIC ID 1");
  return failures ? FAIL : PASS;
}
