"""Exact reference for IEEE binary32/64 rounding (RISC-V flavour: tininess after rounding)."""

import math
import struct
from fractions import Fraction as F

NX, UF, OF, DZ, NV = 1, 2, 4, 8, 16
FMT = {"s": (8, 23), "d": (11, 52)}
RNE, RTZ, RDN, RUP, RMM = 0, 1, 2, 3, 4


def decode(bits, f):
    eb, mb = FMT[f]
    sign = bits >> (eb + mb) & 1
    e = bits >> mb & ((1 << eb) - 1)
    m = bits & ((1 << mb) - 1)
    bias = (1 << (eb - 1)) - 1
    if e == (1 << eb) - 1:
        if m == 0:
            return ("inf", sign)
        return ("snan" if not (m >> (mb - 1)) else "qnan", sign)
    if e == 0:
        v = F(m, 1 << mb) * F(2) ** (1 - bias)
    else:
        v = (1 + F(m, 1 << mb)) * F(2) ** (e - bias)
    return ("num", -v if sign else v, sign)


def inf(f, sign):
    eb, mb = FMT[f]
    return (sign << (eb + mb)) | (((1 << eb) - 1) << mb)


def maxfin(f, sign):
    eb, mb = FMT[f]
    return (sign << (eb + mb)) | (((1 << eb) - 2) << mb) | ((1 << mb) - 1)


def qnan(f):
    return 0x7FC00000 if f == "s" else 0x7FF8000000000000


def zero(f, sign):
    eb, mb = FMT[f]
    return sign << (eb + mb)


def flog2(a):
    e = a.numerator.bit_length() - a.denominator.bit_length()
    while F(2) ** e > a:
        e -= 1
    while F(2) ** (e + 1) <= a:
        e += 1
    return e


def rnd_int(n, sign, mode):
    """round positive Fraction n to an integer; returns (int, inexact)"""
    fl = n.numerator // n.denominator
    rem = n - fl
    if rem == 0:
        return fl, False
    if mode == RTZ:
        r = fl
    elif mode == RDN:
        r = fl + (1 if sign else 0)
    elif mode == RUP:
        r = fl + (0 if sign else 1)
    elif mode == RNE:
        r = fl + 1 if rem > F(1, 2) or (rem == F(1, 2) and fl % 2 == 1) else fl
    elif mode == RMM:
        r = fl + 1 if rem >= F(1, 2) else fl
    return r, True


def round_to(v, f, mode, zero_sign=0):
    eb, mb = FMT[f]
    bias = (1 << (eb - 1)) - 1
    emin, emax = 1 - bias, bias
    if v == 0:
        return zero(f, zero_sign), 0
    sign = 1 if v < 0 else 0
    a = -v if sign else v
    e = flog2(a)
    # tininess after rounding with unbounded exponent
    q = F(2) ** (e - mb)
    m_unb, _ = rnd_int(a / q, sign, mode)
    tiny = (m_unb * q) < F(2) ** emin
    ec = max(e, emin)
    q = F(2) ** (ec - mb)
    m, inexact = rnd_int(a / q, sign, mode)
    if m == 1 << (mb + 1):
        m >>= 1
        ec += 1
    flags = NX if inexact else 0
    if ec > emax:
        flags = OF | NX
        to_inf = mode in (RNE, RMM) or (mode == RUP and not sign) or (mode == RDN and sign)
        return (inf(f, sign) if to_inf else maxfin(f, sign)), flags
    if tiny and inexact:
        flags |= UF
    if m < (1 << mb):
        bits = (sign << (eb + mb)) | m
    else:
        bits = (sign << (eb + mb)) | ((ec + bias) << mb) | (m - (1 << mb))
    return bits, flags


def b2f(bits, f):
    return (
        struct.unpack("<f", struct.pack("<I", bits))[0] if f == "s" else struct.unpack("<d", struct.pack("<Q", bits))[0]
    )


def f2b(x, f):
    return struct.unpack("<I", struct.pack("<f", x))[0] if f == "s" else struct.unpack("<Q", struct.pack("<d", x))[0]


def arith(op, f, mode, *bits):
    ds = [decode(b, f) for b in bits]
    nv = any(d[0] == "snan" for d in ds)
    if op.startswith("fm") or op.startswith("fnm"):
        a, b = ds[0], ds[1]
        if (a[0] == "inf" and b[0] == "num" and b[1] == 0) or (b[0] == "inf" and a[0] == "num" and a[1] == 0):
            return qnan(f), NV  # inf * 0 is invalid even when the addend is a quiet NaN
    if any(d[0] in ("snan", "qnan") for d in ds):
        return qnan(f), NV if nv else 0

    def val(d):
        return d[1]

    if op in ("add", "sub"):
        a, b = ds
        bsign = b[-1] ^ (op == "sub")
        if a[0] == "inf" or b[0] == "inf":
            if a[0] == "inf" and b[0] == "inf" and a[1] != bsign:
                return qnan(f), NV
            return (inf(f, a[1]) if a[0] == "inf" else inf(f, bsign)), 0
        av = a[1]
        bv = -b[1] if op == "sub" else b[1]
        r = av + bv
        if r == 0:
            if av == 0 and bv == 0 and a[2] == bsign:
                zs = a[2]
            else:
                zs = 1 if mode == RDN else 0
            return zero(f, zs), 0
        return round_to(r, f, mode)
    if op == "mul":
        a, b = ds
        s = a[-1] ^ b[-1]
        if a[0] == "inf" or b[0] == "inf":
            other = b if a[0] == "inf" else a
            if other[0] == "num" and other[1] == 0:
                return qnan(f), NV
            return inf(f, s), 0
        r = a[1] * b[1]
        if r == 0:
            return zero(f, s), 0
        return round_to(r, f, mode)
    if op == "div":
        a, b = ds
        s = a[-1] ^ b[-1]
        if a[0] == "inf":
            if b[0] == "inf":
                return qnan(f), NV
            return inf(f, s), 0
        if b[0] == "inf":
            return zero(f, s), 0
        if b[1] == 0:
            if a[1] == 0:
                return qnan(f), NV
            return inf(f, s), DZ
        r = a[1] / b[1]
        if r == 0:
            return zero(f, s), 0
        return round_to(r, f, mode)
    if op == "sqrt":
        (a,) = ds
        if a[0] == "inf":
            return (qnan(f), NV) if a[1] else (inf(f, 0), 0)
        if a[1] == 0:
            return zero(f, a[2]), 0
        if a[1] < 0:
            return qnan(f), NV
        # exact-enough sqrt: scale to integer with many bits
        v = a[1]
        k = 400
        n = v.numerator * (1 << (2 * k)) * v.denominator
        r = math.isqrt(n)
        exact = r * r == n
        val_ = F(r, v.denominator * (1 << k))
        if not exact:
            val_ += F(1, v.denominator * (1 << k) * 4)  # sticky
        return round_to(val_, f, mode)
    if op in ("fmadd", "fmsub", "fnmsub", "fnmadd"):
        a, b, c = ds
        ps = a[-1] ^ b[-1]
        cs = c[-1]
        if op in ("fnmsub", "fnmadd"):
            ps ^= 1
        if op in ("fmsub", "fnmadd"):
            cs ^= 1
        if (a[0] == "inf" and b[0] == "num" and b[1] == 0) or (b[0] == "inf" and a[0] == "num" and a[1] == 0):
            return qnan(f), NV
        pinf = a[0] == "inf" or b[0] == "inf"
        if pinf or c[0] == "inf":
            if pinf and c[0] == "inf" and ps != cs:
                return qnan(f), NV
            return inf(f, ps if pinf else cs), 0
        p = a[1] * b[1]
        cv = c[1]
        if op in ("fnmsub", "fnmadd"):
            p = -p
        if op in ("fmsub", "fnmadd"):
            cv = -cv
        r = p + cv
        if r == 0:
            if p == 0 and cv == 0 and ps == cs:
                zs = ps
            else:
                zs = 1 if mode == RDN else 0
            return zero(f, zs), 0
        return round_to(r, f, mode)
    raise ValueError(op)
