/* Sv39 paging: 3-level walks, 2 MiB / 1 GiB superpages and misaligned ones, R/W/X/U permissions,
 * SUM, MXR, A/D (fault or hardware update, both allowed), stval, SFENCE.VMA, canonical addresses. */
#define ROOT_TABLE root_table
#define L2_TABLE root_table
#define SATP_VALUE (8 << 60)
#define NONCANONICAL_VA 0x0000008000000000   /* bit 39 set, bits 63..40 clear */
#define TOP_SETUP
#define TOP_TESTS
#include "vm_common.h"
  .bss
  .align 12
root_table: .fill 4096, 1, 0
