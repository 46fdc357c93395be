"""RISC-V F and D extensions: the compute half of every floating-point instruction.

The core (``core.py``) does FP loads/stores, the ``mstatus.FS`` check and the fflags/frm/fcsr
CSRs; it calls :func:`fp_exec` for OP-FP (0x53) and the fused multiply-adds (0x43, 0x47, 0x4B,
0x4F). The host FPU only rounds to nearest and reports no flags through Numba, so this is a
soft-float on 64-bit integers in the style of Berkeley SoftFloat: operands are unpacked to
(sign, exponent, significand), computed exactly (128-bit products, long division, integer
square roots) with a sticky bit, and rounded once by :func:`_round_pack` in any of the five
RISC-V rounding modes with tininess detected after rounding. One generic code path serves
both formats: ``mb`` is the number of stored mantissa bits (23 for .S, 52 for .D).

Fast paths: in RNE, double add/sub/mul/div/sqrt/fma and single add/sub/mul/div/sqrt are
computed on the host FPU when an error-free transformation (TwoSum, an FMA residual, exact
products of singles in double) proves both the result and NX, and no value comes near the
subnormal range or overflow; everything else takes the integer path.
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

ILLEGAL = 1 << 31

# fflags bits
NV = 0x10
DZ = 0x08
OF = 0x04
UF = 0x02
NX = 0x01

# rounding modes
RNE = 0
RTZ = 1
RDN = 2
RUP = 3
RMM = 4

U = np.uint64
Z = U(0)
ONE = U(1)
TOP = U(1 << 63)
M32 = U(0xFFFFFFFF)
BOX = U(0xFFFFFFFF00000000)
CNAN_S = U(0x7FC00000)
CNAN_D = U(0x7FF8000000000000)

# ---------------------------------------------------------------------------------------------
# integer helpers


@intrinsic
def _ctlz(typingctx, x):
    """LLVM ctlz on a uint64 (64 for zero)."""

    def codegen(context, builder, sig, args):
        return builder.ctlz(args[0], ir.Constant(ir.IntType(1), 0))

    return types.uint64(types.uint64), codegen


@intrinsic
def _fma64(typingctx, a, b, c):
    """Host fused multiply-add a*b+c on doubles (one rounding, RNE): exactness checks of the fast path."""

    def codegen(context, builder, sig, args):
        return builder.fma(args[0], args[1], args[2])

    return types.float64(types.float64, types.float64, types.float64), codegen


@intrinsic
def _as_f64(typingctx, x):
    """Reinterpret uint64 bits as a double."""

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.uint64), codegen


@intrinsic
def _as_u64(typingctx, x):
    """Reinterpret a double as uint64 bits."""

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.uint64(types.float64), codegen


@intrinsic
def _s2d(typingctx, x):
    """Widen the single in the low 32 bits of a uint64 to a double (exact)."""

    def codegen(context, builder, sig, args):
        f = builder.bitcast(builder.trunc(args[0], ir.IntType(32)), ir.FloatType())
        return builder.fpext(f, ir.DoubleType())

    return types.float64(types.uint64), codegen


@intrinsic
def _d2s(typingctx, x):
    """Round a double to single (host RNE) and return its bits in a uint64."""

    def codegen(context, builder, sig, args):
        f = builder.fptrunc(args[0], ir.FloatType())
        return builder.zext(builder.bitcast(f, ir.IntType(32)), ir.IntType(64))

    return types.uint64(types.float64), codegen


@njit(cache=True, nogil=True)
def _clz(x):
    """Leading zero bits of a uint64 (64 for zero)."""
    return np.int64(_ctlz(x))


@njit(cache=True, nogil=True)
def _srj(a, n):
    """Shift a uint64 right by n >= 0, OR-ing every bit shifted out into bit 0 (sticky)."""
    if n <= 0:
        return a
    if n >= 64:
        return ONE if a != Z else Z
    sticky = ONE if (a << (64 - n)) != Z else Z
    return (a >> n) | sticky


@njit(cache=True, nogil=True)
def _mul128(a, b):
    """Full 64x64 -> 128-bit unsigned product as (hi, lo)."""
    a0 = a & M32
    a1 = a >> 32
    b0 = b & M32
    b1 = b >> 32
    p00 = a0 * b0
    p01 = a0 * b1
    p10 = a1 * b0
    p11 = a1 * b1
    mid = (p00 >> 32) + (p01 & M32) + (p10 & M32)
    lo = (p00 & M32) | (mid << 32)
    hi = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32)
    return hi, lo


@njit(cache=True, nogil=True)
def _shl128(hi, lo, n):
    """128-bit left shift by 0 <= n < 128."""
    if n == 0:
        return hi, lo
    if n >= 64:
        return lo << (n - 64), Z
    return (hi << n) | (lo >> (64 - n)), lo << n


@njit(cache=True, nogil=True)
def _srj128(hi, lo, n):
    """128-bit right shift by n >= 0 with sticky bit 0."""
    if n <= 0:
        return hi, lo
    if n >= 128:
        return Z, (ONE if (hi | lo) != Z else Z)
    if n >= 64:
        s = lo != Z
        if n > 64 and (hi << (128 - n)) != Z:
            s = True
        return Z, (hi >> (n - 64)) | (ONE if s else Z)
    s = ONE if (lo << (64 - n)) != Z else Z
    return hi >> n, (lo >> n) | (hi << (64 - n)) | s


# ---------------------------------------------------------------------------------------------
# format helpers (mb = stored mantissa bits: 23 or 52)


@njit(cache=True, nogil=True)
def _emax(mb):
    """All-ones exponent field of the format."""
    return 0xFF if mb == 23 else 0x7FF


@njit(cache=True, nogil=True)
def _bias(mb):
    """Exponent bias of the format."""
    return 127 if mb == 23 else 1023


@njit(cache=True, nogil=True)
def _sbit(mb):
    """Position of the sign bit."""
    return 31 if mb == 23 else 63


@njit(cache=True, nogil=True)
def _unpack(v, mb):
    """Split raw bits into (sign, exponent field, fraction)."""
    sign = np.int64((v >> _sbit(mb)) & ONE)
    exp = np.int64((v >> mb) & U(_emax(mb)))
    frac = v & ((ONE << mb) - ONE)
    return sign, exp, frac


@njit(cache=True, nogil=True)
def _norm(exp, frac, mb):
    """(exponent, significand with the leading one at bit mb) of a nonzero finite operand."""
    if exp != 0:
        return exp, frac | (ONE << mb)
    sh = _clz(frac) - (63 - mb)
    return 1 - sh, frac << sh


@njit(cache=True, nogil=True)
def _cnan(mb):
    """The canonical quiet NaN of the format."""
    return CNAN_S if mb == 23 else CNAN_D


@njit(cache=True, nogil=True)
def _inf(sign, mb):
    """Signed infinity."""
    return (U(sign) << _sbit(mb)) | (U(_emax(mb)) << mb)


@njit(cache=True, nogil=True)
def _zero(sign, mb):
    """Signed zero."""
    return U(sign) << _sbit(mb)


@njit(cache=True, nogil=True)
def _isnan(e, fr, mb):
    """True for any NaN."""
    return e == _emax(mb) and fr != Z


@njit(cache=True, nogil=True)
def _issnan(e, fr, mb):
    """True for a signaling NaN (quiet bit clear)."""
    return e == _emax(mb) and fr != Z and (fr >> (mb - 1)) == Z


@njit(cache=True, nogil=True)
def _round_pack(sign, exp, sig, mb, rm):
    """Round sig (leading one at bit 62, value sig/2^62 * 2^(exp+1-bias)) and pack; (bits, flags).

    Handles overflow (to inf or max-finite per rounding mode) and subnormal results with
    tininess detected after rounding, like RISC-V hardware.
    """
    rb = 62 - mb
    mask = (ONE << rb) - ONE
    half = ONE << (rb - 1)
    if rm == RNE or rm == RMM:
        inc = half
    elif rm == RTZ:
        inc = Z
    elif rm == RDN:
        inc = mask if sign else Z
    else:
        inc = Z if sign else mask
    emax = _emax(mb)
    flags = 0
    if exp < 0:
        tiny = exp < -1 or sig + inc < TOP
        sig = _srj(sig, -exp)
        exp = 0
        if tiny and (sig & mask) != Z:
            flags |= UF
    elif exp >= emax - 2 and (exp > emax - 2 or sig + inc >= TOP):
        flags |= OF | NX
        top = _inf(sign, mb)
        if inc == Z:
            top -= ONE
        return top, flags
    rbits = sig & mask
    if rbits != Z:
        flags |= NX
    sig = (sig + inc) >> rb
    if rm == RNE and rbits == half:
        sig &= ~ONE
    if sig == Z:
        exp = 0
    return (U(sign) << _sbit(mb)) + (U(exp) << mb) + sig, flags


# ---------------------------------------------------------------------------------------------
# arithmetic


@njit(cache=True, nogil=True)
def _add(a, b, mb, rm):
    """a + b (call with b's sign flipped for subtraction)."""
    sa, ea, fa = _unpack(a, mb)
    sb, eb, fb = _unpack(b, mb)
    emax = _emax(mb)
    if _isnan(ea, fa, mb) or _isnan(eb, fb, mb):
        return _cnan(mb), (NV if _issnan(ea, fa, mb) or _issnan(eb, fb, mb) else 0)
    if ea == emax:
        if eb == emax and sa != sb:
            return _cnan(mb), NV
        return a, 0
    if eb == emax:
        return b, 0
    if ea == 0 and fa == Z:
        if eb == 0 and fb == Z:
            if sa == sb:
                return a, 0
            return _zero(1 if rm == RDN else 0, mb), 0
        return b, 0
    if eb == 0 and fb == Z:
        return a, 0
    xa, ma = _norm(ea, fa, mb)
    xb, mq = _norm(eb, fb, mb)
    ma = ma << (61 - mb)
    mq = mq << (61 - mb)
    if xa < xb or (xa == xb and ma < mq):
        xa, xb = xb, xa
        ma, mq = mq, ma
        sa, sb = sb, sa
    mq = _srj(mq, xa - xb)
    if sa == sb:
        m = ma + mq
    else:
        m = ma - mq
        if m == Z:
            return _zero(1 if rm == RDN else 0, mb), 0
    k = _clz(m) - 1
    return _round_pack(sa, xa - k, m << k, mb, rm)


@njit(cache=True, nogil=True)
def _mul(a, b, mb, rm):
    """a * b."""
    sa, ea, fa = _unpack(a, mb)
    sb, eb, fb = _unpack(b, mb)
    emax = _emax(mb)
    s = sa ^ sb
    if _isnan(ea, fa, mb) or _isnan(eb, fb, mb):
        return _cnan(mb), (NV if _issnan(ea, fa, mb) or _issnan(eb, fb, mb) else 0)
    za = ea == 0 and fa == Z
    zb = eb == 0 and fb == Z
    if ea == emax or eb == emax:
        if za or zb:
            return _cnan(mb), NV
        return _inf(s, mb), 0
    if za or zb:
        return _zero(s, mb), 0
    xa, ma = _norm(ea, fa, mb)
    xb, mq = _norm(eb, fb, mb)
    hi, lo = _mul128(ma << (62 - mb), mq << (63 - mb))
    sig = hi | (ONE if lo != Z else Z)
    exp = xa + xb - _bias(mb)
    if sig < (ONE << 62):
        exp -= 1
        sig = sig << 1
    return _round_pack(s, exp, sig, mb, rm)


@njit(cache=True, nogil=True)
def _div(a, b, mb, rm):
    """a / b by long division in chunks that fit 64 bits."""
    sa, ea, fa = _unpack(a, mb)
    sb, eb, fb = _unpack(b, mb)
    emax = _emax(mb)
    s = sa ^ sb
    if _isnan(ea, fa, mb) or _isnan(eb, fb, mb):
        return _cnan(mb), (NV if _issnan(ea, fa, mb) or _issnan(eb, fb, mb) else 0)
    za = ea == 0 and fa == Z
    zb = eb == 0 and fb == Z
    if ea == emax:
        if eb == emax:
            return _cnan(mb), NV
        return _inf(s, mb), 0
    if eb == emax:
        return _zero(s, mb), 0
    if zb:
        if za:
            return _cnan(mb), NV
        return _inf(s, mb), DZ
    if za:
        return _zero(s, mb), 0
    xa, ma = _norm(ea, fa, mb)
    xb, mq = _norm(eb, fb, mb)
    exp = xa - xb + _bias(mb) - 1
    if ma < mq:
        ma = ma << 1
        exp -= 1
    q = ma // mq
    r = ma - q * mq
    left = 62
    chunk = 62 - mb
    while left > 0:
        n = chunk if chunk < left else left
        r = r << n
        d = r // mq
        r -= d * mq
        q = (q << n) | d
        left -= n
    if r != Z:
        q |= ONE
    return _round_pack(s, exp, q, mb, rm)


@njit(cache=True, nogil=True)
def _lt128(ah, al, bh, bl):
    """(ah:al) < (bh:bl), unsigned."""
    return ah < bh or (ah == bh and al < bl)


@njit(cache=True, nogil=True)
def _sqrt(a, mb, rm):
    """Square root: host sqrt estimate of the integer root, then corrected exactly in 128 bits."""
    sa, ea, fa = _unpack(a, mb)
    emax = _emax(mb)
    if _isnan(ea, fa, mb):
        return _cnan(mb), (NV if _issnan(ea, fa, mb) else 0)
    if ea == 0 and fa == Z:
        return a, 0
    if sa:
        return _cnan(mb), NV
    if ea == emax:
        return a, 0
    xa, ma = _norm(ea, fa, mb)
    e = xa - _bias(mb)
    j = mb + 2 if (e & 1) == 0 else mb + 3
    mh = ma >> (64 - j)
    ml = ma << j
    y = U(math.sqrt(float(ma) * (2.0**j)))
    while True:
        ph, pl = _mul128(y, y)
        if not _lt128(mh, ml, ph, pl):
            break
        y -= ONE
    while True:
        ph, pl = _mul128(y + ONE, y + ONE)
        if _lt128(mh, ml, ph, pl):
            break
        y += ONE
    ph, pl = _mul128(y, y)
    L = 63 - _clz(y)
    sig = y << (62 - L)
    if ph != mh or pl != ml:
        sig |= ONE
    exp = _bias(mb) - 1 + L + (e - mb - j) // 2
    return _round_pack(0, exp, sig, mb, rm)


@njit(cache=True, nogil=True)
def _fma(a, b, c, mb, rm, negp, negc):
    """(+/-)(a * b) (+/-) c with a single rounding: exact 128-bit product, aligned exact sum."""
    sa, ea, fa = _unpack(a, mb)
    sb, eb, fb = _unpack(b, mb)
    sc, ec, fc = _unpack(c, mb)
    emax = _emax(mb)
    sp = sa ^ sb ^ negp
    sc = sc ^ negc
    za = ea == 0 and fa == Z
    zb = eb == 0 and fb == Z
    zc = ec == 0 and fc == Z
    if _isnan(ea, fa, mb) or _isnan(eb, fb, mb) or _isnan(ec, fc, mb):
        fl = 0
        if _issnan(ea, fa, mb) or _issnan(eb, fb, mb) or _issnan(ec, fc, mb):
            fl = NV
        if (ea == emax and fa == Z and zb) or (eb == emax and fb == Z and za):
            fl = NV
        return _cnan(mb), fl
    if ea == emax or eb == emax:
        if za or zb:
            return _cnan(mb), NV
        if ec == emax and sc != sp:
            return _cnan(mb), NV
        return _inf(sp, mb), 0
    if ec == emax:
        return _inf(sc, mb), 0
    if za or zb:
        if zc:
            if sp == sc:
                return _zero(sp, mb), 0
            return _zero(1 if rm == RDN else 0, mb), 0
        return (c & ~(ONE << _sbit(mb))) | (U(sc) << _sbit(mb)), 0
    bias = _bias(mb)
    xa, ma = _norm(ea, fa, mb)
    xb, mq = _norm(eb, fb, mb)
    ph, pl = _mul128(ma, mq)
    ph, pl = _shl128(ph, pl, 124 - 2 * mb)
    ep = xa + xb - 2 * bias - 124
    s = sp
    if zc:
        hh, ll = ph, pl
        e = ep
    else:
        xc, mc = _norm(ec, fc, mb)
        ch, cl = _shl128(Z, mc, 125 - mb)
        ecc = xc - bias - 125
        if ep >= ecc:
            ch, cl = _srj128(ch, cl, ep - ecc)
            e = ep
        else:
            ph, pl = _srj128(ph, pl, ecc - ep)
            e = ecc
        if sp == sc:
            ll = pl + cl
            hh = ph + ch + (ONE if ll < pl else Z)
        else:
            if _lt128(ph, pl, ch, cl):
                ph, pl, ch, cl = ch, cl, ph, pl
                s = sc
            ll = pl - cl
            hh = ph - ch - (ONE if pl < cl else Z)
            if hh == Z and ll == Z:
                return _zero(1 if rm == RDN else 0, mb), 0
    if hh != Z:
        L = 127 - _clz(hh)
    else:
        L = 63 - _clz(ll)
    if L >= 62:
        hh, ll = _srj128(hh, ll, L - 62)
        sig = ll
    else:
        sig = ll << (62 - L)
    return _round_pack(s, L + e + bias - 1, sig, mb, rm)


# ---------------------------------------------------------------------------------------------
# conversions, comparisons, classification


@njit(cache=True, nogil=True)
def _from_int(v, neg, mb, rm):
    """Convert the magnitude v (uint64) with sign neg to the format."""
    if v == Z:
        return Z, 0
    L = 63 - _clz(v)
    if L == 63:
        sig = _srj(v, 1)
    else:
        sig = v << (62 - L)
    return _round_pack(neg, L + _bias(mb) - 1, sig, mb, rm)


@njit(cache=True, nogil=True)
def _to_int(a, mb, rm, kind):
    """Convert to integer kind 0=W, 1=WU, 2=L, 3=LU; returns (uint64 result, flags)."""
    s, e, fr = _unpack(a, mb)
    if kind == 0:
        pmax = U(0x7FFFFFFF)
        nmax = U(0x80000000)
    elif kind == 1:
        pmax = M32
        nmax = Z
    elif kind == 2:
        pmax = U(0x7FFFFFFFFFFFFFFF)
        nmax = TOP
    else:
        pmax = U(0xFFFFFFFFFFFFFFFF)
        nmax = Z
    if e == _emax(mb):
        if fr != Z or s == 0:
            return pmax, NV
        return (Z - nmax), NV
    if e == 0 and fr == Z:
        return Z, 0
    x, m = _norm(e, fr, mb)
    sh = x - _bias(mb) - mb
    flags = 0
    if sh >= 0:
        if mb + 1 + sh > 64:
            return (Z - nmax if s else pmax), NV
        q = m << sh
    else:
        t = _srj(m << 2, -sh)
        q = t >> 2
        g = t & U(3)
        if g != Z:
            flags = NX
            up = False
            if rm == RNE:
                up = g > U(2) or (g == U(2) and (q & ONE) != Z)
            elif rm == RDN:
                up = s == 1
            elif rm == RUP:
                up = s == 0
            elif rm == RMM:
                up = g >= U(2)
            if up:
                q += ONE
    if s:
        if q > nmax:
            return Z - nmax, NV
        return Z - q, flags
    if q > pmax:
        return pmax, NV
    return q, flags


@njit(cache=True, nogil=True)
def _cvt_ff(v, mf, mt, rm):
    """Convert between formats: mf = source mantissa bits, mt = destination mantissa bits."""
    s, e, fr = _unpack(v, mf)
    if _isnan(e, fr, mf):
        return _cnan(mt), (NV if _issnan(e, fr, mf) else 0)
    if e == _emax(mf):
        return _inf(s, mt), 0
    if e == 0 and fr == Z:
        return _zero(s, mt), 0
    x, m = _norm(e, fr, mf)
    return _round_pack(s, x - _bias(mf) + _bias(mt) - 1, m << (62 - mf), mt, rm)


@njit(cache=True, nogil=True)
def _classify(v, mb):
    """FCLASS 10-bit mask."""
    s, e, fr = _unpack(v, mb)
    if e == _emax(mb):
        if fr == Z:
            return 1 if s else 1 << 7
        return 1 << 8 if (fr >> (mb - 1)) == Z else 1 << 9
    if e == 0:
        if fr == Z:
            return 1 << 3 if s else 1 << 4
        return 1 << 2 if s else 1 << 5
    return 1 << 1 if s else 1 << 6


@njit(cache=True, nogil=True)
def _key(v, mb):
    """Signed integer that orders finite/infinite values like the reals (-0 == +0)."""
    mag = np.int64(v & ((ONE << _sbit(mb)) - ONE))
    return -mag if (v >> _sbit(mb)) != Z else mag


@njit(cache=True, nogil=True)
def _compare(a, b, mb, kind):
    """kind 2=FEQ (quiet), 1=FLT, 0=FLE (signaling); (0/1, flags)."""
    sa, ea, fa = _unpack(a, mb)
    sb, eb, fb = _unpack(b, mb)
    if _isnan(ea, fa, mb) or _isnan(eb, fb, mb):
        if kind != 2 or _issnan(ea, fa, mb) or _issnan(eb, fb, mb):
            return 0, NV
        return 0, 0
    ka = _key(a, mb)
    kb = _key(b, mb)
    if kind == 2:
        return (1 if ka == kb else 0), 0
    if kind == 1:
        return (1 if ka < kb else 0), 0
    return (1 if ka <= kb else 0), 0


@njit(cache=True, nogil=True)
def _minmax(a, b, mb, is_max):
    """IEEE 754-2019 minimumNumber/maximumNumber with -0 < +0; sNaN raises NV."""
    sa, ea, fa = _unpack(a, mb)
    sb, eb, fb = _unpack(b, mb)
    na = _isnan(ea, fa, mb)
    nb = _isnan(eb, fb, mb)
    fl = NV if _issnan(ea, fa, mb) or _issnan(eb, fb, mb) else 0
    if na and nb:
        return _cnan(mb), fl
    if na:
        return b, fl
    if nb:
        return a, fl
    if sa != sb:
        a_less = sa == 1
    else:
        ka = _key(a, mb)
        kb = _key(b, mb)
        a_less = ka < kb
    if is_max:
        return (b if a_less else a), fl
    return (a if a_less else b), fl


# ---------------------------------------------------------------------------------------------
# fast path: double precision, round-to-nearest-even, on the host FPU when provably exact


@njit(cache=True, nogil=True)
def _fast_d(f5, a, b):
    """FADD/FSUB/FMUL/FDIV/FSQRT.D in RNE on host doubles; (done, bits, flags).

    The host computes the correctly rounded RNE result; NX comes from an exact error term
    (TwoSum for sums, a fused multiply-add residual for products, quotients and roots). Only
    operands and results far from the subnormal range and overflow are accepted (so the error
    term is representable and OF/UF cannot occur); everything else goes to the soft-float.
    """
    ea = (a >> 52) & U(0x7FF)
    eb = (b >> 52) & U(0x7FF)
    if ea == U(0x7FF) or eb == U(0x7FF):
        return False, Z, 0
    x = _as_f64(a)
    y = _as_f64(b)
    lo = U(0x070)
    hi = U(0x780)
    if f5 <= 1:
        # operands >= 2^-911: sums, differences and the TwoSum error are never subnormal, so
        # even a host with flush-to-zero enabled computes them exactly
        if ea < lo or eb < lo:
            return False, Z, 0
        if f5 == 1:
            y = -y
        r = x + y
        ru = _as_u64(r)
        if ((ru >> 52) & U(0x7FF)) == U(0x7FF):
            return False, Z, 0
        bb = r - x
        err = (x - (r - bb)) + (y - bb)
        return True, ru, (NX if err != 0.0 else 0)
    if f5 == 0x0B:
        if ea < lo or (a >> 63) != Z:
            return False, Z, 0
        r = math.sqrt(x)
        return True, _as_u64(r), (NX if _fma64(r, r, -x) != 0.0 else 0)
    if ea < lo or eb < lo or ea > hi or eb > hi:
        return False, Z, 0
    if f5 == 2:
        r = x * y
        er = (_as_u64(r) >> 52) & U(0x7FF)
        if er < lo or er > hi:
            return False, Z, 0
        return True, _as_u64(r), (NX if _fma64(x, y, -r) != 0.0 else 0)
    r = x / y
    er = (_as_u64(r) >> 52) & U(0x7FF)
    if er < lo or er > hi:
        return False, Z, 0
    return True, _as_u64(r), (NX if _fma64(-r, y, x) != 0.0 else 0)


@njit(cache=True, nogil=True)
def _two_sum(a, b):
    """Knuth's TwoSum: (s, e) with s = RN(a + b) and s + e == a + b exactly."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


@njit(cache=True, nogil=True)
def _fast_fma_d(a, b, c, negp, negc):
    """FMADD-family .D in RNE with the host's fused multiply-add; (done, bits, flags).

    Exactness: a*b = ph + pl exactly (pl from an FMA), then ph + pl + c - r is summed into a
    nonoverlapping expansion with TwoSum (Shewchuk's Grow-Expansion); it is zero, and the
    result exact, only when every component is zero. All operands and intermediate values are
    kept far from subnormals and overflow; the rest goes to the soft-float.
    """
    lo = U(0x070)
    hi = U(0x780)
    ea = (a >> 52) & U(0x7FF)
    eb = (b >> 52) & U(0x7FF)
    ec = (c >> 52) & U(0x7FF)
    if ea < lo or eb < lo or ec < lo or ea > hi or eb > hi or ec > hi:
        return False, Z, 0
    x = _as_f64(a)
    y = _as_f64(b)
    z = _as_f64(c)
    if negp:
        x = -x
    if negc:
        z = -z
    ph = x * y
    eph = (_as_u64(ph) >> 52) & U(0x7FF)
    if eph < lo or eph > hi:
        return False, Z, 0
    r = _fma64(x, y, z)
    ru = _as_u64(r)
    er = (ru >> 52) & U(0x7FF)
    if er < lo or er > hi:
        return False, Z, 0
    pl = _fma64(x, y, -ph)
    a1, a0 = _two_sum(ph, pl)
    q, b0 = _two_sum(z, a0)
    q, b1 = _two_sum(q, a1)
    q2, c0 = _two_sum(-r, b0)
    q2, c1 = _two_sum(q2, b1)
    q2, c2 = _two_sum(q2, q)
    exact = c0 == 0.0 and c1 == 0.0 and c2 == 0.0 and q2 == 0.0
    return True, ru, (0 if exact else NX)


@njit(cache=True, nogil=True)
def _fast_s(f5, a, b):
    """FADD/FSUB/FMUL/FDIV/FSQRT.S in RNE via host doubles; (done, bits, flags).

    Doubles carry more than 2*24+2 bits, so rounding the double result to single is correctly
    rounded for these operations (double rounding is innocuous). Products of singles are exact
    in double, which gives NX exactly; results near underflow or overflow go to the soft-float.
    """
    ea = (a >> 23) & U(0xFF)
    eb = (b >> 23) & U(0xFF)
    if ea == U(0xFF) or eb == U(0xFF):
        return False, Z, 0
    x = _s2d(a)
    y = _s2d(b)
    if f5 <= 1:
        if f5 == 1:
            y = -y
        rd = x + y
        r = _d2s(rd)
        er = (r >> 23) & U(0xFF)
        if er == U(0xFF) or er == Z:  # overflow; zero or subnormal results take the exact path
            return False, Z, 0
        bb = rd - x
        err = (x - (rd - bb)) + (y - bb)
        return True, r, (NX if err != 0.0 or _s2d(r) != rd else 0)
    if f5 == 0x0B:
        if (a >> 31) != Z or (a & U(0x7FFFFFFF)) == Z:
            return False, Z, 0
        r = _d2s(math.sqrt(x))
        q = _s2d(r)
        return True, r, (NX if q * q != x else 0)
    if f5 == 2:
        rd = x * y
    else:
        if (b & U(0x7FFFFFFF)) == Z:
            return False, Z, 0
        rd = x / y
    r = _d2s(rd)
    er = (r >> 23) & U(0xFF)
    if er < U(2) or er > U(0xFD):
        return False, Z, 0
    if f5 == 2:
        return True, r, (NX if _s2d(r) != rd else 0)
    return True, r, (NX if _s2d(r) * y != x else 0)


# ---------------------------------------------------------------------------------------------
# register access and dispatch


# The dispatcher works on scalars only: fp_exec reads the source registers, calls _exec and
# writes the one result, so the register-file arrays are touched in a single small function
# (no per-path array reference counting in the hot path).

TO_F = 0  # _exec result goes to f[rd]
TO_X = 1  # ... to x[rd]
NOWHERE = 2  # illegal: nothing written


@njit(cache=True, nogil=True)
def _unbox(v, fmt):
    """An FP operand of the format; a single that is not NaN-boxed reads as the canonical NaN."""
    if fmt == 0:
        if (v >> 32) != M32:
            return CNAN_S
        return v & M32
    return v


@njit(cache=True, nogil=True)
def _box(v, fmt):
    """Register image of a result: singles NaN-boxed."""
    if fmt == 0:
        return (v & M32) | BOX
    return v


@njit(cache=True, nogil=True)
def _sext32(v):
    """Sign-extend the low 32 bits of a uint64."""
    v = v & M32
    if (v >> 31) != Z:
        v |= BOX
    return v


@njit(cache=True, nogil=True)
def _rmode(rm, frm):
    """Effective rounding mode, or -1 when reserved (rm 5/6, or DYN with frm >= 5)."""
    if rm == 7:
        rm = frm
    if rm < 0 or rm > 4:
        return -1
    return rm


@njit(cache=True, nogil=True)
def _exec(insn, frm, r1, r2, r3, xv):
    """Decode and compute on raw register values (f[rs1], f[rs2], f[rs3], x[rs1]).

    Returns (destination TO_F/TO_X/NOWHERE, raw value to write, flags or ILLEGAL).
    """
    op = insn & 0x7F
    f3 = (insn >> 12) & 7
    rs2 = (insn >> 20) & 31
    fmt = (insn >> 25) & 3
    if fmt > 1:
        return NOWHERE, Z, ILLEGAL
    mb = 23 if fmt == 0 else 52
    sgn = ONE << _sbit(mb)
    if op != 0x53:
        if op != 0x43 and op != 0x47 and op != 0x4B and op != 0x4F:
            return NOWHERE, Z, ILLEGAL
        rm = _rmode(f3, frm)
        if rm < 0:
            return NOWHERE, Z, ILLEGAL
        negp = 1 if (op == 0x4B or op == 0x4F) else 0
        negc = 1 if (op == 0x47 or op == 0x4F) else 0
        if fmt == 1 and rm == RNE:
            ok, r, fl = _fast_fma_d(r1, r2, r3, negp, negc)
            if ok:
                return TO_F, r, fl
        r, fl = _fma(_unbox(r1, fmt), _unbox(r2, fmt), _unbox(r3, fmt), mb, rm, negp, negc)
        return TO_F, _box(r, fmt), fl
    f5 = (insn >> 27) & 31
    if f5 <= 3 or f5 == 0x0B or f5 == 0x08 or f5 == 0x18 or f5 == 0x1A:
        rm = _rmode(f3, frm)
        if rm < 0:
            return NOWHERE, Z, ILLEGAL
        if rm == RNE and (f5 <= 3 or (f5 == 0x0B and rs2 == 0)):
            if fmt == 1:
                ok, r, fl = _fast_d(f5, r1, r2)
                if ok:
                    return TO_F, r, fl
            elif (r1 >> 32) == M32 and ((r2 >> 32) == M32 or f5 == 0x0B):
                ok, r, fl = _fast_s(f5, r1 & M32, r2 & M32)
                if ok:
                    return TO_F, r | BOX, fl
        if f5 <= 3:
            a = _unbox(r1, fmt)
            b = _unbox(r2, fmt)
            if f5 == 0:
                r, fl = _add(a, b, mb, rm)
            elif f5 == 1:
                r, fl = _add(a, b ^ sgn, mb, rm)
            elif f5 == 2:
                r, fl = _mul(a, b, mb, rm)
            else:
                r, fl = _div(a, b, mb, rm)
            return TO_F, _box(r, fmt), fl
        if f5 == 0x0B:
            if rs2 != 0:
                return NOWHERE, Z, ILLEGAL
            r, fl = _sqrt(_unbox(r1, fmt), mb, rm)
            return TO_F, _box(r, fmt), fl
        if f5 == 0x08:
            # FCVT.S.D (fmt 0, rs2 1) / FCVT.D.S (fmt 1, rs2 0)
            if rs2 != 1 - fmt:
                return NOWHERE, Z, ILLEGAL
            src = 1 - fmt
            r, fl = _cvt_ff(_unbox(r1, src), 52 if src == 1 else 23, mb, rm)
            return TO_F, _box(r, fmt), fl
        if rs2 > 3:
            return NOWHERE, Z, ILLEGAL
        if f5 == 0x18:
            r, fl = _to_int(_unbox(r1, fmt), mb, rm, rs2)
            if rs2 < 2:
                r = _sext32(r)
            return TO_X, r, fl
        v = xv
        neg = 0
        if rs2 == 0:
            v = _sext32(v)
        elif rs2 == 1:
            v = v & M32
        if (rs2 == 0 or rs2 == 2) and (v >> 63) != Z:
            neg = 1
            v = Z - v
        r, fl = _from_int(v, neg, mb, rm)
        return TO_F, _box(r, fmt), fl
    if f5 == 0x04:
        if f3 > 2:
            return NOWHERE, Z, ILLEGAL
        a = _unbox(r1, fmt)
        b = _unbox(r2, fmt)
        if f3 == 0:
            r = (a & ~sgn) | (b & sgn)
        elif f3 == 1:
            r = (a & ~sgn) | (~b & sgn)
        else:
            r = a ^ (b & sgn)
        return TO_F, _box(r, fmt), 0
    if f5 == 0x05:
        if f3 > 1:
            return NOWHERE, Z, ILLEGAL
        r, fl = _minmax(_unbox(r1, fmt), _unbox(r2, fmt), mb, f3 == 1)
        return TO_F, _box(r, fmt), fl
    if f5 == 0x14:
        if f3 > 2:
            return NOWHERE, Z, ILLEGAL
        c, fl = _compare(_unbox(r1, fmt), _unbox(r2, fmt), mb, f3)
        return TO_X, U(c), fl
    if f5 == 0x1C:
        if rs2 != 0 or f3 > 1:
            return NOWHERE, Z, ILLEGAL
        if f3 == 1:
            return TO_X, U(_classify(_unbox(r1, fmt), mb)), 0
        return TO_X, (_sext32(r1) if fmt == 0 else r1), 0
    if f5 == 0x1E:
        if rs2 != 0 or f3 != 0:
            return NOWHERE, Z, ILLEGAL
        return TO_F, _box(xv, fmt), 0
    return NOWHERE, Z, ILLEGAL


@njit(cache=True, nogil=True)
def fp_exec(insn: int, frm: int, x: np.ndarray, f: np.ndarray) -> int:
    """Execute one FP compute instruction on one hart's x/f files; return accrued fflags or ILLEGAL."""
    rd = (insn >> 7) & 31
    rs1 = (insn >> 15) & 31
    dest, v, fl = _exec(insn, frm, U(f[rs1]), U(f[(insn >> 20) & 31]), U(f[(insn >> 27) & 31]), U(x[rs1]))
    if dest == TO_F:
        f[rd] = np.int64(v)
    elif dest == TO_X and rd != 0:
        x[rd] = np.int64(v)
    return fl
