/* Shared bits of the bench/cpu workloads: HTIF console (from virtkit's demo crt), a PRNG, the
 * memset/memcpy the compiler may call, and the checksum line both emulators must agree on. */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H
#include <stddef.h>
#include "baremetal.h"

DEFINE_TRAP_REPORT

void *memset(void *d, int c, size_t n) {
    unsigned char *p = d;
    while (n--) *p++ = (unsigned char)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n) {
    unsigned char *p = d;
    const unsigned char *q = s;
    while (n--) *p++ = *q++;
    return d;
}

static uint64_t rng_state = 0x853c49e6748fea9bull;
static inline uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

static inline int finish(const char *name, uint64_t checksum) {
    put_str(name);
    put_str(" checksum ");
    put_hex(checksum, 16);
    htif_putchar('\n');
    return 0;
}

#ifndef ITERS
#define ITERS 1
#endif
#endif
