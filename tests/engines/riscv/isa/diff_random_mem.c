/* Differential program: random code mixing compressed ALU forms, 32-bit loads and stores of every
 * width (any alignment) into a scratch buffer, and forward branches.  Each round writes ~64 random
 * instructions, executes FENCE.I, runs them and prints the registers and a hash of the buffer.
 * Misaligned accesses are done in hardware by both virtkit and QEMU (documented choices). */
#include "lib.h"

static uint64_t rng = 0x2545f4914f6cdd1dull;
static uint64_t next(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng;
}

static const int regs[15] = {5, 6, 7, 10, 11, 12, 13, 14, 15, 16, 17, 28, 29, 30, 31};
static int reg(void) { return regs[next() % 15]; }
static int creg(void) { return 2 + (int)(next() % 6); }      /* x10..x15 as a 3-bit register */

static uint16_t code[512] __attribute__((aligned(64)));
static int pos;
static void put16(uint32_t h) { code[pos++] = (uint16_t)h; }
static void put32(uint32_t w) { code[pos++] = (uint16_t)w; code[pos++] = (uint16_t)(w >> 16); }

static uint32_t imm6nz(void) { uint32_t v; do { v = (uint32_t)next() & 63; } while (v == 0); return v; }

static void gen_compressed(void) {
    uint32_t i6 = imm6nz();
    switch (next() % 11) {
    case 0: put16(0x0001 | (i6 >> 5) << 12 | (uint32_t)reg() << 7 | (i6 & 31) << 2); break;        /* c.addi */
    case 1: put16(0x2001 | (i6 >> 5) << 12 | (uint32_t)reg() << 7 | (i6 & 31) << 2); break;        /* c.addiw */
    case 2: put16(0x4001 | (i6 >> 5) << 12 | (uint32_t)reg() << 7 | (i6 & 31) << 2); break;        /* c.li */
    case 3: put16(0x6001 | (i6 >> 5) << 12 | (uint32_t)reg() << 7 | (i6 & 31) << 2); break;        /* c.lui */
    case 4: put16(0x8001 | (i6 >> 5) << 12 | (uint32_t)(next() % 3) << 10 | (uint32_t)creg() << 7
                  | (i6 & 31) << 2); break;                                                         /* srli/srai/andi */
    case 5: put16(0x8c01 | (uint32_t)creg() << 7 | (uint32_t)(next() & 3) << 5 | (uint32_t)creg() << 2);
        break;                                                                                      /* sub/xor/or/and */
    case 6: put16(0x9c01 | (uint32_t)creg() << 7 | (uint32_t)(next() & 1) << 5 | (uint32_t)creg() << 2);
        break;                                                                                      /* subw/addw */
    case 7: put16(0x0002 | (i6 >> 5) << 12 | (uint32_t)reg() << 7 | (i6 & 31) << 2); break;        /* c.slli */
    case 8: put16(0x8002 | (uint32_t)reg() << 7 | (uint32_t)reg() << 2); break;                    /* c.mv */
    case 9: put16(0x9002 | (uint32_t)reg() << 7 | (uint32_t)reg() << 2); break;                    /* c.add */
    default: {                                                  /* c.lw / c.ld / c.sw / c.sd off s1 */
        uint32_t kind = (uint32_t)(next() & 3), off = (uint32_t)next();
        uint32_t f3 = (uint32_t[]){2, 3, 6, 7}[kind];
        if (f3 == 2 || f3 == 6) { off &= 0x7c; put16(f3 << 13 | ((off >> 3) & 7) << 10 | 1 << 7 | ((off >> 2) & 1) << 6
                                                | ((off >> 6) & 1) << 5 | (uint32_t)creg() << 2); }
        else { off &= 0xf8; put16(f3 << 13 | ((off >> 3) & 7) << 10 | 1 << 7 | ((off >> 6) & 3) << 5
                                  | (uint32_t)creg() << 2); }
    }
    }
}

static void gen_mem(void) {
    uint32_t off = (uint32_t)next() & 0xfff;
    if (next() & 1) {
        uint32_t f3 = (uint32_t)(next() % 7);                        /* lb lh lw ld lbu lhu lwu */
        put32(off << 20 | 9 << 15 | f3 << 12 | (uint32_t)reg() << 7 | 0x03);
    } else {
        uint32_t f3 = (uint32_t)(next() & 3);                        /* sb sh sw sd */
        put32((off >> 5) << 25 | (uint32_t)reg() << 20 | 9 << 15 | f3 << 12 | (off & 31) << 7 | 0x23);
    }
}

static uint8_t buffer[8192] __attribute__((aligned(64)));
static uint64_t state[32];

static void run(void) {
    __asm__ volatile(
        "addi sp, sp, -32\n\tsd %0, 0(sp)\n\tmv s1, %2\n\t"
        "ld t0, 5*8(%0)\n\tld t1, 6*8(%0)\n\tld t2, 7*8(%0)\n\tld a0, 10*8(%0)\n\tld a1, 11*8(%0)\n\t"
        "ld a2, 12*8(%0)\n\tld a3, 13*8(%0)\n\tld a4, 14*8(%0)\n\tld a5, 15*8(%0)\n\tld a6, 16*8(%0)\n\t"
        "ld a7, 17*8(%0)\n\tld t3, 28*8(%0)\n\tld t4, 29*8(%0)\n\tld t5, 30*8(%0)\n\tld t6, 31*8(%0)\n\t"
        "jalr ra, 0(%1)\n\t"
        "sd t6, 8(sp)\n\tld t6, 0(sp)\n\t"
        "sd t0, 5*8(t6)\n\tsd t1, 6*8(t6)\n\tsd t2, 7*8(t6)\n\tsd a0, 10*8(t6)\n\tsd a1, 11*8(t6)\n\t"
        "sd a2, 12*8(t6)\n\tsd a3, 13*8(t6)\n\tsd a4, 14*8(t6)\n\tsd a5, 15*8(t6)\n\tsd a6, 16*8(t6)\n\t"
        "sd a7, 17*8(t6)\n\tsd t3, 28*8(t6)\n\tsd t4, 29*8(t6)\n\tsd t5, 30*8(t6)\n\t"
        "ld t5, 8(sp)\n\tsd t5, 31*8(t6)\n\taddi sp, sp, 32\n\t"
        :: "r"(state), "r"(code), "r"(buffer + 4096)
        /* s1 holds the buffer base for the generated loads and stores */
        : "ra", "s1", "t0", "t1", "t2", "a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "t3", "t4", "t5", "t6",
          "memory");
}

int main(void) {
    put_str("diff_random_mem\n");
    for (int round = 0; round < 60; round++) {
        int starts[80], branches[80], nb = 0, n = 0;
        pos = 0;
        for (int i = 0; i < 64; i++) {
            starts[n++] = pos;
            uint64_t k = next() % 10;
            if (k < 5) gen_compressed();
            else if (k < 8) gen_mem();
            else { branches[nb++] = n - 1; put32(0); }               /* branch, patched below */
        }
        starts[n] = pos;
        put32(0x00008067);                                           /* ret */
        for (int b = 0; b < nb; b++) {
            int at = branches[b], to = at + 1 + (int)(next() % 3);
            if (to > n) to = n;
            uint32_t off = (uint32_t)((starts[to] - starts[at]) * 2);
            uint32_t f3 = (uint32_t[]){0, 1, 4, 5, 6, 7}[next() % 6];
            uint32_t w = ((off >> 12) & 1) << 31 | ((off >> 5) & 63) << 25 | (uint32_t)reg() << 20
                         | (uint32_t)reg() << 15 | f3 << 12 | ((off >> 1) & 15) << 8 | ((off >> 11) & 1) << 7 | 0x63;
            code[starts[at]] = (uint16_t)w;
            code[starts[at] + 1] = (uint16_t)(w >> 16);
        }
        __asm__ volatile("fence.i" ::: "memory");
        for (int i = 0; i < 15; i++) {
            uint64_t v = next();
            state[regs[i]] = (i & 1) ? v : v >> (v & 63);
        }
        for (unsigned i = 0; i < sizeof buffer; i++) buffer[i] = (uint8_t)next();
        run();
        uint64_t h = 0xcbf29ce484222325ull;
        for (unsigned i = 0; i < sizeof buffer; i++) h = (h ^ buffer[i]) * 0x100000001b3ull;
        put_dec(round);
        for (int i = 0; i < 15; i++) { htif_putchar(' '); put_hex64(state[regs[i]]); }
        put_str(" mem "); put_hex64(h); htif_putchar('\n');
    }
    put_str("end\n");
    return 0;
}
