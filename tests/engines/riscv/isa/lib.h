/* Tiny freestanding library for the C test programs: HTIF console output and exit. */
#ifndef VIRTKIT_ISA_LIB_H
#define VIRTKIT_ISA_LIB_H
#include <stdint.h>

void htif_putchar(int ch);
void htif_puts(const char *s);
void exit(int code) __attribute__((noreturn));
void put_hex64(uint64_t v);
void put_hex32(uint32_t v);
void put_dec(int64_t v);
void put_str(const char *s);

#define read_csr(name) ({ uint64_t v_; __asm__ volatile("csrr %0, " #name : "=r"(v_)); v_; })
#define write_csr(name, v) __asm__ volatile("csrw " #name ", %0" :: "r"((uint64_t)(v)))
#endif
