/* Integer matrix multiply, 64x64 (int32, wrapping), ITERS times; C feeds back into A. */
#include "common.h"

#define N 64
static int32_t A[N][N], B[N][N], C[N][N];

int main(void) {
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) { A[i][j] = (int32_t)(rnd() & 0xffff) - 0x8000; B[i][j] = (int32_t)(rnd() & 0xff); }
    uint64_t sum = 0;
    for (int it = 0; it < ITERS; it++) {
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) {
                int32_t s = 0;
                for (int k = 0; k < N; k++) s += A[i][k] * B[k][j];
                C[i][j] = s;
            }
        for (int i = 0; i < N; i++) {
            sum += (uint32_t)C[i][(i + it) % N];
            A[i][it % N] = C[i][i] >> 8;
        }
    }
    return finish("matmul", sum);
}
