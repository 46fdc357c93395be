/* Differential program: F and D arithmetic, fused multiply-add, square root and conversions on
 * pseudo-random and special operands in all five rounding modes; prints result bits and fflags
 * so virtkit and QEMU can be compared byte for byte. */
#include "lib.h"

static uint64_t rng = 0x243f6a8885a308d3ull;
static uint64_t next(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng;
}

static const uint64_t dspecial[] = {0, 0x8000000000000000ull, 0x3ff0000000000000ull, 0xbff0000000000000ull,
    0x7ff0000000000000ull, 0xfff0000000000000ull, 0x7ff8000000000000ull, 0x7ff0000000000001ull,
    0x7fefffffffffffffull, 0x0010000000000000ull, 0x000fffffffffffffull, 0x0000000000000001ull,
    0x3fb999999999999aull, 0x43e0000000000000ull, 0xc3e0000000000000ull, 0x41e0000000000000ull};
static const uint32_t sspecial[] = {0, 0x80000000u, 0x3f800000u, 0xbf800000u, 0x7f800000u, 0xff800000u,
    0x7fc00000u, 0x7f800001u, 0x7f7fffffu, 0x00800000u, 0x007fffffu, 0x00000001u, 0x3dcccccdu,
    0x5f000000u, 0xdf000000u, 0x4f000000u};

static uint64_t dpick(void) {
    uint64_t r = next();
    switch (r & 3) {
    case 0: return dspecial[(r >> 2) & 15];
    case 1: return next();
    default: /* exponent near 1.0 so results stay in range and round */
        return (next() & 0x800fffffffffffffull) | ((uint64_t)(1023 - 30 + ((r >> 2) % 60)) << 52);
    }
}
static uint32_t spick(void) {
    uint64_t r = next();
    switch (r & 3) {
    case 0: return sspecial[(r >> 2) & 15];
    case 1: return (uint32_t)next();
    default: return ((uint32_t)next() & 0x807fffffu) | ((uint32_t)(127 - 12 + ((r >> 2) % 24)) << 23);
    }
}

#define FOP_D(name, insn) static uint64_t name(uint64_t a, uint64_t b, uint64_t c, uint64_t rm, uint64_t *fl) { \
    uint64_t r, f; __asm__ volatile("fsrm %[rm]\n\tfsflags x0\n\tfmv.d.x ft0, %[a]\n\tfmv.d.x ft1, %[b]\n\t" \
    "fmv.d.x ft2, %[c]\n\t" insn "\n\tfmv.x.d %[r], ft3\n\tfrflags %[f]" \
    : [r] "=&r"(r), [f] "=&r"(f) : [a] "r"(a), [b] "r"(b), [c] "r"(c), [rm] "r"(rm) : "ft0", "ft1", "ft2", "ft3"); \
    (void)c; *fl = f; return r; }
#define FOP_S(name, insn) static uint64_t name(uint64_t a, uint64_t b, uint64_t c, uint64_t rm, uint64_t *fl) { \
    uint64_t r, f; __asm__ volatile("fsrm %[rm]\n\tfsflags x0\n\tfmv.w.x ft0, %[a]\n\tfmv.w.x ft1, %[b]\n\t" \
    "fmv.w.x ft2, %[c]\n\t" insn "\n\tfmv.x.w %[r], ft3\n\tfrflags %[f]" \
    : [r] "=&r"(r), [f] "=&r"(f) : [a] "r"(a), [b] "r"(b), [c] "r"(c), [rm] "r"(rm) : "ft0", "ft1", "ft2", "ft3"); \
    (void)c; *fl = f; return r & 0xffffffffu; }
#define FOP_X(name, insn) static uint64_t name(uint64_t a, uint64_t b, uint64_t c, uint64_t rm, uint64_t *fl) { \
    uint64_t r, f; __asm__ volatile("fsrm %[rm]\n\tfsflags x0\n\tfmv.d.x ft0, %[a]\n\tfmv.w.x ft1, %[b]\n\t" \
    insn "\n\tfrflags %[f]" \
    : [r] "=&r"(r), [f] "=&r"(f) : [a] "r"(a), [b] "r"(b), [rm] "r"(rm) : "ft0", "ft1", "ft3"); \
    (void)c; *fl = f; return r; }

FOP_D(d_add, "fadd.d ft3, ft0, ft1") FOP_D(d_sub, "fsub.d ft3, ft0, ft1") FOP_D(d_mul, "fmul.d ft3, ft0, ft1")
FOP_D(d_div, "fdiv.d ft3, ft0, ft1") FOP_D(d_sqrt, "fsqrt.d ft3, ft0") FOP_D(d_fma, "fmadd.d ft3, ft0, ft1, ft2")
FOP_D(d_fnms, "fnmsub.d ft3, ft0, ft1, ft2") FOP_D(d_min, "fmin.d ft3, ft0, ft1") FOP_D(d_max, "fmax.d ft3, ft0, ft1")
FOP_D(d_cvtl, "fcvt.d.l ft3, %[a]") FOP_D(d_cvtwu, "fcvt.d.wu ft3, %[b]")
FOP_S(s_add, "fadd.s ft3, ft0, ft1") FOP_S(s_sub, "fsub.s ft3, ft0, ft1") FOP_S(s_mul, "fmul.s ft3, ft0, ft1")
FOP_S(s_div, "fdiv.s ft3, ft0, ft1") FOP_S(s_sqrt, "fsqrt.s ft3, ft0") FOP_S(s_fma, "fmadd.s ft3, ft0, ft1, ft2")
FOP_S(s_fms, "fmsub.s ft3, ft0, ft1, ft2") FOP_S(s_min, "fmin.s ft3, ft0, ft1") FOP_S(s_cvtl, "fcvt.s.l ft3, %[a]")
FOP_X(x_cvt_w_d, "fcvt.w.d %[r], ft0, dyn") FOP_X(x_cvt_lu_d, "fcvt.lu.d %[r], ft0, dyn")
FOP_X(x_cvt_l_s, "fcvt.l.s %[r], ft1, dyn") FOP_X(x_cvt_wu_s, "fcvt.wu.s %[r], ft1, dyn")
FOP_X(x_cvt_s_d, "fcvt.s.d ft3, ft0, dyn\n\tfmv.x.w %[r], ft3") FOP_X(x_cvt_d_s, "fcvt.d.s ft3, ft1\n\tfmv.x.d %[r], ft3")
FOP_X(x_class_d, "fclass.d %[r], ft0") FOP_X(x_lt_d, "flt.d %[r], ft0, ft0") FOP_X(x_eq_s, "feq.s %[r], ft1, ft1")

typedef uint64_t (*fop)(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t *);
static const fop dops[] = {d_add, d_sub, d_mul, d_div, d_sqrt, d_fma, d_fnms, d_min, d_max, d_cvtl, d_cvtwu,
                           x_cvt_w_d, x_cvt_lu_d, x_cvt_s_d, x_class_d, x_lt_d};
static const fop sops[] = {s_add, s_sub, s_mul, s_div, s_sqrt, s_fma, s_fms, s_min, s_cvtl,
                           x_cvt_l_s, x_cvt_wu_s, x_cvt_d_s, x_eq_s};

int main(void) {
    put_str("diff_fp\n");
    for (int i = 0; i < 60; i++) {
        uint64_t a = dpick(), b = dpick(), c = dpick();
        put_str("d "); put_hex64(a); htif_putchar(' '); put_hex64(b); htif_putchar(' '); put_hex64(c);
        htif_putchar('\n');
        for (uint64_t rm = 0; rm < 5; rm++) {
            htif_putchar('0' + (int)rm);
            for (unsigned k = 0; k < sizeof dops / sizeof dops[0]; k++) {
                uint64_t fl, r = dops[k](a, k == 13 || k == 15 ? a : (k == 10 ? (uint32_t)b : b), c, rm, &fl);
                htif_putchar(' '); put_hex64(r); htif_putchar('/'); htif_putchar("0123456789abcdef"[fl >> 4]);
                htif_putchar("0123456789abcdef"[fl & 15]);
            }
            htif_putchar('\n');
        }
    }
    for (int i = 0; i < 60; i++) {
        uint64_t a = spick(), b = spick(), c = spick();
        put_str("s "); put_hex32((uint32_t)a); htif_putchar(' '); put_hex32((uint32_t)b); htif_putchar(' ');
        put_hex32((uint32_t)c); htif_putchar('\n');
        for (uint64_t rm = 0; rm < 5; rm++) {
            htif_putchar('0' + (int)rm);
            for (unsigned k = 0; k < sizeof sops / sizeof sops[0]; k++) {
                uint64_t fl, r = sops[k](k == 8 ? next() : a, k >= 9 ? a : b, c, rm, &fl);
                htif_putchar(' '); put_hex64(r); htif_putchar('/'); htif_putchar("0123456789abcdef"[fl >> 4]);
                htif_putchar("0123456789abcdef"[fl & 15]);
            }
            htif_putchar('\n');
        }
    }
    __asm__ volatile("fsrm x0");
    put_str("end\n");
    return 0;
}
