/* Differential program: integer instructions (RV64IM + A + shifts) on pseudo-random and edge
 * inputs; prints one hex line per input pair so virtkit and QEMU can be compared byte for byte. */
#include "lib.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng;
}

static const uint64_t edges[] = {0, 1, 2, 0x7fffffffffffffffull, 0x8000000000000000ull, 0xffffffffffffffffull,
                                 0x7fffffff, 0x80000000, 0xffffffff, 0xffffffff80000000ull, 31, 32, 63, 64};

#define OP2(name) static uint64_t op_##name(uint64_t a, uint64_t b) { \
    uint64_t r; __asm__ volatile(#name " %0, %1, %2" : "=r"(r) : "r"(a), "r"(b)); return r; }
OP2(add) OP2(sub) OP2(sll) OP2(srl) OP2(sra) OP2(slt) OP2(sltu) OP2(xor) OP2(or) OP2(and)
OP2(addw) OP2(subw) OP2(sllw) OP2(srlw) OP2(sraw)
OP2(mul) OP2(mulh) OP2(mulhsu) OP2(mulhu) OP2(div) OP2(divu) OP2(rem) OP2(remu)
OP2(mulw) OP2(divw) OP2(divuw) OP2(remw) OP2(remuw)

typedef uint64_t (*op2)(uint64_t, uint64_t);
static const op2 ops[] = {op_add, op_sub, op_sll, op_srl, op_sra, op_slt, op_sltu, op_xor, op_or, op_and,
                          op_addw, op_subw, op_sllw, op_srlw, op_sraw, op_mul, op_mulh, op_mulhsu, op_mulhu,
                          op_div, op_divu, op_rem, op_remu, op_mulw, op_divw, op_divuw, op_remw, op_remuw};

#define AMO(name, w) static uint64_t amo_##name##_##w(uint64_t *p, uint64_t v) { \
    uint64_t r; __asm__ volatile(#name "." #w " %0, %2, (%1)" : "=r"(r) : "r"(p), "r"(v) : "memory"); return r; }
AMO(amoswap, d) AMO(amoadd, d) AMO(amoand, d) AMO(amoor, d) AMO(amoxor, d) AMO(amomin, d) AMO(amomax, d)
AMO(amominu, d) AMO(amomaxu, d) AMO(amoswap, w) AMO(amoadd, w) AMO(amoand, w) AMO(amoor, w) AMO(amoxor, w)
AMO(amomin, w) AMO(amomax, w) AMO(amominu, w) AMO(amomaxu, w)
typedef uint64_t (*amo)(uint64_t *, uint64_t);
static const amo amos[] = {amo_amoswap_d, amo_amoadd_d, amo_amoand_d, amo_amoor_d, amo_amoxor_d, amo_amomin_d,
                           amo_amomax_d, amo_amominu_d, amo_amomaxu_d, amo_amoswap_w, amo_amoadd_w, amo_amoand_w,
                           amo_amoor_w, amo_amoxor_w, amo_amomin_w, amo_amomax_w, amo_amominu_w, amo_amomaxu_w};

static uint64_t pick(int i) {
    uint64_t r = next();
    if (i % 3 == 0) return edges[r % (sizeof edges / sizeof edges[0])];
    if (i % 3 == 1) return r >> (r & 63);
    return r;
}

static uint64_t cell[2] __attribute__((aligned(16)));

int main(void) {
    put_str("diff_int\n");
    for (int i = 0; i < 120; i++) {
        uint64_t a = pick(i), b = pick(i + 1);
        put_hex64(a); htif_putchar(' '); put_hex64(b); htif_putchar(':');
        for (unsigned k = 0; k < sizeof ops / sizeof ops[0]; k++) {
            htif_putchar(' ');
            put_hex64(ops[k](a, b));
        }
        for (unsigned k = 0; k < sizeof amos / sizeof amos[0]; k++) {
            cell[0] = a;
            uint64_t old = amos[k](&cell[0], b);
            htif_putchar(' '); put_hex64(old); htif_putchar('/'); put_hex64(cell[0]);
        }
        htif_putchar('\n');
    }
    put_str("end\n");
    return 0;
}
