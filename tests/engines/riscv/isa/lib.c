/* Console helpers for the C test programs (the HTIF primitives live in crt.S). */
#include "lib.h"

void put_str(const char *s) { htif_puts(s); }

void put_hex64(uint64_t v) {
    for (int i = 60; i >= 0; i -= 4) htif_putchar("0123456789abcdef"[(v >> i) & 15]);
}

void put_hex32(uint32_t v) {
    for (int i = 28; i >= 0; i -= 4) htif_putchar("0123456789abcdef"[(v >> i) & 15]);
}

void put_dec(int64_t v) {
    char buf[24];
    int n = 0;
    uint64_t u = v < 0 ? -(uint64_t)v : (uint64_t)v;
    if (v < 0) htif_putchar('-');
    do { buf[n++] = (char)('0' + u % 10); u /= 10; } while (u);
    while (n) htif_putchar(buf[--n]);
}
