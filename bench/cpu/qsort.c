/* Quicksort (recursive, median of three) of 20000 pseudo-random ints, ITERS times. */
#include "common.h"

#define N 20000
static int32_t a[N];

static void quicksort(int32_t *v, long lo, long hi) {
    while (lo < hi) {
        long mid = lo + (hi - lo) / 2;
        int32_t x = v[lo], y = v[mid], z = v[hi];
        int32_t pivot = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
        long i = lo, j = hi;
        while (i <= j) {
            while (v[i] < pivot) i++;
            while (v[j] > pivot) j--;
            if (i <= j) { int32_t t = v[i]; v[i] = v[j]; v[j] = t; i++; j--; }
        }
        if (j - lo < hi - i) { quicksort(v, lo, j); lo = i; }
        else { quicksort(v, i, hi); hi = j; }
    }
}

int main(void) {
    uint64_t sum = 0;
    for (int it = 0; it < ITERS; it++) {
        for (int i = 0; i < N; i++) a[i] = (int32_t)rnd();
        quicksort(a, 0, N - 1);
        for (int i = 1; i < N; i++)
            if (a[i - 1] > a[i]) { put_str("qsort: not sorted\n"); return 1; }
        for (int i = 0; i < N; i += 97) sum = sum * 1000003 + (uint32_t)a[i];
    }
    return finish("qsort", sum);
}
