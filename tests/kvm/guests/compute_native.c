/* The host's reference for compute.c: the same work() for the same rounds, timed in TSC cycles as the guest times it. */
#include <stdio.h>
#include <stdlib.h>
unsigned long work(unsigned long rounds);

int main(int argc, char **argv) {
  unsigned long rounds = strtoul(argv[1], 0, 0);
  unsigned int lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  unsigned long t0 = (unsigned long)hi << 32 | lo;
  unsigned long r = work(rounds);
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  unsigned long t1 = (unsigned long)hi << 32 | lo;
  printf("result 0x%lx cycles %lu\n", r & 0xFFFFFFFF, t1 - t0);
  return 0;
}
