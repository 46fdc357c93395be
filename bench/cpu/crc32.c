/* CRC-32 (IEEE, table driven) over a 64 KiB buffer, ITERS passes chained through the CRC. */
#include "common.h"

static uint32_t table[256];
static uint8_t buf[65536];

int main(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
    for (unsigned i = 0; i < sizeof buf; i++) buf[i] = (uint8_t)rnd();
    uint32_t crc = 0;
    for (int it = 0; it < ITERS; it++) {
        crc = ~crc;
        for (unsigned i = 0; i < sizeof buf; i++) crc = table[(crc ^ buf[i]) & 0xff] ^ (crc >> 8);
        crc = ~crc;
        buf[it & 0xffff] ^= (uint8_t)crc;
    }
    return finish("crc32", crc);
}
