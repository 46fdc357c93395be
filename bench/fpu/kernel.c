/* bench/fpu.py workload: floating-point heavy bare-metal kernel (matrix multiply with fused
 * multiply-adds, row norms with square roots, divisions, int<->float conversions).
 *
 * REAL selects double or float; RM is the rounding mode set with fsrm before the work (0 = RNE,
 * which takes virtkit's host-FPU fast path for doubles; 3 = RUP, which always takes the
 * soft-float). Prints "<name> checksum <hex>" over the result bits and fflags; QEMU must agree.
 */
#include <stdint.h>
#include "baremetal.h"

DEFINE_TRAP_REPORT

#ifndef REAL
#define REAL double
#endif
#ifndef RM
#define RM 0
#endif
#ifndef ITERS
#define ITERS 4
#endif
#define N 40

typedef REAL real;
static real A[N][N], B[N][N], C[N][N];

static inline real fsqrt(real v) {
    real r;
    if (sizeof(real) == 8)
        __asm__ volatile("fsqrt.d %0, %1" : "=f"(r) : "f"(v));
    else
        __asm__ volatile("fsqrt.s %0, %1" : "=f"(r) : "f"(v));
    return r;
}

static uint64_t bits(real v) {
    uint64_t u = 0;
    __builtin_memcpy(&u, &v, sizeof v);
    return u;
}

int main(void) {
    uint64_t h = 0xcbf29ce484222325ull, fl;
    __asm__ volatile("fsrm %0" ::"r"((uint64_t)RM));
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            A[i][j] = (real)(i * N + j + 1) / (real)(N * N);
            B[i][j] = (real)1 / (real)(i + j + 1);
        }
    for (int it = 0; it < ITERS; it++) {
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) {
                real s = 0;
                for (int k = 0; k < N; k++) s = __builtin_fma(A[i][k], B[k][j], s);
                C[i][j] = s;
            }
        for (int i = 0; i < N; i++) {
            real s = 0;
            for (int j = 0; j < N; j++) s += C[i][j] * C[i][j];
            real n = fsqrt(s) + (real)1;
            for (int j = 0; j < N; j++) A[i][j] = C[i][j] / n + (real)(long)(C[j][i] * (real)1000) / (real)4096;
        }
    }
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) h = (h ^ bits(A[i][j])) * 0x100000001b3ull;
    __asm__ volatile("frflags %0" : "=r"(fl));
    h = (h ^ fl) * 0x100000001b3ull;
    put_str(NAME);
    put_str(" checksum ");
    put_hex(h, 16);
    htif_putchar('\n');
    return 0;
}
