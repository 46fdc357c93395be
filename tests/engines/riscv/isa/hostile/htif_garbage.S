/* Hostile guest: unknown HTIF device/command, a syscall block outside RAM, a console write from
 * an unaligned tohost value; the emulator must survive them and still honour the final exit. */
#include "test.h"
TEST_BEGIN
  la t1, tohost
  li t0, 0x5577000000001234            /* device 0x55, command 0x77 */
  sd t0, 0(t1)
  li t0, 0x0000001000000000            /* device 0, command 0, even payload: syscall block at 64 GiB */
  sd t0, 0(t1)
  li t0, 0xffffffffffffffff            /* all ones */
  sd t0, 0(t1)
  li a0, 0
  j exit
TEST_END
