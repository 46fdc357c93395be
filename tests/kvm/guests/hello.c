/* Serial output, the Multiboot handshake and memory map, the command line: the smallest kernel. */
#include "rt.h"

int kmain(void) {
  puts("hello from an x86-64 guest\n");
  u32 *info = (u32 *)(u64)mb_info;
  check(mb_magic == 0x2BADB002, "Multiboot magic in eax");
  check(info[0] & 1 && info[2] >= 1024, "memory sizes in the Multiboot information");
  check(info[0] & (1 << 6) && info[11] >= 24, "a memory map");
  puts("command line: ");
  puts(cmdline());
  puts("\n");
  return failures ? FAIL : PASS;
}
