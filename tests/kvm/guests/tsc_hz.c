/* The host's TSC frequency: TSC ticks over 0.5 s of CLOCK_MONOTONIC (bench/kvm.py turns cycles into time). */
#include <stdio.h>
#include <time.h>

static unsigned long rdtsc(void) {
  unsigned int lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return (unsigned long)hi << 32 | lo;
}

int main(void) {
  struct timespec a, b, d = {0, 500000000};
  clock_gettime(CLOCK_MONOTONIC, &a);
  unsigned long t0 = rdtsc();
  nanosleep(&d, 0);
  unsigned long t1 = rdtsc();
  clock_gettime(CLOCK_MONOTONIC, &b);
  printf("%.0f\n", (t1 - t0) / ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9));
  return 0;
}
