/* End-to-end F/D test program for test_fpu_e2e.py (bare metal, HTIF; built with isa/crt.S + lib.c).
 *
 * Part 1 checks fixed results of fsrm/fsflags/frcsr use and exits with the number of the first
 * failing case.  Part 2 runs every F/D compute instruction over special and pseudo-random
 * operands in all five rounding modes (dynamic rm, set with fsrm) and prints one checksum of
 * results and fflags per (instruction, rounding mode): the Python test compares that console
 * output between QEMU (the reference) and virtkit.
 */
#include <stdint.h>

#include "lib.h"

typedef uint64_t u64;

extern uintptr_t trap_hook;
extern u64 trap_cause;
void mtrap_skip(void);

static u64 h;
static void mix(u64 v) { h = (h ^ v) * 0x100000001b3ULL; }

/* ---- instruction wrappers: operands/results as raw bits, fflags cleared before and mixed in after */

#define FF2(name, ins, mvi, mvo)                                                                     \
    static void name(u64 a, u64 b) {                                                                 \
        u64 r, fl;                                                                                   \
        __asm__ volatile(mvi " ft0, %2\n" mvi " ft1, %3\ncsrw fflags, zero\n" ins " ft2, ft0, ft1\n" \
                         "frflags %1\n" mvo " %0, ft2"                                               \
                         : "=&r"(r), "=&r"(fl) : "r"(a), "r"(b) : "ft0", "ft1", "ft2");              \
        mix(r); mix(fl);                                                                             \
    }
#define FF3(name, ins, mvi, mvo)                                                                  \
    static void name(u64 a, u64 b, u64 c) {                                                       \
        u64 r, fl;                                                                                \
        __asm__ volatile(mvi " ft0, %2\n" mvi " ft1, %3\n" mvi " ft3, %4\ncsrw fflags, zero\n" ins \
                         " ft2, ft0, ft1, ft3\nfrflags %1\n" mvo " %0, ft2"                        \
                         : "=&r"(r), "=&r"(fl) : "r"(a), "r"(b), "r"(c) : "ft0", "ft1", "ft2", "ft3"); \
        mix(r); mix(fl);                                                                          \
    }
#define FF1(name, ins, mvi, mvo)                                                                 \
    static void name(u64 a, u64 b) {                                                             \
        u64 r, fl;                                                                               \
        (void)b;                                                                                 \
        __asm__ volatile(mvi " ft0, %2\ncsrw fflags, zero\n" ins " ft2, ft0\nfrflags %1\n" mvo " %0, ft2" \
                         : "=&r"(r), "=&r"(fl) : "r"(a) : "ft0", "ft2");                         \
        mix(r); mix(fl);                                                                         \
    }
#define FX2(name, ins, mvi)                                                                    \
    static void name(u64 a, u64 b) {                                                          \
        u64 r, fl;                                                                            \
        __asm__ volatile(mvi " ft0, %2\n" mvi " ft1, %3\ncsrw fflags, zero\n" ins " %0, ft0, ft1\n" \
                         "frflags %1" : "=&r"(r), "=&r"(fl) : "r"(a), "r"(b) : "ft0", "ft1");  \
        mix(r); mix(fl);                                                                      \
    }
#define FX1(name, ins, mvi)                                                                             \
    static void name(u64 a, u64 b) {                                                                   \
        u64 r, fl;                                                                                     \
        (void)b;                                                                                       \
        __asm__ volatile(mvi " ft0, %2\ncsrw fflags, zero\n" ins " %0, ft0\nfrflags %1"                  \
                         : "=&r"(r), "=&r"(fl) : "r"(a) : "ft0");                                      \
        mix(r); mix(fl);                                                                               \
    }
#define XF1(name, ins, mvo)                                                                    \
    static void name(u64 a, u64 b) {                                                          \
        u64 r, fl;                                                                            \
        (void)b;                                                                              \
        __asm__ volatile("csrw fflags, zero\n" ins " ft2, %2\nfrflags %1\n" mvo " %0, ft2"     \
                         : "=&r"(r), "=&r"(fl) : "r"(a) : "ft2");                             \
        mix(r); mix(fl);                                                                      \
    }

#define D_IN "fmv.d.x"
#define D_OUT "fmv.x.d"
#define S_IN "fmv.w.x"
#define S_OUT "fmv.x.w"

FF2(fadd_d, "fadd.d", D_IN, D_OUT) FF2(fsub_d, "fsub.d", D_IN, D_OUT) FF2(fmul_d, "fmul.d", D_IN, D_OUT)
FF2(fdiv_d, "fdiv.d", D_IN, D_OUT) FF2(fmin_d, "fmin.d", D_IN, D_OUT) FF2(fmax_d, "fmax.d", D_IN, D_OUT)
FF2(fsgnj_d, "fsgnj.d", D_IN, D_OUT) FF2(fsgnjn_d, "fsgnjn.d", D_IN, D_OUT) FF2(fsgnjx_d, "fsgnjx.d", D_IN, D_OUT)
FF1(fsqrt_d, "fsqrt.d", D_IN, D_OUT) FF1(fcvt_s_d, "fcvt.s.d", D_IN, D_OUT)
FX2(feq_d, "feq.d", D_IN) FX2(flt_d, "flt.d", D_IN) FX2(fle_d, "fle.d", D_IN)
FX1(fclass_d, "fclass.d", D_IN) FX1(fcvt_w_d, "fcvt.w.d", D_IN) FX1(fcvt_wu_d, "fcvt.wu.d", D_IN)
FX1(fcvt_l_d, "fcvt.l.d", D_IN) FX1(fcvt_lu_d, "fcvt.lu.d", D_IN)
XF1(fcvt_d_w, "fcvt.d.w", D_OUT) XF1(fcvt_d_wu, "fcvt.d.wu", D_OUT) XF1(fcvt_d_l, "fcvt.d.l", D_OUT)
XF1(fcvt_d_lu, "fcvt.d.lu", D_OUT)
FF3(fmadd_d, "fmadd.d", D_IN, D_OUT) FF3(fmsub_d, "fmsub.d", D_IN, D_OUT) FF3(fnmsub_d, "fnmsub.d", D_IN, D_OUT)
FF3(fnmadd_d, "fnmadd.d", D_IN, D_OUT)

FF2(fadd_s, "fadd.s", S_IN, S_OUT) FF2(fsub_s, "fsub.s", S_IN, S_OUT) FF2(fmul_s, "fmul.s", S_IN, S_OUT)
FF2(fdiv_s, "fdiv.s", S_IN, S_OUT) FF2(fmin_s, "fmin.s", S_IN, S_OUT) FF2(fmax_s, "fmax.s", S_IN, S_OUT)
FF2(fsgnj_s, "fsgnj.s", S_IN, S_OUT) FF2(fsgnjn_s, "fsgnjn.s", S_IN, S_OUT) FF2(fsgnjx_s, "fsgnjx.s", S_IN, S_OUT)
FF1(fsqrt_s, "fsqrt.s", S_IN, S_OUT) FF1(fcvt_d_s, "fcvt.d.s", S_IN, D_OUT)
FX2(feq_s, "feq.s", S_IN) FX2(flt_s, "flt.s", S_IN) FX2(fle_s, "fle.s", S_IN)
FX1(fclass_s, "fclass.s", S_IN) FX1(fcvt_w_s, "fcvt.w.s", S_IN) FX1(fcvt_wu_s, "fcvt.wu.s", S_IN)
FX1(fcvt_l_s, "fcvt.l.s", S_IN) FX1(fcvt_lu_s, "fcvt.lu.s", S_IN)
XF1(fcvt_s_w, "fcvt.s.w", D_OUT) XF1(fcvt_s_wu, "fcvt.s.wu", D_OUT) XF1(fcvt_s_l, "fcvt.s.l", D_OUT)
XF1(fcvt_s_lu, "fcvt.s.lu", D_OUT)
FF3(fmadd_s, "fmadd.s", S_IN, S_OUT) FF3(fmsub_s, "fmsub.s", S_IN, S_OUT) FF3(fnmsub_s, "fnmsub.s", S_IN, S_OUT)
FF3(fnmadd_s, "fnmadd.s", S_IN, S_OUT)
/* NaN-boxing: a single operand written with fmv.d.x (maybe not boxed); the full 64-bit result is kept */
FF2(fadd_s_box, "fadd.s", D_IN, D_OUT) FF1(fsqrt_s_box, "fsqrt.s", D_IN, D_OUT)
FF2(fsgnjn_s_box, "fsgnjn.s", D_IN, D_OUT) FX1(fclass_s_box, "fclass.s", D_IN)

/* ---- operands */

static const u64 SPECIAL_D[] = {
    0x0000000000000000, 0x8000000000000000, 0x3ff0000000000000, 0xbff0000000000000, 0x7ff0000000000000,
    0xfff0000000000000, 0x7ff8000000000000, 0x7ff4000000000001, 0xfff8000000000123, 0x7fefffffffffffff,
    0xffefffffffffffff, 0x0010000000000000, 0x000fffffffffffff, 0x0000000000000001, 0x8000000000000001,
    0x3ff0000000000001, 0x3fefffffffffffff, 0x4008000000000000, 0x3fb999999999999a, 0x41dfffffffe00000,
    0xc1e0000000100000, 0x43e0000000000000, 0x43f0000000000000, 0x3fe0000000000000, 0xc004000000000000,
};
static const u64 SPECIAL_S[] = {
    0x00000000, 0x80000000, 0x3f800000, 0xbf800000, 0x7f800000, 0xff800000, 0x7fc00000, 0x7fa00001,
    0xffc00123, 0x7f7fffff, 0xff7fffff, 0x00800000, 0x007fffff, 0x00000001, 0x80000001, 0x3f800001,
    0x3f7fffff, 0x40400000, 0x3dcccccd, 0x4effffff, 0xcf000000, 0x5f000000, 0x5f800000, 0x3f000000,
    0xc0200000,
};
#define NSPEC 25
static const u64 SPECIAL_I[] = {
    0, 1, 0xffffffffffffffff, 0x7fffffff, 0x80000000, 0xffffffff, 0x7fffffffffffffff, 0x8000000000000000,
    0x1000001, 0x20000000000001, 0xffffffff7fffffff, 0x123456789abcdef1, 0xfffffffffeffffff, 3, 0x7ffffff0,
    0x100000001, 0xfffffffffffff800, 0x8000000000000401, 0x40000000, 0xffffff01, 0xdeadbeef, 0x00ffffff80,
    0xfffffffffffffffe, 0x7fffff, 0xaaaaaaaaaaaaaaaa,
};

static u64 rng = 0x9e3779b97f4a7c15ULL;
static u64 next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* random finite or special operand of the format, biased to exponents where rounding is interesting */
static u64 rnd(int dbl) {
    u64 r = next(), m;
    int mb = dbl ? 52 : 23, emax = dbl ? 0x7ff : 0xff, bias = dbl ? 1023 : 127, e;
    switch (r & 7) {
    case 0: return dbl ? SPECIAL_D[(r >> 3) % NSPEC] : SPECIAL_S[(r >> 3) % NSPEC];
    case 1: e = (int)((r >> 3) % (u64)(emax + 1)); break;
    case 2: e = (int)((r >> 3) % 3); break;
    case 3: e = emax - 1 - (int)((r >> 3) % 3); break;
    default: e = bias - 30 + (int)((r >> 3) % 60); break;
    }
    m = next();
    switch ((r >> 20) & 3) {
    case 0: m &= 3; break;
    case 1: m |= ~(u64)7; break;
    default: break;
    }
    m &= (1ULL << mb) - 1;
    return ((r >> 40) & 1) << (dbl ? 63 : 31) | (u64)e << mb | m;
}

typedef void (*op2)(u64, u64);
typedef void (*op3)(u64, u64, u64);
struct t2 { const char *name; op2 fn; int kind; }; /* kind: 1 double, 0 single, 2 integer operands, 3 boxing */
struct t3 { const char *name; op3 fn; int dbl; };

static const struct t2 OPS2[] = {
    {"fadd.d", fadd_d, 1}, {"fsub.d", fsub_d, 1}, {"fmul.d", fmul_d, 1}, {"fdiv.d", fdiv_d, 1},
    {"fmin.d", fmin_d, 1}, {"fmax.d", fmax_d, 1}, {"fsgnj.d", fsgnj_d, 1}, {"fsgnjn.d", fsgnjn_d, 1},
    {"fsgnjx.d", fsgnjx_d, 1}, {"fsqrt.d", fsqrt_d, 1}, {"fcvt.s.d", fcvt_s_d, 1}, {"feq.d", feq_d, 1},
    {"flt.d", flt_d, 1}, {"fle.d", fle_d, 1}, {"fclass.d", fclass_d, 1}, {"fcvt.w.d", fcvt_w_d, 1},
    {"fcvt.wu.d", fcvt_wu_d, 1}, {"fcvt.l.d", fcvt_l_d, 1}, {"fcvt.lu.d", fcvt_lu_d, 1},
    {"fcvt.d.w", fcvt_d_w, 2}, {"fcvt.d.wu", fcvt_d_wu, 2}, {"fcvt.d.l", fcvt_d_l, 2}, {"fcvt.d.lu", fcvt_d_lu, 2},
    {"fadd.s", fadd_s, 0}, {"fsub.s", fsub_s, 0}, {"fmul.s", fmul_s, 0}, {"fdiv.s", fdiv_s, 0},
    {"fmin.s", fmin_s, 0}, {"fmax.s", fmax_s, 0}, {"fsgnj.s", fsgnj_s, 0}, {"fsgnjn.s", fsgnjn_s, 0},
    {"fsgnjx.s", fsgnjx_s, 0}, {"fsqrt.s", fsqrt_s, 0}, {"fcvt.d.s", fcvt_d_s, 0}, {"feq.s", feq_s, 0},
    {"flt.s", flt_s, 0}, {"fle.s", fle_s, 0}, {"fclass.s", fclass_s, 0}, {"fcvt.w.s", fcvt_w_s, 0},
    {"fcvt.wu.s", fcvt_wu_s, 0}, {"fcvt.l.s", fcvt_l_s, 0}, {"fcvt.lu.s", fcvt_lu_s, 0},
    {"fcvt.s.w", fcvt_s_w, 2}, {"fcvt.s.wu", fcvt_s_wu, 2}, {"fcvt.s.l", fcvt_s_l, 2}, {"fcvt.s.lu", fcvt_s_lu, 2},
    {"fadd.s/box", fadd_s_box, 3}, {"fsqrt.s/box", fsqrt_s_box, 3}, {"fsgnjn.s/box", fsgnjn_s_box, 3},
    {"fclass.s/box", fclass_s_box, 3},
};
static const struct t3 OPS3[] = {
    {"fmadd.d", fmadd_d, 1}, {"fmsub.d", fmsub_d, 1}, {"fnmsub.d", fnmsub_d, 1}, {"fnmadd.d", fnmadd_d, 1},
    {"fmadd.s", fmadd_s, 0}, {"fmsub.s", fmsub_s, 0}, {"fnmsub.s", fnmsub_s, 0}, {"fnmadd.s", fnmadd_s, 0},
};

#define NRANDOM 300

static u64 operand(int kind, int i, int special) {
    if (kind == 2) return special ? SPECIAL_I[i] : next() >> (next() & 63);
    if (kind == 3) { /* singles, boxed or (1 in 4) not */
        u64 v = special ? SPECIAL_S[i] : rnd(0);
        return (next() & 3) ? (v | 0xffffffff00000000ULL) : v | (next() << 32 & 0x7fffffff00000000ULL);
    }
    return special ? (kind ? SPECIAL_D[i] : SPECIAL_S[i]) : rnd(kind);
}

static void sweep(void) {
    for (int rm = 0; rm < 5; rm++) {
        __asm__ volatile("fsrm %0" ::"r"((u64)rm));
        for (unsigned k = 0; k < sizeof OPS2 / sizeof OPS2[0]; k++) {
            h = 0xcbf29ce484222325ULL;
            rng = 0x9e3779b97f4a7c15ULL + k;
            for (int i = 0; i < NSPEC; i++)
                for (int j = 0; j < NSPEC; j++) OPS2[k].fn(operand(OPS2[k].kind, i, 1), operand(OPS2[k].kind, j, 1));
            for (int i = 0; i < NRANDOM; i++) OPS2[k].fn(operand(OPS2[k].kind, 0, 0), operand(OPS2[k].kind, 0, 0));
            put_str(OPS2[k].name); put_str(" rm"); put_dec(rm); put_str(" "); put_hex64(h); put_str("\n");
        }
        for (unsigned k = 0; k < sizeof OPS3 / sizeof OPS3[0]; k++) {
            int dbl = OPS3[k].dbl;
            h = 0xcbf29ce484222325ULL;
            rng = 0x1234567ULL + k;
            for (int i = 0; i < NSPEC; i++)
                for (int j = 0; j < NSPEC; j++) OPS3[k].fn(operand(dbl, i, 1), operand(dbl, j, 1), rnd(dbl));
            for (int i = 0; i < 4 * NRANDOM; i++) OPS3[k].fn(rnd(dbl), rnd(dbl), rnd(dbl));
            put_str(OPS3[k].name); put_str(" rm"); put_dec(rm); put_str(" "); put_hex64(h); put_str("\n");
        }
    }
}

/* ---- part 1: fixed checks of the CSR interplay */

static u64 div_d(u64 a, u64 b) {
    u64 r;
    __asm__ volatile("fmv.d.x ft0, %1\nfmv.d.x ft1, %2\nfdiv.d ft2, ft0, ft1\nfmv.x.d %0, ft2"
                     : "=r"(r) : "r"(a), "r"(b) : "ft0", "ft1", "ft2");
    return r;
}

static int checks(void) {
    u64 one = 0x3ff0000000000000, three = 0x4008000000000000, r, v;
    __asm__ volatile("fsflags zero\nfsrm %0" ::"r"(3ULL)); /* RUP */
    if (div_d(one, three) != 0x3fd5555555555556) return 1;
    __asm__ volatile("frflags %0" : "=r"(v));
    if (v != 1) return 2; /* NX */
    __asm__ volatile("frcsr %0" : "=r"(v));
    if (v != (3 << 5 | 1)) return 3;
    __asm__ volatile("fsrmi 1"); /* RTZ */
    if (div_d(one, three) != 0x3fd5555555555555) return 4;
    /* a static rounding mode in the instruction wins over frm */
    __asm__ volatile("fsrmi 3\nfmv.d.x ft0, %1\nfmv.d.x ft1, %2\nfdiv.d ft2, ft0, ft1, rtz\nfmv.x.d %0, ft2"
                     : "=r"(r) : "r"(one), "r"(three) : "ft0", "ft1", "ft2");
    if (r != 0x3fd5555555555555) return 5;
    /* flags accumulate until cleared: DZ from 1/0, then NV from sqrt(-1), NX still set */
    __asm__ volatile("fsrmi 0");
    div_d(one, 0);
    __asm__ volatile("fmv.d.x ft0, %1\nfsqrt.d ft1, ft0\nfmv.x.d %0, ft1" : "=r"(r) : "r"(0xbff0000000000000ULL)
                     : "ft0", "ft1");
    if (r != 0x7ff8000000000000) return 6;
    __asm__ volatile("fsflags %0, zero" : "=r"(v)); /* read old flags and clear */
    if (v != (0x10 | 0x08 | 0x01)) return 7;
    __asm__ volatile("frflags %0" : "=r"(v));
    if (v != 0) return 8;
    /* NaN -> largest integer with NV */
    __asm__ volatile("fmv.d.x ft0, %1\nfcvt.w.d %0, ft0, rtz" : "=r"(r) : "r"(0x7ff8000000000000ULL) : "ft0");
    if (r != 0x7fffffff) return 9;
    __asm__ volatile("frflags %0" : "=r"(v));
    if (v != 0x10) return 10;
    /* fused: (1+2^-52)^2 - (1+2^-51) = 2^-104 exactly */
    __asm__ volatile("fmv.d.x ft0, %1\nfmv.d.x ft1, %2\nfmsub.d ft2, ft0, ft0, ft1\nfmv.x.d %0, ft2"
                     : "=r"(r) : "r"(0x3ff0000000000001ULL), "r"(0x3ff0000000000002ULL) : "ft0", "ft1", "ft2");
    if (r != 0x3970000000000000) return 11;
    /* a reserved frm makes dynamic-rm instructions illegal (cause 2) */
    trap_cause = 0;
    trap_hook = (uintptr_t)mtrap_skip;
    __asm__ volatile("fsrmi 5\nfadd.d ft0, ft0, ft0\nfsrmi 0" ::: "ft0", "memory");
    trap_hook = 0;
    if (trap_cause != 2) return 12;
    return 0;
}

int main(void) {
    int bad = checks();
    if (bad) return bad;
    sweep();
    put_str("done\n");
    return 0;
}
