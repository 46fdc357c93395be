/* CPUID as configured: the guest sees the x2APIC bit the host side asked for (x2apic=0x1 or 0x0 on the
 * command line says which to expect), and the vendor and hypervisor leaves. */
#include "rt.h"

int kmain(void) {
  u32 r[4];
  cpuid(0, 0, r);
  char vendor[13];
  memcpy(vendor, &r[1], 4);
  memcpy(vendor + 4, &r[3], 4);
  memcpy(vendor + 8, &r[2], 4);
  vendor[12] = 0;
  puts("vendor ");
  puts(vendor);
  puts("\n");
  check(r[0] >= 1, "leaf 0: leaf 1 exists");
  cpuid(1, 0, r);
  int x2apic = (r[2] >> 21) & 1;
  puts("x2apic ");
  putdec(x2apic);
  puts("\n");
  check(x2apic == (int)cmdline_hex("x2apic", 2), "CPUID.1:ECX[21] (x2APIC) as configured");
  check((r[2] >> 31) & 1, "CPUID.1:ECX[31]: a hypervisor is present");
  cpuid(0x40000000, 0, r);
  char sig[13];
  memcpy(sig, &r[1], 4);
  memcpy(sig + 4, &r[2], 4);
  memcpy(sig + 8, &r[3], 4);
  sig[12] = 0;
  puts("hypervisor ");
  puts(sig);
  puts("\n");
  return failures ? FAIL : PASS;
}
