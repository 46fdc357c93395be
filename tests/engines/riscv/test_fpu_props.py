"""Property tests: fp_exec against an exact rational reference (fractions.Fraction).

Every result is computed exactly in Python, rounded by :func:`round_ref` (a direct transcription
of IEEE 754 rounding with RISC-V's after-rounding tininess) and compared bit for bit, flags
included, for all five rounding modes (static and dynamic).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from virtkit.engines.riscv.fpu import fp_exec

NV, DZ, OF, UF, NX = 0x10, 0x08, 0x04, 0x02, 0x01
RNE, RTZ, RDN, RUP, RMM = range(5)
FMT = {0: (23, 8), 1: (52, 11)}  # fmt -> (mantissa bits, exponent bits)
BOX = 0xFFFFFFFF00000000
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------
# exact reference


def fields(fmt: int) -> tuple[int, int, int, int]:
    """(mantissa bits, exponent bits, bias, sign bit position)."""
    mb, eb = FMT[fmt]
    return mb, eb, (1 << (eb - 1)) - 1, mb + eb


def to_frac(bits: int, fmt: int) -> Fraction:
    """Exact value of a finite float."""
    mb, eb, bias, sb = fields(fmt)
    e = (bits >> mb) & ((1 << eb) - 1)
    m = bits & ((1 << mb) - 1)
    v = (
        Fraction(m, 1 << mb) * Fraction(2) ** (1 - bias)
        if e == 0
        else (1 + Fraction(m, 1 << mb)) * Fraction(2) ** (e - bias)
    )
    return -v if bits >> sb & 1 else v


def is_neg(bits: int, fmt: int) -> bool:
    """Sign bit."""
    return bool(bits >> fields(fmt)[3] & 1)


def round_int(a: Fraction, neg: bool, rm: int) -> tuple[int, bool]:
    """Round the non-negative magnitude a to an integer per rm (sign neg); (n, inexact)."""
    n = math.floor(a)
    rem = a - n
    if rem == 0:
        return n, False
    half = Fraction(1, 2)
    up = {
        RNE: rem > half or (rem == half and n % 2 == 1),
        RTZ: False,
        RDN: neg,
        RUP: not neg,
        RMM: rem >= half,
    }[rm]
    return n + up, True


def round_ref(q: Fraction, fmt: int, rm: int, zero_neg: bool = False) -> tuple[int, int]:
    """Round the exact value q to the format; (bits, flags). zero_neg is the sign of an exact zero."""
    mb, eb, bias, sb = fields(fmt)
    if q == 0:
        return (1 << sb) if zero_neg else 0, 0
    neg = q < 0
    a = abs(q)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    while Fraction(2) ** e > a:
        e -= 1
    while Fraction(2) ** (e + 1) <= a:
        e += 1
    emin = 1 - bias
    qe = max(e, emin) - mb
    n, inexact = round_int(a / Fraction(2) ** qe, neg, rm)
    flags = NX if inexact else 0
    n_unb, _ = round_int(a / Fraction(2) ** (e - mb), neg, rm)
    if inexact and n_unb * Fraction(2) ** (e - mb) < Fraction(2) ** emin:
        flags |= UF
    sign = (1 << sb) if neg else 0
    if n_unb * Fraction(2) ** (e - mb) >= Fraction(2) ** (bias + 1):
        to_inf = rm in (RNE, RMM) or (rm == RUP and not neg) or (rm == RDN and neg)
        inf = ((1 << eb) - 1) << mb
        return sign | (inf if to_inf else inf - 1), OF | NX
    if n == 1 << (mb + 1):
        n >>= 1
        qe += 1
    if n < (1 << mb):  # subnormal or zero
        return sign | n, flags
    return sign | ((qe + mb + bias) << mb) | (n - (1 << mb)), flags


def sqrt_ref(a: Fraction, fmt: int, rm: int) -> tuple[int, int]:
    """Correctly rounded square root of a > 0 via an integer square root with a sticky half."""
    s = 1200
    m = a * Fraction(4) ** s
    assert m.denominator == 1
    r = math.isqrt(m.numerator)
    v = Fraction(r) if r * r == m.numerator else Fraction(2 * r + 1, 2)
    return round_ref(v / Fraction(2) ** s, fmt, rm)


# ---------------------------------------------------------------------------------------------
# running fp_exec


def rtype(funct7: int, rs2: int, rs1: int, rm: int, rd: int, opcode: int = 0x53) -> int:
    """Encode an R-type FP instruction."""
    return (funct7 << 25) | (rs2 << 20) | (rs1 << 15) | (rm << 12) | (rd << 7) | opcode


def r4type(opcode: int, fmt: int, rs3: int, rs2: int, rs1: int, rm: int, rd: int) -> int:
    """Encode an R4-type fused multiply-add."""
    return (rs3 << 27) | (fmt << 25) | (rs2 << 20) | (rs1 << 15) | (rm << 12) | (rd << 7) | opcode


def box(bits: int, fmt: int) -> int:
    """Register image of an operand (singles NaN-boxed)."""
    return bits | BOX if fmt == 0 else bits


def s64(v: int) -> int:
    """uint64 -> int64 bit pattern."""
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >> 63 else v


def run(insn: int, fops: dict[int, int], xops: dict[int, int] | None = None, frm: int = 0):
    """Execute insn with the given f and x register images; return (flags, x, f) as Python ints."""
    x = np.zeros(32, np.int64)
    f = np.zeros(32, np.int64)
    for r, v in fops.items():
        f[r] = s64(v)
    for r, v in (xops or {}).items():
        x[r] = s64(v)
    fl = int(fp_exec(np.int64(insn), np.int64(frm), x, f))
    return fl, [int(v) & ((1 << 64) - 1) for v in x], [int(v) & ((1 << 64) - 1) for v in f]


def exec_f(insn: int, fmt: int, ops: list[int], rm_dyn: int = 0) -> tuple[int, int]:
    """Run an FP-result instruction reading f1..f3, writing f4; return (result bits, flags)."""
    fl, _, f = run(insn, {i + 1: box(v, fmt) for i, v in enumerate(ops)}, frm=rm_dyn)
    r = f[4]
    event(f"flags {fl:#04x}")
    if fmt == 0:
        assert r >> 32 == 0xFFFFFFFF, "single result not NaN-boxed"
        r &= 0xFFFFFFFF
    return r, fl


# ---------------------------------------------------------------------------------------------
# operand strategies: raw finite patterns biased towards the interesting places


@st.composite
def finite(draw, fmt: int) -> int:
    """A finite float bit pattern: random, near 1, subnormal/min-normal or near overflow."""
    mb, eb, bias, sb = fields(fmt)
    emax = (1 << eb) - 1
    kind = draw(st.integers(0, 5))
    if kind == 0:
        e = draw(st.integers(0, emax - 1))
    elif kind == 1:
        e = draw(st.integers(bias - 3, bias + 3))
    elif kind == 2:
        e = draw(st.integers(0, 2))
    elif kind == 3:
        e = draw(st.integers(emax - 3, emax - 1))
    else:
        e = draw(st.integers(max(0, bias - mb - 8), min(emax - 1, bias + mb + 8)))
    m = draw(
        st.one_of(
            st.integers(0, (1 << mb) - 1),
            st.sampled_from([0, 1, (1 << mb) - 1, 1 << (mb - 1), (1 << (mb - 1)) + 1]),
            st.integers(0, 3),
            st.integers((1 << mb) - 4, (1 << mb) - 1),
        )
    )
    return (draw(st.integers(0, 1)) << sb) | (e << mb) | m


FMTS = st.sampled_from([0, 1])
RMS = st.integers(0, 4)


@st.composite
def binop_case(draw):
    """(fmt, rm, dynamic?, a, b)."""
    fmt = draw(FMTS)
    return fmt, draw(RMS), draw(st.booleans()), draw(finite(fmt)), draw(finite(fmt))


def rm_fields(rm: int, dyn: bool) -> tuple[int, int]:
    """(instruction rm field, fcsr.frm) selecting rounding mode rm statically or dynamically."""
    return (7, rm) if dyn else (rm, 0)


# ---------------------------------------------------------------------------------------------
# sanity of the reference itself


@given(st.floats(allow_nan=False, allow_infinity=False), st.floats(allow_nan=False, allow_infinity=False))
@settings(max_examples=200, deadline=None)
def test_reference_matches_host_double_rne(a: float, b: float) -> None:
    """The reference rounding agrees with the host's IEEE double addition (RNE) when finite."""
    s = a + b
    if math.isinf(s) or s == 0:
        return
    bits, _ = round_ref(Fraction(a) + Fraction(b), 1, RNE)
    assert bits == int.from_bytes(np.float64(s).tobytes(), "little")


# ---------------------------------------------------------------------------------------------
# arithmetic


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
@given(case=binop_case())
@SETTINGS
def test_binop_matches_reference(op: str, case) -> None:
    """FADD/FSUB/FMUL/FDIV: result bits and fflags equal the exactly rounded reference."""
    fmt, rm, dyn, a, b = case
    qa, qb = to_frac(a, fmt), to_frac(b, fmt)
    na, nb = is_neg(a, fmt), is_neg(b, fmt)
    if op == "add":
        f5, q = 0, qa + qb
        zneg = na if (qa == 0 and qb == 0 and na == nb) else rm == RDN
    elif op == "sub":
        f5, q = 1, qa - qb
        zneg = na if (qa == 0 and qb == 0 and na != nb) else rm == RDN
    elif op == "mul":
        f5, q, zneg = 2, qa * qb, na != nb
    else:
        if qb == 0:
            return
        f5, q, zneg = 3, qa / qb, na != nb
    rmf, frm = rm_fields(rm, dyn)
    got = exec_f(rtype(f5 << 2 | fmt, 2, 1, rmf, 4), fmt, [a, b], frm)
    assert got == round_ref(q, fmt, rm, zneg), (op, fmt, rm, hex(a), hex(b))


@given(fmt=FMTS, rm=RMS, data=st.data())
@SETTINGS
def test_sqrt_matches_reference(fmt: int, rm: int, data) -> None:
    """FSQRT of non-negative finite values equals the integer-sqrt reference."""
    a = data.draw(finite(fmt)) & ~(1 << fields(fmt)[3])
    qa = to_frac(a, fmt)
    got = exec_f(rtype(0x0B << 2 | fmt, 0, 1, rm, 4), fmt, [a])
    want = (0, 0) if qa == 0 else sqrt_ref(qa, fmt, rm)
    assert got == want, (fmt, rm, hex(a))


@pytest.mark.parametrize("opcode", [0x43, 0x47, 0x4B, 0x4F])
@given(fmt=FMTS, rm=RMS, data=st.data())
@SETTINGS
def test_fma_matches_reference(opcode: int, fmt: int, rm: int, data) -> None:
    """FMADD/FMSUB/FNMSUB/FNMADD round a*b+c once (true fused multiply-add)."""
    a, b = data.draw(finite(fmt)), data.draw(finite(fmt))
    qa, qb = to_frac(a, fmt), to_frac(b, fmt)
    if data.draw(st.booleans()) and qa * qb != 0:
        # an addend that nearly cancels the product: the hard case for a fused implementation
        p = -(qa * qb) if opcode in (0x43, 0x4F) else qa * qb
        c, _ = round_ref(p, fmt, data.draw(RMS))
        if (c >> fields(fmt)[0]) & ((1 << fields(fmt)[1]) - 1) == (1 << fields(fmt)[1]) - 1:
            c = data.draw(finite(fmt))
    else:
        c = data.draw(finite(fmt))
    qc = to_frac(c, fmt)
    negp = opcode in (0x4B, 0x4F)
    negc = opcode in (0x47, 0x4F)
    prod = -(qa * qb) if negp else qa * qb
    add = -qc if negc else qc
    sp = is_neg(a, fmt) ^ is_neg(b, fmt) ^ negp
    sc = is_neg(c, fmt) ^ negc
    if prod == 0 and add == 0:
        zneg = sp if sp == sc else rm == RDN
    else:
        zneg = rm == RDN
    got = exec_f(r4type(opcode, fmt, 3, 2, 1, rm, 4), fmt, [a, b, c])
    assert got == round_ref(prod + add, fmt, rm, zneg), (hex(opcode), fmt, rm, hex(a), hex(b), hex(c))


# ---------------------------------------------------------------------------------------------
# conversions

INT_KIND = {
    0: (-(1 << 31), (1 << 31) - 1, 32),
    1: (0, (1 << 32) - 1, 32),
    2: (-(1 << 63), (1 << 63) - 1, 64),
    3: (0, (1 << 64) - 1, 64),
}


@given(fmt=FMTS, rm=RMS, kind=st.integers(0, 3), data=st.data())
@SETTINGS
def test_float_to_int_matches_reference(fmt: int, rm: int, kind: int, data) -> None:
    """FCVT.W/WU/L/LU: rounding, NX, and saturation with NV (and no NX) out of range."""
    mb, eb, bias, sb = fields(fmt)
    if data.draw(st.booleans()):
        # values around the integer limits
        lim = data.draw(st.sampled_from([31, 32, 63, 64]))
        q0 = Fraction(data.draw(st.sampled_from([-1, 1]))) * 2**lim + Fraction(data.draw(st.integers(-3, 3)), 2)
        a, _ = round_ref(q0, fmt, RNE)
    else:
        a = data.draw(finite(fmt))
    qa = to_frac(a, fmt)
    lo, hi, width = INT_KIND[kind]
    neg = qa < 0
    n, inexact = round_int(abs(qa), neg, rm)
    v = -n if neg else n
    if v < lo or v > hi:
        want, wfl = (lo if neg else hi), NV
    else:
        want, wfl = v, NX if inexact else 0
    if width == 32:
        want = want & 0xFFFFFFFF
        want = want | 0xFFFFFFFF00000000 if want >> 31 else want
    fl, x, _ = run(rtype(0x18 << 2 | fmt, kind, 1, rm, 5), {1: box(a, fmt)})
    assert (x[5], fl) == (want & ((1 << 64) - 1), wfl), (fmt, rm, kind, hex(a))


@given(fmt=FMTS, rm=RMS, kind=st.integers(0, 3), data=st.data())
@SETTINGS
def test_int_to_float_matches_reference(fmt: int, rm: int, kind: int, data) -> None:
    """FCVT.S/D.W/WU/L/LU: the integer register is read at the right width and rounded per rm."""
    raw = data.draw(
        st.one_of(
            st.integers(0, (1 << 64) - 1),
            st.integers(-(1 << 40), 1 << 40).map(lambda v: v & ((1 << 64) - 1)),
            st.sampled_from([0, 1, (1 << 64) - 1, 1 << 63, (1 << 63) - 1, 0x80000000, 0x7FFFFFFF, 0xFFFFFFFF]),
        )
    )
    if kind == 0:
        v = raw & 0xFFFFFFFF
        v = v - (1 << 32) if v >> 31 else v
    elif kind == 1:
        v = raw & 0xFFFFFFFF
    elif kind == 2:
        v = raw - (1 << 64) if raw >> 63 else raw
    else:
        v = raw
    fl, _, f = run(rtype(0x1A << 2 | fmt, kind, 1, rm, 4), {}, {1: raw})
    r = f[4] & 0xFFFFFFFF if fmt == 0 else f[4]
    assert (r, fl) == round_ref(Fraction(v), fmt, rm), (fmt, rm, kind, hex(raw))


@given(rm=RMS, data=st.data())
@SETTINGS
def test_double_to_single_matches_reference(rm: int, data) -> None:
    """FCVT.S.D rounds (with overflow/underflow flags); FCVT.D.S is exact."""
    a = data.draw(
        st.one_of(
            finite(1),
            # doubles in and around the single-precision range
            st.builds(
                lambda s, e, m: (s << 63) | (e << 52) | m,
                st.integers(0, 1),
                st.integers(1023 - 155, 1023 + 130),
                st.integers(0, (1 << 52) - 1),
            ),
        )
    )
    got = exec_f(rtype(0x08 << 2 | 0, 1, 1, rm, 4), 1, [a])
    got = (got[0] & 0xFFFFFFFF, got[1])
    want = round_ref(to_frac(a, 1), 0, rm, is_neg(a, 1))
    assert got == want, (rm, hex(a))


@given(rm=RMS, data=st.data())
@SETTINGS
def test_single_to_double_is_exact(rm: int, data) -> None:
    """FCVT.D.S is exact in every rounding mode."""
    a = data.draw(finite(0))
    fl, _, f = run(rtype(0x08 << 2 | 1, 0, 1, rm, 4), {1: box(a, 0)})
    assert (f[4], fl) == round_ref(to_frac(a, 0), 1, rm, is_neg(a, 0))


@pytest.mark.parametrize("f5", [0, 1, 2, 3, 0x0B])
@given(data=st.data())
@SETTINGS
def test_double_rne_fast_path_matches_reference(f5: int, data) -> None:
    """Doubles in RNE take the host-FPU fast path when exact-checkable: still bit- and flag-exact."""
    a = data.draw(st.one_of(finite(1), st.floats(allow_nan=False, allow_infinity=False).map(lambda v: box_d(v))))
    b = data.draw(st.one_of(finite(1), st.floats(allow_nan=False, allow_infinity=False).map(lambda v: box_d(v))))
    qa, qb = to_frac(a, 1), to_frac(b, 1)
    na, nb = is_neg(a, 1), is_neg(b, 1)
    if f5 == 0x0B:
        a &= ~(1 << 63)
        qa = abs(qa)
        want = (a, 0) if qa == 0 else sqrt_ref(qa, 1, RNE)
        assert exec_f(rtype(0x0B << 2 | 1, 0, 1, RNE, 4), 1, [a]) == want, hex(a)
        return
    if f5 == 3 and qb == 0:
        return
    q = {0: qa + qb, 1: qa - qb, 2: qa * qb, 3: qa / qb if qb else 0}[f5]
    eff_nb = nb ^ (f5 == 1)
    if f5 in (0, 1):
        zneg = na if (qa == 0 and qb == 0 and na == eff_nb) else False
    else:
        zneg = na != nb
    got = exec_f(rtype(f5 << 2 | 1, 2, 1, RNE, 4), 1, [a, b])
    assert got == round_ref(q, 1, RNE, zneg), (f5, hex(a), hex(b))


def box_d(v: float) -> int:
    """Bits of a Python float."""
    return int.from_bytes(np.float64(v).tobytes(), "little")


@pytest.mark.parametrize("f5", [0, 1, 2, 3, 0x0B])
@given(data=st.data())
@SETTINGS
def test_single_rne_fast_path_matches_reference(f5: int, data) -> None:
    """Singles in RNE are computed through host doubles when safe: still bit- and flag-exact."""
    a = data.draw(finite(0))
    b = data.draw(finite(0))
    qa, qb = to_frac(a, 0), to_frac(b, 0)
    na, nb = is_neg(a, 0), is_neg(b, 0)
    if f5 == 0x0B:
        a &= ~(1 << 31)
        qa = abs(qa)
        want = (a, 0) if qa == 0 else sqrt_ref(qa, 0, RNE)
        assert exec_f(rtype(0x0B << 2, 0, 1, RNE, 4), 0, [a]) == want, hex(a)
        return
    if f5 == 3 and qb == 0:
        return
    q = {0: qa + qb, 1: qa - qb, 2: qa * qb, 3: qa / qb if qb else 0}[f5]
    eff_nb = nb ^ (f5 == 1)
    if f5 in (0, 1):
        zneg = na if (qa == 0 and qb == 0 and na == eff_nb) else False
    else:
        zneg = na != nb
    got = exec_f(rtype(f5 << 2, 2, 1, RNE, 4), 0, [a, b])
    assert got == round_ref(q, 0, RNE, zneg), (f5, hex(a), hex(b))


@pytest.mark.parametrize("opcode", [0x43, 0x47, 0x4B, 0x4F])
@given(data=st.data())
@SETTINGS
def test_double_rne_fma_fast_path_matches_reference(opcode: int, data) -> None:
    """Fused multiply-adds of doubles in RNE use the host FMA plus an exact TwoSum expansion check."""
    normal = st.floats(min_value=2.0**-400, max_value=2.0**400).map(box_d)
    a = data.draw(st.one_of(normal, normal.map(lambda v: v | 1 << 63), finite(1)))
    b = data.draw(st.one_of(normal, normal.map(lambda v: v | 1 << 63), finite(1)))
    qa, qb = to_frac(a, 1), to_frac(b, 1)
    negp = opcode in (0x4B, 0x4F)
    negc = opcode in (0x47, 0x4F)
    prod = -(qa * qb) if negp else qa * qb
    mode = data.draw(st.integers(0, 2))
    if mode == 0:
        c = data.draw(st.one_of(normal, normal.map(lambda v: v | 1 << 63)))
    else:
        # an addend equal or next to -product: exact cancellation or a tiny inexact remainder
        target = -prod if not negc else prod
        c, _ = round_ref(target, 1, data.draw(RMS))
        if mode == 2 and c & 0x7FFFFFFFFFFFFFFF and c & 0x7FF0000000000000 != 0x7FF0000000000000:
            c += data.draw(st.sampled_from([-1, 1]))
        if c & 0x7FF0000000000000 == 0x7FF0000000000000:
            c = data.draw(normal)
    qc = to_frac(c, 1)
    add = -qc if negc else qc
    sp = is_neg(a, 1) ^ is_neg(b, 1) ^ negp
    sc = is_neg(c, 1) ^ negc
    zneg = sp if (prod == 0 and add == 0 and sp == sc) else False
    got = exec_f(r4type(opcode, 1, 3, 2, 1, RNE, 4), 1, [a, b, c])
    assert got == round_ref(prod + add, 1, RNE, zneg), (hex(opcode), hex(a), hex(b), hex(c))
