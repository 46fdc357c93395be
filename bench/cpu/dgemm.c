/* Double-precision matrix multiply-accumulate, 48x48, ITERS times (fmadd-heavy). */
#include "common.h"

#define N 48
static double A[N][N], B[N][N], C[N][N];

int main(void) {
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            A[i][j] = (double)(rnd() % 2001) / 1000.0 - 1.0;
            B[i][j] = (double)(rnd() % 2001) / 1000.0 - 1.0;
            C[i][j] = 0.0;
        }
    for (int it = 0; it < ITERS; it++) {
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) {
                double s = C[i][j] * 0.5;
                for (int k = 0; k < N; k++) s += A[i][k] * B[k][j];
                C[i][j] = s;
            }
    }
    uint64_t sum = 0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            union { double d; uint64_t u; } v = {C[i][j]};
            sum = sum * 31 + v.u;
        }
    return finish("dgemm", sum);
}
