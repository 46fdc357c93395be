/* Paging set up by the guest: a 4 KiB mapping of its own (a new page directory and page table under the
 * boot PML4) at 8 GiB, pointed at one page and then another (with invlpg), then removed (a page fault). */
#include "rt.h"

static u64 pd[512] __attribute__((aligned(4096)));
static u64 pt[512] __attribute__((aligned(4096)));
static u8 page_a[4096] __attribute__((aligned(4096)));
static u8 page_b[4096] __attribute__((aligned(4096)));
volatile u64 resume, pf_cr2;
volatile int pf_seen;

static void on_pf(struct frame *f) {
  pf_seen++;
  pf_cr2 = read_cr2();
  f->rip = resume;
}

int kmain(void) {
  idt_init();
  set_handler(14, on_pf);
  u64 *pml4 = (u64 *)(read_cr3() & ~0xFFFUL);
  u64 *pdpt = (u64 *)(pml4[0] & ~0xFFFUL);
  u64 va = 8UL << 30; /* pdpt[8] */
  pdpt[8] = (u64)pd | 3;
  pd[0] = (u64)pt | 3;
  pt[0] = (u64)page_a | 3;
  write_cr3(read_cr3());
  volatile u64 *p = (volatile u64 *)va;
  *p = 0x1122334455667788UL;
  check(*(u64 *)page_a == 0x1122334455667788UL, "a write through the new mapping lands in page A");
  *(u64 *)page_b = 0xCAFEF00DUL;
  pt[0] = (u64)page_b | 3;
  invlpg(va);
  check(*p == 0xCAFEF00DUL, "after remapping and invlpg the same address reads page B");
  pt[0] = 0;
  invlpg(va);
  __asm__ volatile("lea 1f(%%rip), %%rax; mov %%rax, resume(%%rip); mov (%0), %%rax; 1:" ::"r"(va) : "rax", "memory");
  check(pf_seen == 1 && pf_cr2 == va, "the unmapped page faults, CR2 right");
  return failures ? FAIL : PASS;
}
