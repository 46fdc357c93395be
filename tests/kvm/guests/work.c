/* The workload itself, the same source for the guest (ring 3) and the host (native): a xorshift and
 * multiply chain over `rounds` iterations. */
typedef unsigned long u64;

u64 work(u64 rounds) {
  u64 x = 88172645463325252UL, acc = 0;
  for (u64 i = 0; i < rounds; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    acc += x * 0x9E3779B97F4A7C15UL;
  }
  return acc;
}
