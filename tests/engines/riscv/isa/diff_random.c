/* Differential program: random straight-line integer code.  Each round writes 48 random valid
 * RV64IM instructions (OP, OP-IMM, OP-32, OP-IMM-32, LUI, AUIPC, M extension) into a buffer,
 * executes FENCE.I, runs the buffer on pseudo-random register values and prints the registers:
 * it checks decoding of arbitrary fields as well as self-modifying code. */
#include "lib.h"

static uint64_t rng = 0x5851f42d4c957f2dull;
static uint64_t next(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng;
}

/* registers the generated code may use: t0-t2 (5-7), a0-a7 (10-17), t3-t6 (28-31) */
static const int regs[15] = {5, 6, 7, 10, 11, 12, 13, 14, 15, 16, 17, 28, 29, 30, 31};
static int reg(void) { return regs[next() % 15]; }

static uint32_t r_type(uint32_t f7, uint32_t f3, uint32_t op) {
    return f7 << 25 | (uint32_t)reg() << 20 | (uint32_t)reg() << 15 | f3 << 12 | (uint32_t)reg() << 7 | op;
}

static uint32_t gen(void) {
    uint32_t imm = (uint32_t)next() & 0xfff, f3 = (uint32_t)next() & 7;
    switch (next() % 8) {
    case 0: {                                   /* OP: base (add/sub/sll/slt/sltu/xor/srl/sra/or/and) */
        uint32_t f7 = (f3 == 0 || f3 == 5) && (next() & 1) ? 0x20 : 0;
        return r_type(f7, f3, 0x33);
    }
    case 1: return r_type(1, f3, 0x33);         /* M: mul..remu */
    case 2: {                                   /* OP-32: addw/subw/sllw/srlw/sraw, M W forms */
        static const uint32_t ok[] = {0, 1, 5};
        uint32_t g = ok[next() % 3];
        if (next() % 3 == 0) return r_type(1, (uint32_t[]){0, 4, 5, 6, 7}[next() % 5], 0x3b);
        return r_type(g != 1 && (next() & 1) ? 0x20 : 0, g, 0x3b);
    }
    case 3: case 4: {                           /* OP-IMM */
        if (f3 == 1) imm &= 0x3f;               /* slli: shamt */
        if (f3 == 5) imm = (imm & 0x3f) | ((next() & 1) ? 0x400 : 0);   /* srli / srai */
        return imm << 20 | (uint32_t)reg() << 15 | f3 << 12 | (uint32_t)reg() << 7 | 0x13;
    }
    case 5: {                                   /* OP-IMM-32: addiw, slliw, srliw, sraiw */
        uint32_t g = (uint32_t[]){0, 1, 5}[next() % 3];
        if (g == 1) imm &= 0x1f;
        if (g == 5) imm = (imm & 0x1f) | ((next() & 1) ? 0x400 : 0);
        return imm << 20 | (uint32_t)reg() << 15 | g << 12 | (uint32_t)reg() << 7 | 0x1b;
    }
    case 6: return ((uint32_t)next() & 0xfffff000u) | (uint32_t)reg() << 7 | 0x37;   /* LUI */
    default: return ((uint32_t)next() & 0xfffff000u) | (uint32_t)reg() << 7 | 0x17;  /* AUIPC */
    }
}

static uint32_t code[64] __attribute__((aligned(64)));
static uint64_t state[32];

static void run(void) {
    __asm__ volatile(
        "ld t0, 5*8(%0)\n\tld t1, 6*8(%0)\n\tld t2, 7*8(%0)\n\tld a0, 10*8(%0)\n\tld a1, 11*8(%0)\n\t"
        "ld a2, 12*8(%0)\n\tld a3, 13*8(%0)\n\tld a4, 14*8(%0)\n\tld a5, 15*8(%0)\n\tld a6, 16*8(%0)\n\t"
        "ld a7, 17*8(%0)\n\tld t3, 28*8(%0)\n\tld t4, 29*8(%0)\n\tld t5, 30*8(%0)\n\t"
        "addi sp, sp, -16\n\tsd %0, 0(sp)\n\tld t6, 31*8(%0)\n\t"
        "jalr ra, 0(%1)\n\t"
        "sd t6, 8(sp)\n\tld t6, 0(sp)\n\t"
        "sd t0, 5*8(t6)\n\tsd t1, 6*8(t6)\n\tsd t2, 7*8(t6)\n\tsd a0, 10*8(t6)\n\tsd a1, 11*8(t6)\n\t"
        "sd a2, 12*8(t6)\n\tsd a3, 13*8(t6)\n\tsd a4, 14*8(t6)\n\tsd a5, 15*8(t6)\n\tsd a6, 16*8(t6)\n\t"
        "sd a7, 17*8(t6)\n\tsd t3, 28*8(t6)\n\tsd t4, 29*8(t6)\n\tsd t5, 30*8(t6)\n\t"
        "ld t5, 8(sp)\n\tsd t5, 31*8(t6)\n\taddi sp, sp, 16\n\t"
        :: "r"(state), "r"(code)
        : "ra", "t0", "t1", "t2", "a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "t3", "t4", "t5", "t6", "memory");
}

int main(void) {
    put_str("diff_random\n");
    for (int round = 0; round < 60; round++) {
        for (int i = 0; i < 48; i++) code[i] = gen();
        code[48] = 0x00008067;                  /* ret */
        __asm__ volatile("fence.i" ::: "memory");
        for (int i = 0; i < 15; i++) {
            uint64_t v = next();
            state[regs[i]] = (i & 1) ? v : v >> (v & 63);
        }
        run();
        put_dec(round);
        for (int i = 0; i < 15; i++) { htif_putchar(' '); put_hex64(state[regs[i]]); }
        htif_putchar('\n');
    }
    put_str("end\n");
    return 0;
}
