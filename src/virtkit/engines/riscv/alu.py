"""Integer arithmetic the interpreter needs beyond Python's operators: 64-bit unsigned compares and shifts on
int64, the high halves of multiplies, RISC-V's division semantics (no trap on /0 or overflow). Part of the core."""

from __future__ import annotations

import numpy as np
from numba import njit

from virtkit.engines.riscv.consts import (
    INTBIT,
)


@njit(cache=True, nogil=True)
def sext32(v: int) -> int:
    """Sign-extend the low 32 bits of ``v``."""
    return ((v & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000


@njit(cache=True, nogil=True)
def ult(a, b):
    """Unsigned 64-bit a < b."""
    return (a ^ INTBIT) < (b ^ INTBIT)


@njit(cache=True, nogil=True)
def srl(a, s):
    """Logical right shift of a 64-bit pattern."""
    return np.int64(np.uint64(a) >> np.uint64(s & 63))


@njit(cache=True, nogil=True)
def mulhu(a, b):
    """High 64 bits of the unsigned 128-bit product."""
    ua = np.uint64(a)
    ub = np.uint64(b)
    m32 = np.uint64(0xFFFFFFFF)
    s32 = np.uint64(32)
    a0 = ua & m32
    a1 = ua >> s32
    b0 = ub & m32
    b1 = ub >> s32
    p00 = a0 * b0
    p01 = a0 * b1
    p10 = a1 * b0
    p11 = a1 * b1
    mid = (p00 >> s32) + (p01 & m32) + (p10 & m32)
    hi = p11 + (p01 >> s32) + (p10 >> s32) + (mid >> s32)
    return np.int64(hi)


@njit(cache=True, nogil=True)
def mulh(a, b):
    r = mulhu(a, b)
    if a < 0:
        r -= b
    if b < 0:
        r -= a
    return r


@njit(cache=True, nogil=True)
def mulhsu(a, b):
    r = mulhu(a, b)
    if a < 0:
        r -= b
    return r


@njit(cache=True, nogil=True)
def div64(a, b):
    """RISC-V signed division (truncating; /0 = -1; overflow = MIN)."""
    if b == 0:
        return -1
    if b == -1:
        return -a  # wraps for MIN
    q = np.int64(np.uint64(-a if a < 0 else a) // np.uint64(-b if b < 0 else b))
    return -q if (a < 0) != (b < 0) else q


@njit(cache=True, nogil=True)
def rem64(a, b):
    if b == 0:
        return a
    if b == -1:
        return 0
    r = np.int64(np.uint64(-a if a < 0 else a) % np.uint64(-b if b < 0 else b))
    return -r if a < 0 else r


@njit(cache=True, nogil=True)
def divu64(a, b):
    if b == 0:
        return -1
    return np.int64(np.uint64(a) // np.uint64(b))


@njit(cache=True, nogil=True)
def remu64(a, b):
    if b == 0:
        return a
    return np.int64(np.uint64(a) % np.uint64(b))
