/* Sv48 paging: the Sv39 checks under a 4-level root, plus an alias through another level-3
 * entry (VA bit 40), a misaligned 512 GiB terapage and Sv48 canonical addresses. */
#define ROOT_TABLE root_table
#define L2_TABLE l2_table
#define SATP_VALUE (9 << 60)
#define NONCANONICAL_VA 0x0000800000000000   /* bit 47 set, bits 63..48 clear */
#define TOP_SETUP SET_PTE(root_table, 0, l2_table, PTE_V); SET_PTE(root_table, 2, l2_table, PTE_V); \
  SET_PTE_PA(root_table, 3, 0x80000000, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D);
#define TOP_TESTS \
  li TESTNUM, 30; S_BEGIN(81f); li a0, 0x10040000000; ld s2, 0(a0); ecall; 81: CHECK(s2, 0x1111) \
  LOAD_TRAP(a0, trap_count); CHECK(a0, 0) \
  li TESTNUM, 31; S_BEGIN(81f); li a0, 0x18000000000; ld s2, 0(a0); ecall; 81: \
  LOAD_TRAP(a0, trap_cause); CHECK(a0, 13) LOAD_TRAP(a0, trap_tval); CHECK(a0, 0x18000000000) \
  li TESTNUM, 32; S_BEGIN(81f); li a0, 0x8000000000; ld s2, 0(a0); ecall; 81: \
  LOAD_TRAP(a0, trap_cause); CHECK(a0, 13)
#include "vm_common.h"
  .bss
  .align 12
root_table: .fill 4096, 1, 0
l2_table: .fill 4096, 1, 0
