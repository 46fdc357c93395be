"""Hand-picked edge cases for the F/D soft-float (fp_exec called with encoded instructions).

Signed zeros, infinities, NaN payloads and sNaN, subnormals, overflow per rounding mode,
tininess after rounding, integer conversion limits, NaN-boxing and illegal encodings.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtkit.engines.riscv.fpu import ILLEGAL, fp_exec

NV, DZ, OF, UF, NX = 0x10, 0x08, 0x04, 0x02, 0x01
RNE, RTZ, RDN, RUP, RMM, DYN = 0, 1, 2, 3, 4, 7
BOX = 0xFFFFFFFF00000000
M64 = (1 << 64) - 1

# funct5 values
ADD, SUB, MUL, DIV, SGNJ, MINMAX, CVTFF, CMP, SQRT, CVTI, CVTF, MVX, MVF = (
    0x00,
    0x01,
    0x02,
    0x03,
    0x04,
    0x05,
    0x08,
    0x14,
    0x0B,
    0x18,
    0x1A,
    0x1C,
    0x1E,
)
FMADD, FMSUB, FNMSUB, FNMADD = 0x43, 0x47, 0x4B, 0x4F


def d(v: float) -> int:
    """Bits of a double."""
    return struct.unpack("<Q", struct.pack("<d", v))[0]


def s(v: float) -> int:
    """Bits of a single (v must be exactly representable)."""
    return struct.unpack("<I", struct.pack("<f", v))[0]


# doubles
DP0, DN0, DP1, DN1 = d(0.0), d(-0.0), d(1.0), d(-1.0)
DINF, DNINF = 0x7FF0000000000000, 0xFFF0000000000000
DQNAN, DSNAN, DCNAN = 0x7FF8000000000123, 0x7FF0000000000001, 0x7FF8000000000000
DMAX, DMINN, DMINSUB = 0x7FEFFFFFFFFFFFFF, 0x0010000000000000, 0x0000000000000001
# singles
SP0, SN0, SP1, SN1 = 0, 0x80000000, s(1.0), s(-1.0)
SINF, SNINF = 0x7F800000, 0xFF800000
SQNAN, SSNAN, SCNAN = 0x7FC00123, 0x7F800001, 0x7FC00000
SMAX, SMINN, SMINSUB = 0x7F7FFFFF, 0x00800000, 0x00000001


def enc(f5: int, fmt: int, rs2: int = 2, rm: int = RNE, rd: int = 4, rs1: int = 1) -> int:
    """Encode an OP-FP instruction."""
    return ((f5 << 2 | fmt) << 25) | (rs2 << 20) | (rs1 << 15) | (rm << 12) | (rd << 7) | 0x53


def enc4(opcode: int, fmt: int, rm: int = RNE) -> int:
    """Encode a fused multiply-add reading f1, f2, f3 and writing f4."""
    return (3 << 27) | (fmt << 25) | (2 << 20) | (1 << 15) | (rm << 12) | (4 << 7) | opcode


def s64(v: int) -> int:
    """uint64 -> int64."""
    v &= M64
    return v - (1 << 64) if v >> 63 else v


def run(insn: int, f: dict[int, int] | None = None, x: dict[int, int] | None = None, frm: int = 0):
    """Run one instruction; return (flags, x list, f list) as unsigned Python ints."""
    xa = np.zeros(32, np.int64)
    fa = np.zeros(32, np.int64)
    for r, v in (f or {}).items():
        fa[r] = s64(v)
    for r, v in (x or {}).items():
        xa[r] = s64(v)
    fl = int(fp_exec(np.int64(insn), np.int64(frm), xa, fa))
    return fl, [int(v) & M64 for v in xa], [int(v) & M64 for v in fa]


def fop(insn: int, fmt: int, *ops: int, frm: int = 0, src: int | None = None) -> tuple[int, int]:
    """Run an FP->FP instruction with operands (format src, default fmt) in f1.., singles NaN-boxed."""
    sf = fmt if src is None else src
    fl, _, f = run(insn, {i + 1: (v | BOX if sf == 0 else v) for i, v in enumerate(ops)}, frm=frm)
    if fmt == 0:
        assert f[4] >> 32 == 0xFFFFFFFF, "single result must be NaN-boxed"
        return f[4] & 0xFFFFFFFF, fl
    return f[4], fl


def xop(insn: int, fmt: int, *ops: int) -> tuple[int, int]:
    """Run an FP->integer instruction writing x5; (x5, flags)."""
    fl, x, _ = run(insn, {i + 1: (v | BOX if fmt == 0 else v) for i, v in enumerate(ops)})
    return x[5], fl


# ---------------------------------------------------------------------------------------------
# add / sub: signed zeros, infinities, NaNs


@pytest.mark.parametrize(
    "fmt,a,b,rm,want",
    [
        (1, DP0, DN0, RNE, (DP0, 0)),
        (1, DP0, DN0, RDN, (DN0, 0)),
        (1, DN0, DN0, RNE, (DN0, 0)),
        (1, DP1, DN1, RNE, (DP0, 0)),
        (1, DP1, DN1, RDN, (DN0, 0)),
        (1, DINF, DNINF, RNE, (DCNAN, NV)),
        (1, DINF, DP1, RNE, (DINF, 0)),
        (1, DQNAN, DP1, RNE, (DCNAN, 0)),
        (1, DSNAN, DP1, RNE, (DCNAN, NV)),
        (1, DP1, DSNAN, RNE, (DCNAN, NV)),
        (1, DMAX, DMAX, RNE, (DINF, OF | NX)),
        (1, DMAX, DMAX, RTZ, (DMAX, OF | NX)),
        (1, DMINSUB, DMINSUB, RNE, (2, 0)),  # subnormal + subnormal is exact: no UF
        (1, d(1.0), d(2.0**-53), RNE, (d(1.0), NX)),  # tie to even
        (1, d(1.0), d(2.0**-53), RUP, (d(1.0) + 1, NX)),
        (1, d(1.0), d(2.0**-53), RMM, (d(1.0) + 1, NX)),
        (0, SP0, SN0, RDN, (SN0, 0)),
        (0, SINF, SNINF, RNE, (SCNAN, NV)),
        (0, SQNAN, SP1, RNE, (SCNAN, 0)),
        (0, SSNAN, SP1, RNE, (SCNAN, NV)),
        (0, SMAX, SMAX, RNE, (SINF, OF | NX)),
        (0, SMAX, SMAX, RDN, (SMAX, OF | NX)),
    ],
)
def test_add_special(fmt: int, a: int, b: int, rm: int, want: tuple[int, int]) -> None:
    """FADD special operands and signed-zero rules."""
    assert fop(enc(ADD, fmt, rm=rm), fmt, a, b) == want


def test_sub_same_value_gives_plus_zero_or_minus_zero_in_rdn() -> None:
    """x - x is +0, except -0 when rounding down."""
    assert fop(enc(SUB, 1), 1, d(3.5), d(3.5)) == (DP0, 0)
    assert fop(enc(SUB, 1, rm=RDN), 1, d(3.5), d(3.5)) == (DN0, 0)
    assert fop(enc(SUB, 0, rm=RDN), 0, s(3.5), s(3.5)) == (SN0, 0)


@pytest.mark.parametrize(
    "rm,pos,neg",
    [
        (RNE, DINF, DNINF),
        (RTZ, DMAX, DMAX | 1 << 63),
        (RDN, DMAX, DNINF),
        (RUP, DINF, DMAX | 1 << 63),
        (RMM, DINF, DNINF),
    ],
)
def test_overflow_per_rounding_mode(rm: int, pos: int, neg: int) -> None:
    """Overflow rounds to infinity or the largest finite value depending on mode and sign."""
    assert fop(enc(MUL, 1, rm=rm), 1, DMAX, d(2.0)) == (pos, OF | NX)
    assert fop(enc(MUL, 1, rm=rm), 1, DMAX, d(-2.0)) == (neg, OF | NX)


# ---------------------------------------------------------------------------------------------
# tininess after rounding, subnormals


def test_tininess_detected_after_rounding_single() -> None:
    """2^-126 - 2^-151 rounds (RNE) to the smallest normal: not tiny after rounding, so no UF."""
    v = d(2.0**-126 - 2.0**-151)
    assert fop(enc(CVTFF, 0, rs2=1), 0, v, src=1) == (SMINN, NX)
    # toward zero it stays subnormal: tiny and inexact -> UF
    assert fop(enc(CVTFF, 0, rs2=1, rm=RTZ), 0, v, src=1) == (SMINN - 1, UF | NX)


def test_tininess_after_rounding_double_mul() -> None:
    """Product just under 2^-1022 that is tiny even after rounding at unbounded range -> UF."""
    # (1 - 2^-53) * 2^-1022 = 2^-1022 - 2^-1075: exact at 53 bits below 2^-1022 -> tiny; rounds up to min normal
    assert fop(enc(MUL, 1), 1, d(1.0 - 2.0**-53), DMINN) == (DMINN, UF | NX)
    # (1 - 2^-53) * (1 + 2^-52) * 2^-1022 rounds to 2^-1022 at unbounded range -> not tiny
    assert fop(enc(MUL, 1), 1, d(1.0 - 2.0**-53), DMINN + 1) == (DMINN, NX)


def test_exact_subnormal_result_has_no_underflow() -> None:
    """A tiny but exact result raises neither UF nor NX."""
    assert fop(enc(MUL, 1), 1, DMINN, d(0.5)) == (DMINN >> 1, 0)
    assert fop(enc(DIV, 0), 0, SMINN, s(4.0)) == (SMINN >> 2, 0)


def test_subnormal_operands() -> None:
    """Subnormal inputs are normalized: smallest subnormal * 2^52 = 1.0 * 2^-1022."""
    assert fop(enc(MUL, 1), 1, DMINSUB, d(2.0**52)) == (DMINN, 0)
    assert fop(enc(MUL, 0), 0, SMINSUB, s(2.0**23)) == (SMINN, 0)


def test_underflow_to_zero_keeps_sign() -> None:
    """A result below half the smallest subnormal rounds to a signed zero with UF|NX (RNE)."""
    assert fop(enc(MUL, 1), 1, DMINSUB, d(-0.25)) == (DN0, UF | NX)
    assert fop(enc(MUL, 1, rm=RUP), 1, DMINSUB, d(0.25)) == (DMINSUB, UF | NX)


# ---------------------------------------------------------------------------------------------
# mul / div / sqrt specials


@pytest.mark.parametrize(
    "f5,a,b,want",
    [
        (MUL, DINF, DP0, (DCNAN, NV)),
        (MUL, DN0, DINF, (DCNAN, NV)),
        (MUL, DN0, DP1, (DN0, 0)),
        (MUL, DNINF, DN1, (DINF, 0)),
        (DIV, DP1, DP0, (DINF, DZ)),
        (DIV, DN1, DP0, (DNINF, DZ)),
        (DIV, DP1, DN0, (DNINF, DZ)),
        (DIV, DP0, DP0, (DCNAN, NV)),
        (DIV, DINF, DINF, (DCNAN, NV)),
        (DIV, DP1, DNINF, (DN0, 0)),
        (DIV, DINF, DP0, (DINF, 0)),
        (DIV, DQNAN, DP0, (DCNAN, 0)),
        (DIV, d(1.0), d(3.0), (d(1.0 / 3.0), NX)),
    ],
)
def test_mul_div_special(f5: int, a: int, b: int, want: tuple[int, int]) -> None:
    """FMUL/FDIV: inf*0, x/0 (DZ), 0/0, inf/inf, NaN propagation as the canonical NaN."""
    assert fop(enc(f5, 1), 1, a, b) == want


@pytest.mark.parametrize(
    "fmt,a,want",
    [
        (1, DN0, (DN0, 0)),
        (1, DP0, (DP0, 0)),
        (1, DN1, (DCNAN, NV)),
        (1, DNINF, (DCNAN, NV)),
        (1, DINF, (DINF, 0)),
        (1, DSNAN, (DCNAN, NV)),
        (1, DQNAN, (DCNAN, 0)),
        (1, d(4.0), (d(2.0), 0)),
        (1, d(2.0), (d(2.0**0.5), NX)),
        (1, DMINSUB, (d(2.0**-537), 0)),
        (0, s(2.0), (s(1.4142135381698608), NX)),
        (0, SN0, (SN0, 0)),
        (0, s(-4.0), (SCNAN, NV)),
    ],
)
def test_sqrt_special(fmt: int, a: int, want: tuple[int, int]) -> None:
    """FSQRT of signed zeros, negatives, infinities, NaNs, exact squares and subnormals."""
    assert fop(enc(SQRT, fmt, rs2=0), fmt, a) == want


# ---------------------------------------------------------------------------------------------
# fused multiply-add


def test_fma_is_fused() -> None:
    """(1+2^-52)^2 - (1+2^-51) = 2^-104 exactly: only a single rounding gets it."""
    a = d(1.0 + 2.0**-52)
    assert fop(enc4(FMSUB, 1), 1, a, a, d(1.0 + 2.0**-51)) == (d(2.0**-104), 0)
    assert fop(enc4(FMADD, 1), 1, a, a, d(-(1.0 + 2.0**-51))) == (d(2.0**-104), 0)
    assert fop(enc4(FNMADD, 1), 1, a, a, d(-(1.0 + 2.0**-51))) == (d(-(2.0**-104)), 0)
    assert fop(enc4(FNMSUB, 1), 1, a, a, d(1.0 + 2.0**-51)) == (d(-(2.0**-104)), 0)


def test_fma_invalid_even_with_quiet_nan_addend() -> None:
    """inf * 0 + qNaN raises NV (RISC-V requires it); inf*1 - inf is invalid too."""
    assert fop(enc4(FMADD, 1), 1, DINF, DP0, DQNAN) == (DCNAN, NV)
    assert fop(enc4(FMADD, 0), 0, SP0, SINF, SQNAN) == (SCNAN, NV)
    assert fop(enc4(FMADD, 1), 1, DINF, DP1, DNINF) == (DCNAN, NV)
    assert fop(enc4(FMSUB, 1), 1, DINF, DP1, DINF) == (DCNAN, NV)
    assert fop(enc4(FMADD, 1), 1, DP1, DP1, DQNAN) == (DCNAN, 0)
    assert fop(enc4(FMADD, 1), 1, DP1, DP1, DSNAN) == (DCNAN, NV)


def test_fma_signed_zeros() -> None:
    """Zero product plus zero addend follows the addition sign rules."""
    assert fop(enc4(FMADD, 1), 1, DN0, DP1, DN0) == (DN0, 0)
    assert fop(enc4(FMADD, 1), 1, DN0, DP1, DP0) == (DP0, 0)
    assert fop(enc4(FMADD, 1, rm=RDN), 1, DN0, DP1, DP0) == (DN0, 0)
    assert fop(enc4(FNMADD, 1), 1, DP0, DP1, DP0) == (DN0, 0)
    assert fop(enc4(FMADD, 1), 1, DP1, DP1, DN1) == (DP0, 0)
    assert fop(enc4(FMADD, 1, rm=RDN), 1, DP1, DP1, DN1) == (DN0, 0)
    # a zero product leaves a nonzero addend untouched (even a subnormal)
    assert fop(enc4(FMADD, 1), 1, DP0, DP1, DMINSUB) == (DMINSUB, 0)


# ---------------------------------------------------------------------------------------------
# min / max, compare, classify, sign injection


@pytest.mark.parametrize(
    "fmt,a,b,mn,mx,fl",
    [
        (1, DN0, DP0, DN0, DP0, 0),
        (1, DP0, DN0, DN0, DP0, 0),
        (1, DQNAN, DP1, DP1, DP1, 0),
        (1, DP1, DQNAN, DP1, DP1, 0),
        (1, DSNAN, DP1, DP1, DP1, NV),
        (1, DQNAN, DQNAN, DCNAN, DCNAN, 0),
        (1, DSNAN, DQNAN, DCNAN, DCNAN, NV),
        (1, DNINF, DINF, DNINF, DINF, 0),
        (1, d(-2.0), DN1, d(-2.0), DN1, 0),
        (0, SN0, SP0, SN0, SP0, 0),
        (0, SSNAN, SN1, SN1, SN1, NV),
        (0, SQNAN, SQNAN, SCNAN, SCNAN, 0),
    ],
)
def test_min_max(fmt: int, a: int, b: int, mn: int, mx: int, fl: int) -> None:
    """FMIN/FMAX: 2019 minimumNumber/maximumNumber, -0 < +0, sNaN signals."""
    assert fop(enc(MINMAX, fmt, rm=0), fmt, a, b) == (mn, fl)
    assert fop(enc(MINMAX, fmt, rm=1), fmt, a, b) == (mx, fl)


@pytest.mark.parametrize(
    "a,b,eq,lt,le,feq_fl,cmp_fl",
    [
        (DN0, DP0, 1, 0, 1, 0, 0),
        (DP1, d(2.0), 0, 1, 1, 0, 0),
        (d(2.0), DP1, 0, 0, 0, 0, 0),
        (DNINF, DINF, 0, 1, 1, 0, 0),
        (DQNAN, DP1, 0, 0, 0, 0, NV),
        (DP1, DQNAN, 0, 0, 0, 0, NV),
        (DSNAN, DP1, 0, 0, 0, NV, NV),
        (DQNAN, DQNAN, 0, 0, 0, 0, NV),
    ],
)
def test_compare(a: int, b: int, eq: int, lt: int, le: int, feq_fl: int, cmp_fl: int) -> None:
    """FEQ is quiet (NV only for sNaN); FLT/FLE signal on any NaN."""
    assert xop(enc(CMP, 1, rm=2, rd=5), 1, a, b) == (eq, feq_fl)
    assert xop(enc(CMP, 1, rm=1, rd=5), 1, a, b) == (lt, cmp_fl)
    assert xop(enc(CMP, 1, rm=0, rd=5), 1, a, b) == (le, cmp_fl)


@pytest.mark.parametrize(
    "fmt,v,bit",
    [
        (1, DNINF, 0),
        (1, DN1, 1),
        (1, DMINSUB | 1 << 63, 2),
        (1, DN0, 3),
        (1, DP0, 4),
        (1, DMINSUB, 5),
        (1, DP1, 6),
        (1, DINF, 7),
        (1, DSNAN, 8),
        (1, DQNAN, 9),
        (0, SNINF, 0),
        (0, SN1, 1),
        (0, SMINSUB | 1 << 31, 2),
        (0, SN0, 3),
        (0, SP0, 4),
        (0, SMINSUB, 5),
        (0, SP1, 6),
        (0, SINF, 7),
        (0, SSNAN, 8),
        (0, SQNAN, 9),
    ],
)
def test_fclass(fmt: int, v: int, bit: int) -> None:
    """FCLASS sets exactly one of the ten class bits."""
    assert xop(enc(MVX, fmt, rs2=0, rm=1, rd=5), fmt, v) == (1 << bit, 0)


def test_sign_injection() -> None:
    """FSGNJ/FSGNJN/FSGNJX (FMV/FNEG/FABS) only move sign bits, keeping NaN payloads."""
    assert fop(enc(SGNJ, 1, rm=0), 1, DP1, DN0) == (DN1, 0)
    assert fop(enc(SGNJ, 1, rm=1), 1, DP1, DN0) == (DP1, 0)
    assert fop(enc(SGNJ, 1, rm=2), 1, DN1, DN0) == (DP1, 0)
    assert fop(enc(SGNJ, 1, rm=0), 1, DSNAN, DN1) == (DSNAN | 1 << 63, 0)
    assert fop(enc(SGNJ, 0, rm=1), 0, SQNAN, SQNAN) == (SQNAN | 1 << 31, 0)


# ---------------------------------------------------------------------------------------------
# NaN-boxing and moves


def test_unboxed_single_reads_as_canonical_nan() -> None:
    """A single whose upper 32 bits are not all ones is the canonical NaN for every operation."""
    bad = 0x000000003F800000  # 1.0f without the box
    fl, _, f = run(enc(ADD, 0), {1: bad, 2: SP1 | BOX})
    assert (f[4], fl) == (SCNAN | BOX, 0)
    fl, _, f = run(enc(SGNJ, 0, rm=1), {1: bad, 2: SP1 | BOX})
    assert (f[4], fl) == (0xFFC00000 | BOX, 0)  # FNEG of the canonical NaN
    fl, x, _ = run(enc(MVX, 0, rs2=0, rm=1, rd=5), {1: 0xFFFFFFFE3F800000})
    assert (x[5], fl) == (1 << 9, 0)
    # FMV.X.W moves the raw low 32 bits regardless of boxing
    fl, x, _ = run(enc(MVX, 0, rs2=0, rd=5), {1: 0x12345678BF800000})
    assert x[5] == 0xFFFFFFFFBF800000


def test_moves() -> None:
    """FMV.X.W sign-extends, FMV.W.X NaN-boxes, FMV.X.D/FMV.D.X copy all 64 bits."""
    _, x, _ = run(enc(MVX, 0, rs2=0, rd=5), {1: SQNAN | BOX})
    assert x[5] == SQNAN
    _, _, f = run(enc(MVF, 0, rs2=0), x={1: 0xDEADBEEF8765CAFE})
    assert f[4] == 0xFFFFFFFF8765CAFE
    _, x, _ = run(enc(MVX, 1, rs2=0, rd=5), {1: DSNAN | 1 << 63})
    assert x[5] == DSNAN | 1 << 63
    _, _, f = run(enc(MVF, 1, rs2=0), x={1: DSNAN})
    assert f[4] == DSNAN


def test_x0_never_written() -> None:
    """Integer results aimed at x0 are discarded."""
    _, x, _ = run(enc(CMP, 1, rm=2, rd=0), {1: DP1, 2: DP1})
    assert x[0] == 0
    _, x, _ = run(enc(CVTI, 1, rs2=2, rd=0), {1: d(5.0)})
    assert x[0] == 0


# ---------------------------------------------------------------------------------------------
# conversions at the integer limits

W, WU, L, LU = 0, 1, 2, 3


@pytest.mark.parametrize(
    "v,kind,rm,want",
    [
        (DQNAN, W, RNE, (0x7FFFFFFF, NV)),
        (DQNAN, WU, RNE, (M64, NV)),
        (DQNAN, L, RNE, ((1 << 63) - 1, NV)),
        (DQNAN, LU, RNE, (M64, NV)),
        (DINF, W, RNE, (0x7FFFFFFF, NV)),
        (DNINF, W, RNE, (0xFFFFFFFF80000000, NV)),
        (DNINF, WU, RNE, (0, NV)),
        (DNINF, L, RNE, (1 << 63, NV)),
        (DNINF, LU, RNE, (0, NV)),
        (d(2.0**31), W, RNE, (0x7FFFFFFF, NV)),
        (d(2.0**31 - 1), W, RNE, (0x7FFFFFFF, 0)),
        (d(2.0**31 - 0.5), W, RNE, (0x7FFFFFFF, NV)),  # rounds to 2^31: out of range
        (d(2.0**31 - 0.5), W, RTZ, (0x7FFFFFFF, NX)),
        (d(-(2.0**31)), W, RNE, (0xFFFFFFFF80000000, 0)),
        (d(-(2.0**31) - 0.5), W, RNE, (0xFFFFFFFF80000000, NX)),
        (d(-(2.0**31) - 0.5), W, RDN, (0xFFFFFFFF80000000, NV)),
        (d(-(2.0**31) - 1), W, RTZ, (0xFFFFFFFF80000000, NV)),
        (d(2.0**32 - 1), WU, RNE, (M64, 0)),  # sign-extended 32-bit result
        (d(2.0**32), WU, RNE, (M64, NV)),
        (d(-0.5), WU, RTZ, (0, NX)),
        (d(-0.5), WU, RDN, (0, NV)),
        (d(-1.0), WU, RNE, (0, NV)),
        (d(-1.0), LU, RNE, (0, NV)),
        (d(2.0**63), L, RNE, ((1 << 63) - 1, NV)),
        (d(-(2.0**63)), L, RNE, (1 << 63, 0)),
        (d(2.0**64), LU, RNE, (M64, NV)),
        (d(2.0**64 - 2048), LU, RNE, (M64 - 2047, 0)),
        (DMINSUB, L, RUP, (1, NX)),
        (DMINSUB | 1 << 63, L, RDN, (M64, NX)),
        (d(2.5), L, RNE, (2, NX)),
        (d(2.5), L, RMM, (3, NX)),
        (d(-2.5), L, RMM, (s64(-3) & M64, NX)),
        (d(-2.5), L, RUP, (s64(-2) & M64, NX)),
        (d(1e300), L, RNE, ((1 << 63) - 1, NV)),
    ],
)
def test_double_to_int(v: int, kind: int, rm: int, want: tuple[int, int]) -> None:
    """FCVT.W/WU/L/LU.D: NaN -> max, saturation with NV only, W results sign-extended."""
    assert xop(enc(CVTI, 1, rs2=kind, rm=rm, rd=5), 1, v) == want


def test_single_to_int_limits() -> None:
    """FCVT.W.S / FCVT.LU.S at their limits."""
    assert xop(enc(CVTI, 0, rs2=W, rd=5), 0, s(-(2.0**31))) == (0xFFFFFFFF80000000, 0)
    assert xop(enc(CVTI, 0, rs2=W, rd=5), 0, s(2.0**31)) == (0x7FFFFFFF, NV)
    assert xop(enc(CVTI, 0, rs2=LU, rd=5), 0, s(2.0**63)) == (1 << 63, 0)
    assert xop(enc(CVTI, 0, rs2=LU, rd=5), 0, SQNAN) == (M64, NV)


@pytest.mark.parametrize(
    "fmt,kind,xv,rm,want",
    [
        (0, W, (1 << 24) + 1, RNE, (s(2.0**24), NX)),
        (0, W, (1 << 24) + 1, RUP, (s(2.0**24 + 2), NX)),
        (0, W, 0xFFFFFFFF, RNE, (SN1, 0)),  # W reads the low 32 bits, signed
        (0, WU, 0xFFFFFFFF, RTZ, (s(4294967040.0), NX)),
        (0, WU, 0xFFFFFFFF, RNE, (s(2.0**32), NX)),
        (1, W, 0x80000000, RNE, (d(-(2.0**31)), 0)),
        (1, WU, 0xFFFFFFFF80000000, RNE, (d(2.0**31), 0)),
        (1, L, 1 << 63, RNE, (d(-(2.0**63)), 0)),
        (1, LU, M64, RNE, (d(2.0**64), NX)),
        (1, LU, M64, RTZ, (d(2.0**64 - 2048), NX)),
        (1, L, 0, RDN, (DP0, 0)),  # integer zero is +0 in every mode
        (1, L, (1 << 53) + 1, RNE, (d(2.0**53), NX)),
        (1, L, (1 << 53) + 1, RMM, (d(2.0**53 + 2), NX)),
    ],
)
def test_int_to_float(fmt: int, kind: int, xv: int, rm: int, want: tuple[int, int]) -> None:
    """FCVT.S/D.W/WU/L/LU: operand width, signedness and rounding."""
    fl, _, f = run(enc(CVTF, fmt, rs2=kind, rm=rm), x={1: xv})
    r = f[4]
    if fmt == 0:
        assert r >> 32 == 0xFFFFFFFF
        r &= 0xFFFFFFFF
    assert (r, fl) == want


@pytest.mark.parametrize(
    "v,rm,want",
    [
        (DQNAN, RNE, (SCNAN, 0)),
        (DSNAN, RNE, (SCNAN, NV)),
        (DNINF, RNE, (SNINF, 0)),
        (DN0, RNE, (SN0, 0)),
        (d(1e300), RNE, (SINF, OF | NX)),
        (d(1e300), RTZ, (SMAX, OF | NX)),
        (d(-1e300), RUP, (SMAX | 1 << 31, OF | NX)),
        (d(1e-300), RNE, (SP0, UF | NX)),
        (d(1e-300), RUP, (SMINSUB, UF | NX)),
        (d(1.0 + 2.0**-24), RNE, (SP1, NX)),
        (d(1.0 + 2.0**-24), RMM, (SP1 + 1, NX)),
    ],
)
def test_double_to_single(v: int, rm: int, want: tuple[int, int]) -> None:
    """FCVT.S.D: NaNs canonical, overflow/underflow per mode."""
    assert fop(enc(CVTFF, 0, rs2=1, rm=rm), 0, v, src=1) == want


def test_single_to_double() -> None:
    """FCVT.D.S widens exactly, subnormals included; NaNs become the canonical double NaN."""
    fl, _, f = run(enc(CVTFF, 1, rs2=0), {1: SMINSUB | BOX})
    assert (f[4], fl) == (d(2.0**-149), 0)
    fl, _, f = run(enc(CVTFF, 1, rs2=0), {1: SSNAN | BOX})
    assert (f[4], fl) == (DCNAN, NV)


# ---------------------------------------------------------------------------------------------
# rounding mode selection and illegal encodings


def test_dynamic_rounding_mode() -> None:
    """rm=7 takes fcsr.frm."""
    assert fop(enc(DIV, 1, rm=DYN), 1, DP1, d(3.0), frm=RUP) == (d(1.0 / 3.0) + 1, NX)
    assert fop(enc(DIV, 1, rm=DYN), 1, DP1, d(3.0), frm=RTZ) == (d(1.0 / 3.0), NX)


@pytest.mark.parametrize(
    "insn,frm",
    [
        (enc(ADD, 2), 0),  # fmt H
        (enc(ADD, 3), 0),  # fmt Q
        (enc4(FMADD, 2), 0),
        (enc(ADD, 1, rm=5), 0),
        (enc(MUL, 1, rm=6), 0),
        (enc(ADD, 1, rm=DYN), 5),
        (enc(DIV, 0, rm=DYN), 7),
        (enc4(FMADD, 1, rm=5), 0),
        (enc4(FNMADD, 0, rm=DYN), 6),
        (enc(SQRT, 1, rs2=1), 0),
        (enc(SQRT, 1, rs2=0, rm=5), 0),
        (enc(CVTI, 1, rs2=4), 0),
        (enc(CVTF, 1, rs2=5), 0),
        (enc(CVTI, 1, rs2=0, rm=6), 0),
        (enc(CVTF, 0, rs2=0, rm=DYN), 5),
        (enc(CVTFF, 0, rs2=0), 0),  # FCVT.S.S does not exist
        (enc(CVTFF, 1, rs2=1), 0),
        (enc(CVTFF, 1, rs2=0, rm=5), 0),
        (enc(SGNJ, 1, rm=3), 0),
        (enc(MINMAX, 1, rm=2), 0),
        (enc(CMP, 1, rm=3), 0),
        (enc(MVX, 1, rs2=1), 0),
        (enc(MVX, 1, rs2=0, rm=2), 0),
        (enc(MVF, 1, rs2=0, rm=1), 0),
        (enc(MVF, 1, rs2=3), 0),
        (enc(0x06, 1), 0),  # unassigned funct5
        (enc(0x1F, 0), 0),
        (0x0000007F, 0),  # not an FP opcode
    ],
)
def test_illegal_encodings(insn: int, frm: int) -> None:
    """Reserved formats, rounding modes and function codes are ILLEGAL and change nothing."""
    fl, x, f = run(insn, {1: DP1, 2: DP1, 3: DP1}, {1: 7}, frm=frm)
    assert fl == ILLEGAL
    assert f[4] == 0 and x[4] == 0 and x[5] == 0


def test_fsgnj_min_cmp_ignore_frm() -> None:
    """Instructions whose funct3 is not a rounding mode work even when fcsr.frm is invalid."""
    fl, _, f = run(enc(SGNJ, 1, rm=1), {1: DP1, 2: DP1}, frm=7)
    assert (f[4], fl) == (DN1, 0)
    fl, x, _ = run(enc(CMP, 1, rm=2, rd=5), {1: DP1, 2: DP1}, frm=7)
    assert (x[5], fl) == (1, 0)


# ---------------------------------------------------------------------------------------------
# fuzz: any instruction word, any register contents


@given(
    low=st.integers(0, (1 << 25) - 1),
    top=st.integers(0, 127),
    op=st.sampled_from([0x53, 0x43, 0x47, 0x4B, 0x4F]),
    frm=st.integers(0, 7),
    fregs=st.lists(st.integers(0, M64), min_size=32, max_size=32),
    xregs=st.lists(st.integers(0, M64), min_size=32, max_size=32),
)
@settings(max_examples=500, deadline=None)
def test_fuzz_any_encoding(low: int, top: int, op: int, frm: int, fregs: list[int], xregs: list[int]) -> None:
    """Random FP instruction words never crash: ILLEGAL changes nothing, otherwise only rd changes."""
    insn = (top << 25) | (low & ~0x7F) | op
    xregs[0] = 0
    xa = np.array([s64(v) for v in xregs], np.int64)
    fa = np.array([s64(v) for v in fregs], np.int64)
    x0, f0 = xa.copy(), fa.copy()
    fl = int(fp_exec(np.int64(insn), np.int64(frm), xa, fa))
    rd = (insn >> 7) & 31
    if fl == ILLEGAL:
        assert (xa == x0).all() and (fa == f0).all()
        return
    assert 0 <= fl <= 0x1F
    assert xa[0] == 0
    changed_x = [i for i in range(32) if xa[i] != x0[i]]
    changed_f = [i for i in range(32) if fa[i] != f0[i]]
    assert changed_x in ([], [rd]) and changed_f in ([], [rd])
    assert not (changed_x and changed_f)
