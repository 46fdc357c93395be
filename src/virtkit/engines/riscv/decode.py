"""Compressed-instruction (RVC) decoding: every 16-bit encoding expanded once into its 32-bit equivalent
(:func:`build_ctab`), so the interpreter and the JIT decode one instruction format. Part of the core."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _ei(op, rd, f3, rs1, imm):
    return ((imm & 0xFFF) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op


@njit(cache=True)
def _es(op, f3, rs1, rs2, imm):
    return (((imm >> 5) & 0x7F) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | ((imm & 31) << 7) | op


@njit(cache=True)
def _eb(f3, rs1, rs2, imm):
    return ((((imm >> 12) & 1) << 31) | (((imm >> 5) & 0x3F) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12)
            | (((imm >> 1) & 0xF) << 8) | (((imm >> 11) & 1) << 7) | 0x63)


@njit(cache=True)
def _ej(rd, imm):
    return ((((imm >> 20) & 1) << 31) | (((imm >> 1) & 0x3FF) << 21) | (((imm >> 11) & 1) << 20)
            | (((imm >> 12) & 0xFF) << 12) | (rd << 7) | 0x6F)


@njit(cache=True)
def _er(op, rd, f3, rs1, rs2, f7):
    return (f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op


@njit(cache=True)
def _b(c, hi, lo):
    return (c >> lo) & ((1 << (hi - lo + 1)) - 1)


@njit(cache=True)
def expand_c(c):
    """Expand a 16-bit compressed instruction into its 32-bit equivalent (0 = illegal/reserved)."""
    q = c & 3
    f3 = (c >> 13) & 7
    rdp = _b(c, 4, 2) + 8
    rs1p = _b(c, 9, 7) + 8
    rd = _b(c, 11, 7)
    rs2 = _b(c, 6, 2)
    imm6 = _b(c, 6, 2) | (_b(c, 12, 12) << 5)
    simm6 = imm6 - 64 if imm6 & 32 else imm6
    if q == 0:
        if f3 == 0:
            imm = (_b(c, 12, 11) << 4) | (_b(c, 10, 7) << 6) | (_b(c, 6, 6) << 2) | (_b(c, 5, 5) << 3)
            if imm == 0:
                return 0
            return _ei(0x13, rdp, 0, 2, imm)
        uimm_d = (_b(c, 12, 10) << 3) | (_b(c, 6, 5) << 6)
        uimm_w = (_b(c, 12, 10) << 3) | (_b(c, 6, 6) << 2) | (_b(c, 5, 5) << 6)
        if f3 == 1:
            return _ei(0x07, rdp, 3, rs1p, uimm_d)
        if f3 == 2:
            return _ei(0x03, rdp, 2, rs1p, uimm_w)
        if f3 == 3:
            return _ei(0x03, rdp, 3, rs1p, uimm_d)
        if f3 == 5:
            return _es(0x27, 3, rs1p, rdp, uimm_d)
        if f3 == 6:
            return _es(0x23, 2, rs1p, rdp, uimm_w)
        if f3 == 7:
            return _es(0x23, 3, rs1p, rdp, uimm_d)
        return 0
    if q == 1:
        if f3 == 0:
            return _ei(0x13, rd, 0, rd, simm6)
        if f3 == 1:
            if rd == 0:
                return 0
            return _ei(0x1B, rd, 0, rd, simm6)
        if f3 == 2:
            return _ei(0x13, rd, 0, 0, simm6)
        if f3 == 3:
            if rd == 2:
                imm = (_b(c, 12, 12) << 9) | (_b(c, 6, 6) << 4) | (_b(c, 5, 5) << 6) | (_b(c, 4, 3) << 7) | (
                    _b(c, 2, 2) << 5)
                if imm == 0:
                    return 0
                if imm & 0x200:
                    imm -= 0x400
                return _ei(0x13, 2, 0, 2, imm)
            if imm6 == 0:
                return 0
            return ((simm6 << 12) & 0xFFFFF000) | (rd << 7) | 0x37
        if f3 == 4:
            f2 = _b(c, 11, 10)
            if f2 == 0:
                return _er(0x13, rs1p, 5, rs1p, 0, 0) | (imm6 << 20)
            if f2 == 1:
                return _er(0x13, rs1p, 5, rs1p, 0, 0x20) | (imm6 << 20)
            if f2 == 2:
                return _ei(0x13, rs1p, 7, rs1p, simm6)
            sub = _b(c, 6, 5)
            if _b(c, 12, 12) == 0:
                if sub == 0:
                    return _er(0x33, rs1p, 0, rs1p, rdp, 0x20)
                if sub == 1:
                    return _er(0x33, rs1p, 4, rs1p, rdp, 0)
                if sub == 2:
                    return _er(0x33, rs1p, 6, rs1p, rdp, 0)
                return _er(0x33, rs1p, 7, rs1p, rdp, 0)
            if sub == 0:
                return _er(0x3B, rs1p, 0, rs1p, rdp, 0x20)
            if sub == 1:
                return _er(0x3B, rs1p, 0, rs1p, rdp, 0)
            return 0
        if f3 == 5:
            imm = ((_b(c, 12, 12) << 11) | (_b(c, 11, 11) << 4) | (_b(c, 10, 9) << 8) | (_b(c, 8, 8) << 10)
                   | (_b(c, 7, 7) << 6) | (_b(c, 6, 6) << 7) | (_b(c, 5, 3) << 1) | (_b(c, 2, 2) << 5))
            if imm & 0x800:
                imm -= 0x1000
            return _ej(0, imm)
        imm = ((_b(c, 12, 12) << 8) | (_b(c, 11, 10) << 3) | (_b(c, 6, 5) << 6) | (_b(c, 4, 3) << 1)
               | (_b(c, 2, 2) << 5))
        if imm & 0x100:
            imm -= 0x200
        return _eb(0 if f3 == 6 else 1, rs1p, 0, imm)
    if q == 2:
        if f3 == 0:
            return _er(0x13, rd, 1, rd, 0, 0) | (imm6 << 20)
        uimm_d = (_b(c, 12, 12) << 5) | (_b(c, 6, 5) << 3) | (_b(c, 4, 2) << 6)
        if f3 == 1:
            return _ei(0x07, rd, 3, 2, uimm_d)
        if f3 == 2:
            if rd == 0:
                return 0
            return _ei(0x03, rd, 2, 2, (_b(c, 12, 12) << 5) | (_b(c, 6, 4) << 2) | (_b(c, 3, 2) << 6))
        if f3 == 3:
            if rd == 0:
                return 0
            return _ei(0x03, rd, 3, 2, uimm_d)
        if f3 == 4:
            if _b(c, 12, 12) == 0:
                if rs2 == 0:
                    if rd == 0:
                        return 0
                    return _ei(0x67, 0, 0, rd, 0)
                return _er(0x33, rd, 0, 0, rs2, 0)
            if rs2 == 0:
                if rd == 0:
                    return 0x00100073
                return _ei(0x67, 1, 0, rd, 0)
            return _er(0x33, rd, 0, rd, rs2, 0)
        sd_off = (_b(c, 12, 10) << 3) | (_b(c, 9, 7) << 6)
        if f3 == 5:
            return _es(0x27, 3, 2, rs2, sd_off)
        if f3 == 6:
            return _es(0x23, 2, 2, rs2, (_b(c, 12, 9) << 2) | (_b(c, 8, 7) << 6))
        return _es(0x23, 3, 2, rs2, sd_off)
    return 0


@njit(cache=True)
def build_ctab():
    """All 65536 16-bit words expanded (entries for 32-bit-length words are unused)."""
    t = np.zeros(65536, dtype=np.int32)  # 256 KiB: looked up for every compressed instruction (cache-friendly)
    for c in range(65536):
        if (c & 3) != 3:
            t[c] = expand_c(c)
    return t
