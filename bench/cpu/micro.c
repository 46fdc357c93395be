/* Instruction-cost micro-benchmark: a loop of 16 copies of one instruction kind (-DKIND=n), run
 * ITERS * 1000 times, so per-instruction cost on each emulator can be compared (bench/cpu.py --micro). */
#include "common.h"

#define R16(x) x x x x x x x x x x x x x x x x

int main(void) {
    uint64_t a = 1, b = 3, n = (uint64_t)ITERS * 1000;
    static uint64_t mem[4] __attribute__((aligned(64)));
    double fa = 1.0000001, fb = 0.9999999, fc = 0.5;
    for (uint64_t i = 0; i < n; i++) {
#if KIND == 0      /* integer ALU */
        __asm__ volatile(R16("add %0, %0, %1\n\t") : "+r"(a) : "r"(b));
#elif KIND == 1    /* load */
        __asm__ volatile(R16("ld %0, 0(%1)\n\t") : "=r"(a) : "r"(mem));
#elif KIND == 2    /* store */
        __asm__ volatile(R16("sd %1, 8(%0)\n\t") :: "r"(mem), "r"(b) : "memory");
#elif KIND == 3    /* taken branch */
        __asm__ volatile(R16("bnez %0, 1f\n\t1:\n\t") :: "r"(b));
#elif KIND == 4    /* multiply */
        __asm__ volatile(R16("mul %0, %0, %1\n\t") : "+r"(a) : "r"(b));
#elif KIND == 5    /* divide */
        __asm__ volatile(R16("divu %0, %1, %0\n\t") : "+r"(a) : "r"(b));
#elif KIND == 6    /* compressed ALU */
        __asm__ volatile(R16("c.addi %0, 1\n\t") : "+r"(a));
#elif KIND == 7    /* CSR read */
        __asm__ volatile(R16("csrr %0, mscratch\n\t") : "=r"(a));
#elif KIND == 8    /* AMO */
        __asm__ volatile(R16("amoadd.d %0, %1, (%2)\n\t") : "=r"(a) : "r"(b), "r"(mem) : "memory");
#elif KIND == 9    /* fadd.d */
        __asm__ volatile(R16("fadd.d %0, %0, %1\n\t") : "+f"(fa) : "f"(fb));
#elif KIND == 10   /* fmul.d */
        __asm__ volatile(R16("fmul.d %0, %0, %1\n\t") : "+f"(fa) : "f"(fb));
#elif KIND == 11   /* fmadd.d */
        __asm__ volatile(R16("fmadd.d %0, %0, %1, %2\n\t") : "+f"(fa) : "f"(fb), "f"(fc));
#elif KIND == 12   /* fdiv.d */
        __asm__ volatile(R16("fdiv.d %0, %0, %1\n\t") : "+f"(fa) : "f"(fb));
#elif KIND == 13   /* fld */
        __asm__ volatile(R16("fld %0, 0(%1)\n\t") : "=f"(fa) : "r"(mem));
#endif
    }
    union { double d; uint64_t u; } v = {fa};
    return finish("micro", a ^ v.u);
}
