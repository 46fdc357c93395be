"""The RV64IMAFDC interpreter core, compiled with Numba: decode/execute, CSRs, traps, MMU, PMP, CLINT.

Everything here is ``@njit(cache=True, nogil=True)`` over NumPy arrays owned by
:class:`virtkit.engines.riscv.engine.RiscvEngine`; no Python runs per instruction.
All values are int64 (unsigned views only where the operation needs them) because
Numba turns ``uint64 op int64`` into float64.

Design choices (documented in engine.py too): misaligned loads/stores are done in
hardware (AMO/LR/SC misaligned raise address-misaligned); A/D bits are set by the
page-table walker in hardware; 16 PMP entries (the other 48 read as zero); a per-hart
software TLB for fetch/load/store keyed by (virtual page, privilege context).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic
from numba.np.arrayobj import make_array, populate_array

from virtkit.engines.riscv.consts import (  # noqa: F401  (constants live in consts.py, numba-free)
    CF_CLINT_BASE,
    CF_DETERMINISTIC,
    CF_FCOUNT,
    CF_FREADS,
    CF_JIT,
    CF_JIT_SYNC,
    CF_N,
    CF_NFAST,
    CF_NHARTS,
    CF_NMMIO,
    CF_NRESV,
    CF_RAM_BASE,
    CF_RAM_SIZE,
    CF_RATE,
    CF_SLICE,
    CF_STOP,
    CF_TOHOST,
    CLINT_SIZE,
    CSHIFT,
    CT_FRAC,
    CT_MTIME,
    CYCLE,
    EXIT_BUDGET,
    EXIT_HTIF,
    EXIT_MMIO_READ,
    EXIT_MMIO_WRITE,
    EXIT_SHUTDOWN,
    EXIT_WFI,
    FAST0,
    FAST_BUFFER,
    FAST_SHADOW,
    FCSR,
    FFLAGS,
    FRING0,
    FRING_N,
    FRM,
    HS_CY_FROZEN,
    HS_CYC_OFF,
    HS_EXC_CAUSE,
    HS_EXC_TVAL,
    HS_INSTRET,
    HS_IR_FROZEN,
    HS_IRET_OFF,
    HS_JIT,
    HS_JIT_CALLS,
    HS_MMIO_KIND,
    HS_MMIO_RD,
    HS_N,
    HS_PC,
    HS_PRIV,
    HS_RESV,
    HS_TRAPS,
    HS_WFI,
    INSTRET,
    INTBIT,
    IRQ_ORDER,
    J_ARG,
    J_LCTX,
    J_LIMIT,
    J_PC,
    J_SCTX,
    J_SELF,
    J_STATUS,
    JMASK,
    JR_INVAL,
    JR_RING,
    JSIZE,
    JSTRIDE,
    JT_FN,
    JT_HI,
    JT_KEY,
    JT_LO,
    MARCHID,
    MCAUSE,
    MCONFIGPTR,
    MCOUNTEREN,
    MCOUNTINHIBIT,
    MCYCLE,
    MEDELEG,
    MEDELEG_MASK,
    MENVCFG,
    MEPC,
    MHARTID,
    MIDELEG,
    MIDELEG_MASK,
    MIE,
    MIE_MASK,
    MIMPID,
    MINSTRET,
    MIP,
    MIP_SWMASK,
    MISA,
    MISA_VALUE,
    MSCRATCH,
    MSTATUS,
    MSTATUS_FIXED,
    MSTATUS_WMASK,
    MTVAL,
    MTVEC,
    MVENDORID,
    NPMP,
    PAGE_SLOTS,
    PMPADDR0,
    PMPCFG0,
    REQ_AGAIN,
    REQ_N,
    S_MODE_IRQ,
    SATP,
    SCAUSE,
    SCOUNTEREN,
    SENVCFG,
    SEPC,
    SIE,
    SIP,
    SSCRATCH,
    SSTATUS,
    SSTATUS_MASK,
    ST_BAIL,
    ST_CODE,
    ST_END,
    ST_REJOIN,
    STVAL,
    STVEC,
    TIME,
    TLB_BITS,
    TLB_MASK,
    TLB_SIZE,
)
from virtkit.engines.riscv.fpu import fp_exec


@intrinsic
def unmanaged(typingctx, arr):
    """The same array without its NRT meminfo, so calls that pass it do no reference counting.

    Only valid while the caller (RiscvEngine.run, which holds every array) keeps the memory alive.
    With the hot helpers inlined (``inline='always'``) this removes ~30 ns of incref/decref and
    argument marshalling from every CSR access, trap and fetch-page change.
    """

    def codegen(context, builder, signature, args):
        src = make_array(arr)(context, builder, value=args[0])
        dst = make_array(arr)(context, builder)
        populate_array(dst, data=src.data, shape=src.shape, strides=src.strides, itemsize=src.itemsize,
                       meminfo=None)
        return dst._getvalue()

    return arr(arr), codegen


@intrinsic
def call_native(typingctx, fn, ctxp):
    """Call the JIT-compiled region at address ``fn`` as ``int64 fn(int64 ctx)`` (see jit.py)."""

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(i64, [i64])
        return builder.call(builder.inttoptr(args[0], fnty.as_pointer()), [args[1]])

    return types.int64(types.int64, types.int64), codegen


@njit(cache=True, nogil=True)
def jit_inval(o, jt):
    """A store hit RAM offset ``o`` in a chunk with translated code: drop every region covering it."""
    jtab = jt[0]
    jhot = jt[1]
    jreq = jt[2]
    cmap = jt[3]
    ch = o >> CSHIFT
    cnt = (cmap[ch] >> 1) + 1
    cmap[ch] = np.uint8((min(cnt, 127) << 1) & 0xFE)
    jreq[JR_INVAL] += 1
    base = (o >> 12) * JSTRIDE  # a region lies inside one page: its entries use that page's slots
    for k in range(PAGE_SLOTS):
        i = (base + k) & JMASK
        if jtab[JT_KEY, i] >= 0 and jtab[JT_LO, i] <= ch and jtab[JT_HI, i] >= ch:
            jtab[JT_KEY, i] = -1
            jhot[i] = 0


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


# ---------------------------------------------------------------------------
# compressed-instruction expansion table
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# PMP, translation, physical access
# ---------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def pmp_check(c, addr, size, eff, perm):
    """1 = allowed, 0 = denied, -1 = the first matching entry covers only part of the range."""
    for i in range(NPMP):
        cfg = (c[PMPCFG0 + (i >> 3) * 2] >> ((i & 7) * 8)) & 0xFF
        a = (cfg >> 3) & 3
        if a == 0:
            continue
        pa = c[PMPADDR0 + i]
        if a == 1:
            lo = (c[PMPADDR0 + i - 1] << 2) if i > 0 else 0
            hi = pa << 2
        elif a == 2:
            lo = pa << 2
            hi = lo + 4
        else:
            m = pa ^ (pa + 1)
            lo = (pa & ~m) << 2
            hi = lo + ((m + 1) << 2)
        if addr + size <= lo or addr >= hi:
            continue
        if addr < lo or addr + size > hi:
            return -1
        if eff == 3 and (cfg & 0x80) == 0:
            return 1
        return 1 if (cfg & perm) else 0
    return 1 if eff == 3 else 0


@njit(cache=True, nogil=True)
def _fault(hs, h, cause, tval):
    hs[h, HS_EXC_CAUSE] = cause
    hs[h, HS_EXC_TVAL] = tval
    return -1


@njit(cache=True, nogil=True)
def _pf_cause(acc):
    if acc == 0:
        return 12
    if acc == 1 or acc == 4:
        return 13
    return 15


@njit(cache=True, nogil=True)
def _af_cause(acc):
    if acc == 0:
        return 1
    if acc == 1 or acc == 4:
        return 5
    return 7


@njit(cache=True, nogil=True)
def translate(h, vaddr, acc, eff, c, r64, rb, rsz, hs):
    """Virtual -> physical address for access type acc (0 fetch, 1 load, 2 store, 3 AMO/SC, 4 LR).

    Returns the physical address, or -1 with the exception stored in hs.
    """
    satp = c[SATP]
    mode = srl(satp, 60)
    if eff == 3 or mode == 0:
        if vaddr < 0 or vaddr >= (1 << 56):
            return _fault(hs, h, _af_cause(acc), vaddr)
        return vaddr
    levels = 3 if mode == 8 else 4
    vbits = 12 + 9 * levels
    top = vaddr >> (vbits - 1)
    if top != 0 and top != -1:
        return _fault(hs, h, _pf_cause(acc), vaddr)
    a = (satp & 0xFFFFFFFFFFF) << 12
    ms = c[MSTATUS]
    i = levels - 1
    while True:
        pte_addr = a + ((vaddr >> (12 + 9 * i)) & 0x1FF) * 8
        if pte_addr < rb or pte_addr + 8 > rb + rsz or pmp_check(c, pte_addr, 8, 1, 1) != 1:
            return _fault(hs, h, _af_cause(acc), vaddr)
        pte = r64[(pte_addr - rb) >> 3]
        v = pte & 1
        r = (pte >> 1) & 1
        w = (pte >> 2) & 1
        x = (pte >> 3) & 1
        if v == 0 or (r == 0 and w == 1) or (pte >> 54) != 0:
            return _fault(hs, h, _pf_cause(acc), vaddr)
        if r == 1 or x == 1:
            break
        i -= 1
        if i < 0:
            return _fault(hs, h, _pf_cause(acc), vaddr)
        a = ((pte >> 10) & 0xFFFFFFFFFFF) << 12
    u = (pte >> 4) & 1
    if acc == 0:
        if x == 0 or (eff == 0 and u == 0) or (eff == 1 and u == 1):
            return _fault(hs, h, 12, vaddr)
    else:
        if eff == 0 and u == 0:
            return _fault(hs, h, _pf_cause(acc), vaddr)
        if eff == 1 and u == 1 and ((ms >> 18) & 1) == 0:
            return _fault(hs, h, _pf_cause(acc), vaddr)
        if acc == 1 or acc == 4:
            if r == 0 and not (x == 1 and ((ms >> 19) & 1) == 1):
                return _fault(hs, h, 13, vaddr)
        elif w == 0:
            return _fault(hs, h, 15, vaddr)
    ppn = (pte >> 10) & 0xFFFFFFFFFFF
    if i > 0 and (ppn & ((1 << (9 * i)) - 1)) != 0:
        return _fault(hs, h, _pf_cause(acc), vaddr)
    store = acc == 2 or acc == 3
    if (pte & 0x40) == 0 or (store and (pte & 0x80) == 0):
        pte |= 0x40
        if store:
            pte |= 0x80
        r64[(pte_addr - rb) >> 3] = pte
    lowmask = (1 << (12 + 9 * i)) - 1
    return ((ppn << 12) & ~lowmask) | (vaddr & lowmask)


@njit(cache=True, nogil=True, inline="always")
def ctx_tag(acc, eff, ms):
    """The privilege-context bits XORed into TLB tags (bits 58..62)."""
    if acc == 0:
        k = eff
    elif acc == 1:
        k = eff | (((ms >> 18) & 1) << 2) | (((ms >> 19) & 1) << 3)
    else:
        k = eff | (((ms >> 18) & 1) << 2)
    return (k | 16) << 58


@njit(cache=True, nogil=True, inline="always")
def eff_priv(priv, ms):
    if priv == 3 and (ms >> 17) & 1:
        return (ms >> 11) & 3
    return priv


@njit(cache=True, nogil=True, inline="always")
def fetch_page(h, vaddr, priv, c, r64, rb, rsz, cfg, tlbt, tlbo, hs):
    """RAM offset of the page holding ``vaddr`` for instruction fetch, or -1 (exception in hs)."""
    vpn = vaddr >> 12
    idx = vpn & TLB_MASK
    tag = vpn ^ ctx_tag(0, priv, 0)
    if tlbt[0, idx] == tag:
        return tlbo[0, idx]
    pa = translate(h, vaddr, 0, priv, c, r64, rb, rsz, hs)
    if pa < 0:
        return -1
    page = pa & ~0xFFF
    if pa < rb or pa >= rb + rsz:
        return _fault(hs, h, 1, vaddr)
    p = pmp_check(c, page, 4096, priv, 4)
    if p == 1:
        tlbt[0, idx] = tag
        tlbo[0, idx] = page - rb
        return page - rb
    if p == 0 or pmp_check(c, pa, 2, priv, 4) != 1:
        return _fault(hs, h, 1, vaddr)
    # partially covered page: no caching; the caller re-translates on the next fetch
    return page - rb


@njit(cache=True, nogil=True)
def _clint_read(off, size, cfg, msip, mtcmp, ctime):
    nh = cfg[CF_NHARTS]
    base = off & ~7
    if off < 0x4000:
        i = off >> 2
        word = (msip[i] & 1) if i < nh else 0
        return srl(word, (off & 3) * 8) & _szmask(size)
    if 0x4000 <= base < 0x4000 + 8 * nh:
        v = mtcmp[(base - 0x4000) >> 3]
    elif base == 0xBFF8:
        v = ctime[CT_MTIME]
    else:
        v = 0
    return srl(v, (off & 7) * 8) & _szmask(size)


@njit(cache=True, nogil=True)
def _szmask(size):
    return -1 if size == 8 else (1 << (size * 8)) - 1


@njit(cache=True, nogil=True)
def _clint_write(off, size, val, cfg, msip, mtcmp, ctime):
    nh = cfg[CF_NHARTS]
    if off < 0x4000:
        hh = off >> 2
        if hh < nh and (off & 3) == 0:
            msip[hh] = val & 1
        return
    base = off & ~7
    sh = (off & 7) * 8
    m = _szmask(size) << sh
    if 0x4000 <= base < 0x4000 + 8 * nh:
        i = (base - 0x4000) >> 3
        mtcmp[i] = (mtcmp[i] & ~m) | ((val << sh) & m)
    elif base == 0xBFF8:
        ctime[CT_MTIME] = (ctime[CT_MTIME] & ~m) | ((val << sh) & m)


@njit(cache=True, nogil=True)
def _ram_read(R, o, size):
    r8u = R[0]
    if size == 8 and (o & 7) == 0:
        return R[3][o >> 3]
    if size == 4 and (o & 3) == 0:
        return np.int64(R[2][o >> 2])
    if size == 2 and (o & 1) == 0:
        return np.int64(R[1][o >> 1])
    v = 0
    for i in range(size):
        v |= np.int64(r8u[o + i]) << (8 * i)
    return v


@njit(cache=True, nogil=True)
def _ram_write(R, o, size, val):
    r8u = R[0]
    if size == 8 and (o & 7) == 0:
        R[3][o >> 3] = val
    elif size == 4 and (o & 3) == 0:
        R[6][o >> 2] = np.int32(sext32(val))
    else:
        for i in range(size):
            r8u[o + i] = np.uint8(srl(val, 8 * i) & 0xFF)


@njit(cache=True, nogil=True)
def break_resv(h, o, cfg, hs):
    """A store to RAM offset o by hart h invalidates other harts' reservations on that granule."""
    g = o & ~63
    for k in range(cfg[CF_NHARTS]):
        if k != h and hs[k, HS_RESV] == g:
            hs[k, HS_RESV] = -1
            cfg[CF_NRESV] -= 1


@njit(cache=True, nogil=True)
def mem_slow(h, vaddr, size, acc, wval, priv, c, R, cfg, mmio, msip, mtcmp, ctime, tlbt, tlbo, hs, out, jt):
    """Slow path of a data access (TLB miss, misaligned, page-crossing, CLINT, MMIO, tohost).

    acc: 1 load, 2 store, 3 AMO/SC (returns RAM offset), 4 LR (returns RAM offset).
    Returns (status, value): 0 ok, 1 exception (in hs), 2 MMIO exit (out filled), 3 HTIF exit.
    """
    rb = cfg[CF_RAM_BASE]
    rsz = cfg[CF_RAM_SIZE]
    r64 = R[3]
    ms = c[MSTATUS]
    eff = eff_priv(priv, ms)
    perm = 1 if (acc == 1 or acc == 4) else 2
    tl = 1 if perm == 1 else 2
    if (vaddr & 0xFFF) + size > 4096:
        # page-crossing (misaligned) access: translate both pages first, then go byte by byte in RAM
        pa1 = translate(h, vaddr, acc, eff, c, r64, rb, rsz, hs)
        if pa1 < 0:
            return 1, 0
        v2 = (vaddr + size - 1) & ~0xFFF
        pa2 = translate(h, v2, acc, eff, c, r64, rb, rsz, hs)
        if pa2 < 0:
            return 1, 0
        n1 = 4096 - (vaddr & 0xFFF)
        if (pa1 < rb or pa1 + n1 > rb + rsz or pmp_check(c, pa1, n1, eff, perm) != 1):
            return 1, _fault(hs, h, _af_cause(acc), vaddr)
        if (pa2 < rb or pa2 + size - n1 > rb + rsz or pmp_check(c, pa2, size - n1, eff, perm) != 1):
            return 1, _fault(hs, h, _af_cause(acc), v2)
        v = 0
        for i in range(size):
            o = (pa1 - rb + i) if i < n1 else (pa2 - rb + i - n1)
            if perm == 1:
                v |= np.int64(R[0][o]) << (8 * i)
            else:
                R[0][o] = np.uint8(srl(wval, 8 * i) & 0xFF)
                if cfg[CF_NRESV] > 0:
                    break_resv(h, o, cfg, hs)
                if jt[3][o >> CSHIFT] & 1:
                    jit_inval(o, jt)
        return 0, v
    pa = translate(h, vaddr, acc, eff, c, r64, rb, rsz, hs)
    if pa < 0:
        return 1, 0
    if rb <= pa and pa + size <= rb + rsz:
        page = pa & ~0xFFF
        p = pmp_check(c, page, 4096, eff, perm)
        if p == -1:
            p = pmp_check(c, pa, size, eff, perm)
            if p == -1:
                p = 0
        elif p == 1:
            th = cfg[CF_TOHOST]
            if not (perm == 2 and th >= 0 and (th & ~0xFFF) == page):
                vpn = vaddr >> 12
                idx = vpn & TLB_MASK
                tlbt[tl, idx] = vpn ^ ctx_tag(tl, eff, ms)
                tlbo[tl, idx] = page - rb
        if p != 1:
            return 1, _fault(hs, h, _af_cause(acc), vaddr)
        o = pa - rb
        if acc >= 3:
            return 0, o
        if perm == 1:
            return 0, _ram_read(R, o, size)
        _ram_write(R, o, size, wval)
        if cfg[CF_NRESV] > 0:
            break_resv(h, o, cfg, hs)
        if jt[3][o >> CSHIFT] & 1:
            jit_inval(o, jt)
        if jt[3][(o + size - 1) >> CSHIFT] & 1:
            jit_inval(o + size - 1, jt)
        th = cfg[CF_TOHOST]
        if th >= 0 and pa <= th < pa + size:
            out[0] = EXIT_HTIF
            out[1] = h
            out[2] = th
            out[3] = 8
            out[4] = r64[(th - rb) >> 3]
            return 3, 0
        return 0, 0
    # not RAM: CLINT, MMIO or nothing
    if acc >= 3:
        return 1, _fault(hs, h, _af_cause(acc), vaddr)
    if pmp_check(c, pa, size, eff, perm) != 1:
        return 1, _fault(hs, h, _af_cause(acc), vaddr)
    cb = cfg[CF_CLINT_BASE]
    if cb <= pa and pa + size <= cb + CLINT_SIZE:
        if perm == 1:
            return 0, _clint_read(pa - cb, size, cfg, msip, mtcmp, ctime)
        _clint_write(pa - cb, size, wval, cfg, msip, mtcmp, ctime)
        return 0, 0
    for i in range(cfg[CF_NFAST]):  # registers the device model lets the core serve (coalesced MMIO)
        r = FAST0 + i
        if mmio[r, 0] == pa and mmio[r, 1] == size:
            k = mmio[r, 2]
            if k == FAST_SHADOW and perm == 1:
                cfg[CF_FREADS] += 1
                return 0, mmio[r, 3] & _szmask(size)
            if k == FAST_BUFFER and perm == 2:
                q = cfg[CF_FCOUNT]
                if q < FRING_N:
                    mmio[FRING0 + q, 0] = i
                    mmio[FRING0 + q, 1] = wval & _szmask(size)
                    cfg[CF_FCOUNT] = q + 1
                    return 0, 0
            break
    for i in range(cfg[CF_NMMIO]):
        if mmio[i, 0] <= pa and pa + size <= mmio[i, 0] + mmio[i, 1]:
            out[1] = h
            out[2] = pa
            out[3] = size
            if perm == 1:
                out[0] = EXIT_MMIO_READ
                out[4] = 0
            else:
                out[0] = EXIT_MMIO_WRITE
                out[4] = wval & _szmask(size)
            return 2, 0
    return 1, _fault(hs, h, _af_cause(acc), vaddr)


# ---------------------------------------------------------------------------
# CSRs, traps, interrupts
# ---------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def flush_tlb(tlbt):
    tlbt[:, :] = 0


@njit(cache=True, nogil=True, inline="always")
def csr_read(h, num, priv, c, hs, irq, ctime, retired):
    """(ok, value) of CSR ``num`` read at privilege ``priv``; ok=False means illegal instruction."""
    if ((num >> 8) & 3) > priv:
        return False, 0
    if num <= 3:
        if ((c[MSTATUS] >> 13) & 3) == 0:
            return False, 0
        if num == FFLAGS:
            return True, c[FFLAGS]
        if num == FRM:
            return True, c[FRM]
        if num == FCSR:
            return True, (c[FRM] << 5) | c[FFLAGS]
        return False, 0
    if 0xC00 <= num <= 0xC1F:
        bit = num - 0xC00
        if priv < 3 and ((c[MCOUNTEREN] >> bit) & 1) == 0:
            return False, 0
        if priv < 1 and ((c[SCOUNTEREN] >> bit) & 1) == 0:
            return False, 0
        if num == CYCLE:
            return True, _counter(c, hs, h, retired, 0)
        if num == TIME:
            return True, ctime[CT_MTIME]
        if num == INSTRET:
            return True, _counter(c, hs, h, retired, 2)
        return True, 0
    if num == MCYCLE:
        return True, _counter(c, hs, h, retired, 0)
    if num == MINSTRET:
        return True, _counter(c, hs, h, retired, 2)
    if 0xB03 <= num <= 0xB1F or 0x323 <= num <= 0x33F:
        return True, 0
    if num == SSTATUS:
        v = c[MSTATUS] & SSTATUS_MASK
        if ((v >> 13) & 3) == 3:
            v |= INTBIT
        return True, v
    if num == MSTATUS:
        v = c[MSTATUS]
        if ((v >> 13) & 3) == 3:
            v |= INTBIT
        return True, v
    if num == SIE:
        return True, c[MIE] & c[MIDELEG]
    if num == SIP:
        return True, (c[MIP] | irq[h]) & c[MIDELEG]
    if num == MIP:
        return True, c[MIP] | irq[h]
    if num == SATP:
        if priv == 1 and (c[MSTATUS] >> 20) & 1:
            return False, 0
        return True, c[SATP]
    if num == MISA:
        return True, MISA_VALUE
    if num == MHARTID:
        return True, h
    if num == MVENDORID or num == MARCHID or num == MIMPID or num == MCONFIGPTR:
        return True, 0
    if 0x3A0 <= num <= 0x3AF:
        if num & 1:
            return False, 0
        return True, c[num]
    if 0x3B0 <= num <= 0x3EF:
        return True, c[num]
    if (num == STVEC or num == SCOUNTEREN or num == SENVCFG or num == SSCRATCH or num == SEPC or num == SCAUSE
            or num == STVAL or num == MEDELEG or num == MIDELEG or num == MIE or num == MTVEC
            or num == MCOUNTEREN or num == MENVCFG or num == MCOUNTINHIBIT or num == MSCRATCH or num == MEPC
            or num == MCAUSE or num == MTVAL):
        return True, c[num]
    return False, 0


@njit(cache=True, nogil=True, inline="always")
def _counter(c, hs, h, retired, which):
    """mcycle (which=0) or minstret (which=2): retired instructions plus the written offset."""
    if (c[MCOUNTINHIBIT] >> which) & 1:
        return hs[h, HS_CY_FROZEN] if which == 0 else hs[h, HS_IR_FROZEN]
    return retired + (hs[h, HS_CYC_OFF] if which == 0 else hs[h, HS_IRET_OFF])


@njit(cache=True, nogil=True, inline="always")
def csr_write(h, num, val, priv, c, hs, ctime, retired):
    """Write CSR ``num`` (access already checked). Returns 1 when TLBs must be flushed."""
    if num == FFLAGS:
        c[FFLAGS] = val & 0x1F
    elif num == FRM:
        c[FRM] = val & 7
    elif num == FCSR:
        c[FFLAGS] = val & 0x1F
        c[FRM] = (val >> 5) & 7
    elif num == MSTATUS or num == SSTATUS:
        mask = MSTATUS_WMASK if num == MSTATUS else (SSTATUS_MASK & ~(3 << 32))
        old = c[MSTATUS]
        nv = (old & ~mask) | (val & mask)
        if ((nv >> 11) & 3) == 2:
            nv = (nv & ~(3 << 11)) | (old & (3 << 11))
        c[MSTATUS] = (nv & ~(0xF << 32)) | MSTATUS_FIXED
        return 0
    elif num == MEDELEG:
        c[MEDELEG] = val & MEDELEG_MASK
    elif num == MIDELEG:
        c[MIDELEG] = val & MIDELEG_MASK
    elif num == MIE:
        c[MIE] = val & MIE_MASK
    elif num == SIE:
        m = c[MIDELEG] & S_MODE_IRQ
        c[MIE] = (c[MIE] & ~m) | (val & m)
    elif num == MIP:
        c[MIP] = (c[MIP] & ~MIP_SWMASK) | (val & MIP_SWMASK)
    elif num == SIP:
        m = c[MIDELEG] & 0x2
        c[MIP] = (c[MIP] & ~m) | (val & m)
    elif num == MTVEC or num == STVEC:
        c[num] = val & ~2
    elif num == MEPC or num == SEPC:
        c[num] = val & ~1
    elif num == MCOUNTEREN or num == SCOUNTEREN:
        c[num] = val & 0xFFFFFFFF
    elif num == MENVCFG or num == SENVCFG:
        c[num] = val & 1
    elif num == MCOUNTINHIBIT:
        old = c[MCOUNTINHIBIT]
        for which in (0, 2):
            was = (old >> which) & 1
            now = (val >> which) & 1
            if was == 0 and now == 1:
                cur = _counter(c, hs, h, retired, which)
                if which == 0:
                    hs[h, HS_CY_FROZEN] = cur
                else:
                    hs[h, HS_IR_FROZEN] = cur
            elif was == 1 and now == 0:
                if which == 0:
                    hs[h, HS_CYC_OFF] = hs[h, HS_CY_FROZEN] - retired
                else:
                    hs[h, HS_IRET_OFF] = hs[h, HS_IR_FROZEN] - retired
        c[MCOUNTINHIBIT] = val & 0xFFFFFFFD
    elif num == MCYCLE:
        if c[MCOUNTINHIBIT] & 1:
            hs[h, HS_CY_FROZEN] = val
        else:
            hs[h, HS_CYC_OFF] = val - retired - 1
    elif num == MINSTRET:
        # the CSR instruction itself must not count: it writes the value after retirement
        if c[MCOUNTINHIBIT] & 4:
            hs[h, HS_IR_FROZEN] = val
        else:
            hs[h, HS_IRET_OFF] = val - retired - 1
    elif num == SATP:
        mode = srl(val, 60)
        if mode == 0 or mode == 8 or mode == 9:
            c[SATP] = val
            return 1
    elif 0x3A0 <= num <= 0x3AF:
        old = c[num]
        nv = 0
        for k in range(8):
            oc = (old >> (8 * k)) & 0xFF
            ncf = (val >> (8 * k)) & 0x9F
            if oc & 0x80:
                ncf = oc
            elif (ncf & 3) == 2:
                ncf &= ~2
            nv |= ncf << (8 * k)
        c[num] = nv
        return 1
    elif 0x3B0 <= num <= 0x3EF:
        i = num - 0x3B0
        if i < NPMP:
            cfgi = (c[PMPCFG0 + (i >> 3) * 2] >> ((i & 7) * 8)) & 0xFF
            locked = (cfgi & 0x80) != 0
            if i + 1 < NPMP:
                nc = (c[PMPCFG0 + ((i + 1) >> 3) * 2] >> (((i + 1) & 7) * 8)) & 0xFF
                if (nc & 0x80) and ((nc >> 3) & 3) == 1:
                    locked = True
            if not locked:
                c[num] = val & ((1 << 54) - 1)
            return 1
    elif num == MSCRATCH or num == SSCRATCH or num == MCAUSE or num == SCAUSE or num == MTVAL or num == STVAL:
        c[num] = val
    return 0


@njit(cache=True, nogil=True, inline="always")
def take_trap(c, priv, pc, cause, tval):
    """Enter the trap handler for ``cause`` (bit 63 set for interrupts); returns (new_pc, new_priv)."""
    intr = cause < 0
    code = cause & 0xFF
    deleg = c[MIDELEG] if intr else c[MEDELEG]
    ms = c[MSTATUS]
    if priv <= 1 and (deleg >> code) & 1:
        c[SCAUSE] = cause
        c[SEPC] = pc
        c[STVAL] = tval
        sie = (ms >> 1) & 1
        ms = (ms & ~((1 << 5) | (1 << 1) | (1 << 8))) | (sie << 5) | (priv << 8)
        c[MSTATUS] = ms
        tv = c[STVEC]
        npc = tv & ~3
        if intr and (tv & 3) == 1:
            npc += 4 * code
        return npc, 1
    c[MCAUSE] = cause
    c[MEPC] = pc
    c[MTVAL] = tval
    mie = (ms >> 3) & 1
    ms = (ms & ~((1 << 7) | (1 << 3) | (3 << 11))) | (mie << 7) | (priv << 11)
    c[MSTATUS] = ms
    tv = c[MTVEC]
    npc = tv & ~3
    if intr and (tv & 3) == 1:
        npc += 4 * code
    return npc, 3


@njit(cache=True, nogil=True, inline="always")
def pending_irq(c, priv, ext):
    """The interrupt to take now (cause with bit 63), or 0 when none."""
    pend = (c[MIP] | ext) & c[MIE]
    if pend == 0:
        return 0
    ms = c[MSTATUS]
    mdel = c[MIDELEG]
    m_en = pend & ~mdel
    if not (priv < 3 or (ms >> 3) & 1):
        m_en = 0
    s_en = pend & mdel
    if not (priv < 1 or (priv == 1 and (ms >> 1) & 1)):
        s_en = 0
    sel = m_en if m_en else s_en
    if sel == 0:
        return 0
    for b in IRQ_ORDER:
        if (sel >> b) & 1:
            return INTBIT | b
    return 0


@njit(cache=True, nogil=True)
def update_timer_bits(csr, cfg, msip, mtcmp, ctime):
    """Drive MTIP/MSIP in each hart's mip from the CLINT."""
    mt = ctime[CT_MTIME]
    for h in range(cfg[CF_NHARTS]):
        v = csr[h, MIP] & ~((1 << 7) | (1 << 3))
        if not ult(mt, mtcmp[h]):
            v |= 1 << 7
        if msip[h] & 1:
            v |= 1 << 3
        csr[h, MIP] = v


# ---------------------------------------------------------------------------
# the interpreter
# ---------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def run_slice(h, limit, x, f, csr, hs, irq, R, cfg, mmio, msip, mtcmp, ctime, tlbt_all, tlbo_all, ctab, out, jt):
    """Run hart h for up to ``limit`` instructions. Returns (executed, exit_flag).

    ``jt`` = (jtab, jhot, jreq, cmap, jctx): the JIT tier's tables (jit.py). At each block entry
    (after a taken branch, a jump, a trap or a native region) the RAM offset of pc is looked up in
    jtab: a hit calls the region's host code, a miss counts towards the hotness threshold.
    """
    xr = x[h]
    fr = f[h]
    c = csr[h]
    tlbt = tlbt_all[h]
    tlbo = tlbo_all[h]
    r8u = R[0]
    r16u = R[1]
    r32u = R[2]
    r64 = R[3]
    r8s = R[4]
    r16s = R[5]
    r32s = R[6]
    rb = cfg[CF_RAM_BASE]
    rsz = cfg[CF_RAM_SIZE]
    nh = cfg[CF_NHARTS]
    pc = hs[h, HS_PC]
    priv = hs[h, HS_PRIV]
    fvpn = -1
    foff = 0
    n = 0
    ntrap = 0
    ex = 0
    irq_check = True
    ctx_dirty = True
    lctx = 0
    sctx = 0
    base_ret = hs[h, HS_INSTRET]
    jtab = jt[0]
    jhot = jt[1]
    jreq = jt[2]
    cmap = jt[3]
    jc = jt[4][h]
    jthr = cfg[CF_JIT]
    blk = True
    rejoin = False  # after this instruction, native code continues at the next one
    while n < limit:
        if ctx_dirty | irq_check:
            if ctx_dirty:
                ctx_dirty = False
                ms = c[MSTATUS]
                e = eff_priv(priv, ms)
                lctx = ctx_tag(1, e, ms)
                sctx = ctx_tag(2, e, ms)
                fvpn = -1
            if irq_check:
                irq_check = False
                cause = pending_irq(c, priv, irq[h])
                if cause != 0:
                    pc, priv = take_trap(c, priv, pc, cause, 0)
                    ctx_dirty = True
                    blk = True
                    ntrap += 1
                    n += 1
                    continue
        exc = -1
        tval = 0
        # ---- fetch ----
        if (pc >> 12) == fvpn:
            off = foff + (pc & 0xFFF)
        else:
            foff = fetch_page(h, pc, priv, c, r64, rb, rsz, cfg, tlbt, tlbo, hs)
            if foff < 0:
                fvpn = -1
                pc, priv = take_trap(c, priv, pc, hs[h, HS_EXC_CAUSE], hs[h, HS_EXC_TVAL])
                ctx_dirty = True
                ntrap += 1
                n += 1
                continue
            fvpn = pc >> 12
            if tlbt[0, fvpn & TLB_MASK] != (fvpn ^ ctx_tag(0, priv, 0)):
                fvpn = -1  # PMP splits this page: check every fetch
            off = foff + (pc & 0xFFF)
        if blk:
            blk = False
            if jthr > 0 and fvpn != -1:  # -1: no cached fetch page (PMP split)
                ji = (((off & 0xFFF) >> 1) + (off >> 12) * JSTRIDE) & JMASK  # consts.jslot
                if jtab[JT_KEY, ji] == off:
                    jc[J_PC] = pc
                    jc[J_LIMIT] = limit - n
                    jc[J_LCTX] = lctx
                    jc[J_SCTX] = sctx
                    jc[J_ARG] = off
                    k = call_native(jtab[JT_FN, ji], jc[J_SELF])
                    n += k
                    hs[h, HS_JIT] += k
                    hs[h, HS_JIT_CALLS] += 1
                    pc = jc[J_PC]
                    jst = jc[J_STATUS]
                    if jst == ST_END:
                        blk = True
                    elif jst == ST_CODE:
                        jit_inval(jc[J_ARG], jt)
                    elif jst == ST_REJOIN or jst == ST_BAIL:
                        # after that instruction, look the next pc up again: after a bail (a TLB miss, say) in
                        # long straight-line code the rest runs native too, as soon as a region starts there
                        rejoin = True
                    continue
                hc = jhot[ji] + 1
                jhot[ji] = hc
                # queue it (a ring: jreq[0] head, jreq[1] tail, dropped when full); asked again every
                # REQ_AGAIN entries while it runs interpreted (a dropped request, a slot another region took)
                if hc == jthr or (hc & (REQ_AGAIN - 1)) == 0:
                    q = jreq[0]
                    if q - jreq[1] < REQ_N:
                        jreq[JR_RING + (q & (REQ_N - 1))] = off
                        jreq[0] = q + 1
                        if cfg[CF_JIT_SYNC]:
                            blk = True
                            break  # deterministic runs translate it now: run_harts returns, pc not yet run
        lo = np.int64(r16u[off >> 1])
        if (lo & 3) == 3:
            if (pc & 0xFFF) != 0xFFE:
                ins = sext32(lo | (np.int64(r16u[(off >> 1) + 1]) << 16))
            else:
                o2 = fetch_page(h, pc + 2, priv, c, r64, rb, rsz, cfg, tlbt, tlbo, hs)
                if o2 < 0:
                    pc, priv = take_trap(c, priv, pc, hs[h, HS_EXC_CAUSE], hs[h, HS_EXC_TVAL])
                    ctx_dirty = True
                    ntrap += 1
                    n += 1
                    continue
                ins = sext32(lo | (np.int64(r16u[o2 >> 1]) << 16))
            npc = pc + 4
            raw = ins & 0xFFFFFFFF
        else:
            ins = sext32(ctab[lo])
            npc = pc + 2
            raw = lo
            if ins == 0:
                ins = -1  # opcode 0x7f: illegal below
        op = ins & 0x7F
        rd = (ins >> 7) & 31
        f3 = (ins >> 12) & 7
        rs1 = (ins >> 15) & 31
        rs2 = (ins >> 20) & 31
        if ins & 0x707F == 0x13:  # ADDI (li, mv, nop, c.addi, c.li, c.addi16sp...): the hottest op, one test
            xr[rd] = xr[rs1] + (ins >> 20)
        elif ins & 0xFE00707F == 0x33:  # ADD (c.mv, c.add): likewise
            xr[rd] = xr[rs1] + xr[rs2]
        elif op == 0x13:  # OP-IMM
            a = xr[rs1]
            imm = ins >> 20
            if f3 == 0:
                xr[rd] = a + imm
            elif f3 == 1:
                if (ins >> 26) & 0x3F:
                    exc = 2
                else:
                    xr[rd] = a << (imm & 63)
            elif f3 == 2:
                xr[rd] = 1 if a < imm else 0
            elif f3 == 3:
                xr[rd] = 1 if ult(a, imm) else 0
            elif f3 == 4:
                xr[rd] = a ^ imm
            elif f3 == 5:
                f6 = (ins >> 26) & 0x3F
                if f6 == 0:
                    xr[rd] = srl(a, imm & 63)
                elif f6 == 0x10:
                    xr[rd] = a >> (imm & 63)
                else:
                    exc = 2
            elif f3 == 6:
                xr[rd] = a | imm
            else:
                xr[rd] = a & imm
        elif op == 0x03:  # LOAD
            addr = xr[rs1] + (ins >> 20)
            if f3 == 7:
                exc = 2
            else:
                size = 1 << (f3 & 3)
                vpn = addr >> 12
                idx = vpn & TLB_MASK
                if tlbt[1, idx] == (vpn ^ lctx) and (addr & (size - 1)) == 0:
                    o = tlbo[1, idx] + (addr & 0xFFF)
                    if f3 == 3:
                        v = r64[o >> 3]
                    elif f3 == 2:
                        v = np.int64(r32s[o >> 2])
                    elif f3 == 6:
                        v = np.int64(r32u[o >> 2])
                    elif f3 == 0:
                        v = np.int64(r8s[o])
                    elif f3 == 4:
                        v = np.int64(r8u[o])
                    elif f3 == 1:
                        v = np.int64(r16s[o >> 1])
                    else:
                        v = np.int64(r16u[o >> 1])
                    xr[rd] = v
                else:
                    st, v = mem_slow(h, addr, size, 1, 0, priv, c, R, cfg, mmio, msip, mtcmp, ctime, tlbt, tlbo,
                                     hs, out, jt)
                    if st == 1:
                        exc = hs[h, HS_EXC_CAUSE]
                        tval = hs[h, HS_EXC_TVAL]
                    elif st == 2:
                        hs[h, HS_MMIO_RD] = rd
                        hs[h, HS_MMIO_KIND] = f3
                        pc = npc
                        n += 1
                        ex = 1
                        break
                    else:
                        if f3 == 0:
                            v = ((v & 0xFF) ^ 0x80) - 0x80
                        elif f3 == 1:
                            v = ((v & 0xFFFF) ^ 0x8000) - 0x8000
                        elif f3 == 2:
                            v = sext32(v)
                        xr[rd] = v
        elif op == 0x23:  # STORE
            addr = xr[rs1] + (((ins >> 20) & ~31) | rd)
            if f3 > 3:
                exc = 2
            else:
                size = 1 << f3
                val = xr[rs2]
                vpn = addr >> 12
                idx = vpn & TLB_MASK
                if tlbt[2, idx] == (vpn ^ sctx) and (addr & (size - 1)) == 0:
                    o = tlbo[2, idx] + (addr & 0xFFF)
                    if f3 == 3:
                        r64[o >> 3] = val
                    elif f3 == 2:
                        r32s[o >> 2] = np.int32(sext32(val))
                    elif f3 == 0:
                        r8u[o] = np.uint8(val & 0xFF)
                    else:
                        r16u[o >> 1] = np.uint16(val & 0xFFFF)
                    if cfg[CF_NRESV] > 0 and nh > 1:
                        break_resv(h, o, cfg, hs)
                    if cmap[o >> CSHIFT] & 1:
                        jit_inval(o, jt)
                else:
                    st, v = mem_slow(h, addr, size, 2, val, priv, c, R, cfg, mmio, msip, mtcmp, ctime, tlbt, tlbo,
                                     hs, out, jt)
                    if st == 1:
                        exc = hs[h, HS_EXC_CAUSE]
                        tval = hs[h, HS_EXC_TVAL]
                    elif st >= 2:
                        pc = npc
                        n += 1
                        ex = 1
                        break
                    else:
                        # may have been a CLINT write: MTIP/MSIP change now, on every hart
                        update_timer_bits(csr, cfg, msip, mtcmp, ctime)
                        irq_check = True
        elif op == 0x33:  # OP
            a = xr[rs1]
            b = xr[rs2]
            f7 = (ins >> 25) & 0x7F
            if f7 == 0:
                if f3 == 0:
                    xr[rd] = a + b
                elif f3 == 1:
                    xr[rd] = a << (b & 63)
                elif f3 == 2:
                    xr[rd] = 1 if a < b else 0
                elif f3 == 3:
                    xr[rd] = 1 if ult(a, b) else 0
                elif f3 == 4:
                    xr[rd] = a ^ b
                elif f3 == 5:
                    xr[rd] = srl(a, b)
                elif f3 == 6:
                    xr[rd] = a | b
                else:
                    xr[rd] = a & b
            elif f7 == 0x20:
                if f3 == 0:
                    xr[rd] = a - b
                elif f3 == 5:
                    xr[rd] = a >> (b & 63)
                else:
                    exc = 2
            elif f7 == 1:
                if f3 == 0:
                    xr[rd] = a * b
                elif f3 == 1:
                    xr[rd] = mulh(a, b)
                elif f3 == 2:
                    xr[rd] = mulhsu(a, b)
                elif f3 == 3:
                    xr[rd] = mulhu(a, b)
                elif f3 == 4:
                    xr[rd] = div64(a, b)
                elif f3 == 5:
                    xr[rd] = divu64(a, b)
                elif f3 == 6:
                    xr[rd] = rem64(a, b)
                else:
                    xr[rd] = remu64(a, b)
            else:
                exc = 2
        elif op == 0x63:  # BRANCH
            a = xr[rs1]
            b = xr[rs2]
            if f3 == 0:
                t = a == b
            elif f3 == 1:
                t = a != b
            elif f3 == 4:
                t = a < b
            elif f3 == 5:
                t = a >= b
            elif f3 == 6:
                t = ult(a, b)
            elif f3 == 7:
                t = not ult(a, b)
            else:
                t = False
                exc = 2
            if t:
                blk = True
                npc = pc + (((ins >> 19) & -4096) | ((ins << 4) & 0x800) | ((ins >> 20) & 0x7E0)
                            | ((ins >> 7) & 0x1E))
        elif op == 0x1B:  # OP-IMM-32
            a = xr[rs1]
            imm = ins >> 20
            if f3 == 0:
                xr[rd] = sext32(a + imm)
            elif f3 == 1:
                if (ins >> 25) & 0x7F:
                    exc = 2
                else:
                    xr[rd] = sext32(a << (imm & 31))
            elif f3 == 5:
                f7 = (ins >> 25) & 0x7F
                if f7 == 0:
                    xr[rd] = sext32(srl(a & 0xFFFFFFFF, imm & 31))
                elif f7 == 0x20:
                    xr[rd] = sext32(a) >> (imm & 31)
                else:
                    exc = 2
            else:
                exc = 2
        elif op == 0x3B:  # OP-32
            a = xr[rs1]
            b = xr[rs2]
            f7 = (ins >> 25) & 0x7F
            if f7 == 0:
                if f3 == 0:
                    xr[rd] = sext32(a + b)
                elif f3 == 1:
                    xr[rd] = sext32(a << (b & 31))
                elif f3 == 5:
                    xr[rd] = sext32(srl(a & 0xFFFFFFFF, b & 31))
                else:
                    exc = 2
            elif f7 == 0x20:
                if f3 == 0:
                    xr[rd] = sext32(a - b)
                elif f3 == 5:
                    xr[rd] = sext32(a) >> (b & 31)
                else:
                    exc = 2
            elif f7 == 1:
                a32 = sext32(a)
                b32 = sext32(b)
                if f3 == 0:
                    xr[rd] = sext32(a32 * b32)
                elif f3 == 4:
                    if b32 == 0:
                        xr[rd] = -1
                    elif a32 == -(1 << 31) and b32 == -1:
                        xr[rd] = a32
                    else:
                        xr[rd] = sext32(div64(a32, b32))
                elif f3 == 5:
                    xr[rd] = sext32(divu64(a & 0xFFFFFFFF, b & 0xFFFFFFFF))
                elif f3 == 6:
                    if b32 == 0:
                        xr[rd] = a32
                    elif a32 == -(1 << 31) and b32 == -1:
                        xr[rd] = 0
                    else:
                        xr[rd] = sext32(rem64(a32, b32))
                elif f3 == 7:
                    xr[rd] = sext32(remu64(a & 0xFFFFFFFF, b & 0xFFFFFFFF))
                else:
                    exc = 2
            else:
                exc = 2
        elif op == 0x37:  # LUI
            xr[rd] = ins & -4096
        elif op == 0x17:  # AUIPC
            xr[rd] = pc + (ins & -4096)
        elif op == 0x6F:  # JAL
            blk = True
            xr[rd] = npc
            npc = pc + (((ins >> 11) & -(1 << 20)) | (ins & 0xFF000) | ((ins >> 9) & 0x800) | ((ins >> 20) & 0x7FE))
        elif op == 0x67:  # JALR
            if f3 != 0:
                exc = 2
            else:
                tgt = (xr[rs1] + (ins >> 20)) & ~1
                blk = True
                xr[rd] = npc
                npc = tgt
        elif op == 0x0F:  # MISC-MEM: FENCE, FENCE.I (no caches to maintain: fetch reads RAM directly)
            if f3 > 1:
                exc = 2
        elif op == 0x73:  # SYSTEM
            if f3 == 0:
                if ins == 0x00000073:
                    exc = 8 + priv
                elif ins == 0x00100073:
                    exc = 3
                    tval = pc
                elif ins == 0x30200073:
                    if priv != 3:
                        exc = 2
                    else:
                        ms = c[MSTATUS]
                        mpp = (ms >> 11) & 3
                        ms = (ms & ~((1 << 3) | (3 << 11))) | (((ms >> 7) & 1) << 3) | (1 << 7)
                        if mpp != 3:
                            ms &= ~(1 << 17)
                        c[MSTATUS] = ms
                        priv = mpp
                        npc = c[MEPC]
                        ctx_dirty = True
                        irq_check = True
                        blk = True
                elif ins == 0x10200073:
                    ms = c[MSTATUS]
                    if priv == 0 or (priv == 1 and (ms >> 22) & 1):
                        exc = 2
                    else:
                        spp = (ms >> 8) & 1
                        ms = (ms & ~((1 << 1) | (1 << 8) | (1 << 17))) | (((ms >> 5) & 1) << 1) | (1 << 5)
                        c[MSTATUS] = ms
                        priv = spp
                        npc = c[SEPC]
                        ctx_dirty = True
                        irq_check = True
                        blk = True
                elif ins == 0x10500073:
                    if priv == 0 or (priv < 3 and (c[MSTATUS] >> 21) & 1):
                        exc = 2
                    elif ((c[MIP] | irq[h]) & c[MIE]) == 0:
                        hs[h, HS_WFI] = 1
                        pc = npc
                        n += 1
                        break
                elif (ins >> 25) == 0x09 and rd == 0:
                    if priv == 0 or (priv == 1 and (c[MSTATUS] >> 20) & 1):
                        exc = 2
                    else:
                        flush_tlb(tlbt)
                        fvpn = -1
                else:
                    exc = 2
            elif f3 == 4:
                exc = 2
            else:
                num = (ins >> 20) & 0xFFF
                retired = base_ret + n - ntrap
                ok, old = csr_read(h, num, priv, c, hs, irq, ctime, retired)
                write = (f3 & 3) == 1 or rs1 != 0
                if not ok or (write and (num >> 10) == 3):
                    exc = 2
                else:
                    src = rs1 if f3 >= 5 else xr[rs1]
                    k = f3 & 3
                    if write:
                        # Only mip's software-writable SEIP takes part in a CSRRS/CSRRC read-modify-write,
                        # never the PLIC's line (priv spec 3.1.9): else a stale SEIP outlives the line.
                        rmw = c[MIP] if num == MIP else old
                        if k == 1:
                            nv = src
                        elif k == 2:
                            nv = rmw | src
                        else:
                            nv = rmw & ~src
                        if csr_write(h, num, nv, priv, c, hs, ctime, retired):
                            flush_tlb(tlbt)
                        if num <= 3:
                            c[MSTATUS] |= 3 << 13
                        if num == MSTATUS or num == SSTATUS or num == SATP or 0x3A0 <= num <= 0x3EF:
                            ctx_dirty = True  # privilege context of loads/stores/fetch may have changed
                        if (num == MSTATUS or num == SSTATUS or num == MIE or num == SIE or num == MIP or num == SIP
                                or num == MIDELEG):
                            irq_check = True
                    xr[rd] = old
        elif op == 0x2F:  # AMO
            if f3 != 2 and f3 != 3:
                exc = 2
            else:
                f5 = (ins >> 27) & 31
                size = 4 if f3 == 2 else 8
                addr = xr[rs1]
                if ((0x1111111F >> f5) & 1) == 0 or (f5 == 2 and rs2 != 0):
                    exc = 2
                elif addr & (size - 1):
                    exc = 4 if f5 == 2 else 6
                    tval = addr
                else:
                    vpn = addr >> 12
                    idx = vpn & TLB_MASK
                    if f5 == 2:
                        if tlbt[1, idx] == (vpn ^ lctx):
                            o = tlbo[1, idx] + (addr & 0xFFF)
                        else:
                            st, o = mem_slow(h, addr, size, 4, 0, priv, c, R, cfg, mmio, msip, mtcmp, ctime, tlbt,
                                             tlbo, hs, out, jt)
                            if st == 1:
                                o = -1
                    else:
                        if tlbt[2, idx] == (vpn ^ sctx):
                            o = tlbo[2, idx] + (addr & 0xFFF)
                        else:
                            st, o = mem_slow(h, addr, size, 3, 0, priv, c, R, cfg, mmio, msip, mtcmp, ctime, tlbt,
                                             tlbo, hs, out, jt)
                            if st == 1:
                                o = -1
                    if o < 0:
                        exc = hs[h, HS_EXC_CAUSE]
                        tval = hs[h, HS_EXC_TVAL]
                    else:
                        old = r64[o >> 3] if size == 8 else np.int64(r32s[o >> 2])
                        if f5 == 2:  # LR
                            g = o & ~63
                            if hs[h, HS_RESV] < 0:
                                cfg[CF_NRESV] += 1
                            hs[h, HS_RESV] = g
                            xr[rd] = old
                        elif f5 == 3:  # SC
                            if hs[h, HS_RESV] == (o & ~63):
                                if size == 8:
                                    r64[o >> 3] = xr[rs2]
                                else:
                                    r32s[o >> 2] = np.int32(sext32(xr[rs2]))
                                if nh > 1:
                                    break_resv(h, o, cfg, hs)
                                if cmap[o >> CSHIFT] & 1:
                                    jit_inval(o, jt)
                                xr[rd] = 0
                            else:
                                xr[rd] = 1
                            if hs[h, HS_RESV] >= 0:
                                hs[h, HS_RESV] = -1
                                cfg[CF_NRESV] -= 1
                        else:
                            b = xr[rs2]
                            if size == 4:
                                b = sext32(b)
                            if f5 == 0:
                                nv = old + b
                            elif f5 == 1:
                                nv = b
                            elif f5 == 4:
                                nv = old ^ b
                            elif f5 == 8:
                                nv = old | b
                            elif f5 == 12:
                                nv = old & b
                            elif f5 == 16:
                                nv = old if old < b else b
                            elif f5 == 20:
                                nv = old if old > b else b
                            else:
                                ou = old & 0xFFFFFFFF if size == 4 else old
                                bu = b & 0xFFFFFFFF if size == 4 else b
                                if f5 == 24:
                                    nv = old if ult(ou, bu) else b
                                else:
                                    nv = b if ult(ou, bu) else old
                            if size == 8:
                                r64[o >> 3] = nv
                            else:
                                r32s[o >> 2] = np.int32(sext32(nv))
                            if cfg[CF_NRESV] > 0 and nh > 1:
                                break_resv(h, o, cfg, hs)
                            if cmap[o >> CSHIFT] & 1:
                                jit_inval(o, jt)
                            xr[rd] = old
        elif op == 0x07 or op == 0x27:  # LOAD-FP / STORE-FP
            if ((c[MSTATUS] >> 13) & 3) == 0 or (f3 != 2 and f3 != 3):
                exc = 2
            else:
                size = 4 if f3 == 2 else 8
                if op == 0x07:
                    addr = xr[rs1] + (ins >> 20)
                    vpn = addr >> 12
                    idx = vpn & TLB_MASK
                    if tlbt[1, idx] == (vpn ^ lctx) and (addr & (size - 1)) == 0:
                        o = tlbo[1, idx] + (addr & 0xFFF)
                        fr[rd] = r64[o >> 3] if size == 8 else (np.int64(r32u[o >> 2]) | (-1 << 32))
                        c[MSTATUS] |= 3 << 13
                    else:
                        st, v = mem_slow(h, addr, size, 1, 0, priv, c, R, cfg, mmio, msip, mtcmp, ctime, tlbt, tlbo,
                                         hs, out, jt)
                        if st == 1:
                            exc = hs[h, HS_EXC_CAUSE]
                            tval = hs[h, HS_EXC_TVAL]
                        elif st == 2:
                            hs[h, HS_MMIO_RD] = rd
                            hs[h, HS_MMIO_KIND] = 8 + f3
                            c[MSTATUS] |= 3 << 13
                            pc = npc
                            n += 1
                            ex = 1
                            break
                        else:
                            fr[rd] = (v | (-1 << 32)) if size == 4 else v
                            c[MSTATUS] |= 3 << 13
                else:
                    addr = xr[rs1] + (((ins >> 20) & ~31) | rd)
                    val = fr[rs2]
                    vpn = addr >> 12
                    idx = vpn & TLB_MASK
                    if tlbt[2, idx] == (vpn ^ sctx) and (addr & (size - 1)) == 0:
                        o = tlbo[2, idx] + (addr & 0xFFF)
                        if size == 8:
                            r64[o >> 3] = val
                        else:
                            r32s[o >> 2] = np.int32(sext32(val))
                        if cfg[CF_NRESV] > 0 and nh > 1:
                            break_resv(h, o, cfg, hs)
                        if cmap[o >> CSHIFT] & 1:
                            jit_inval(o, jt)
                    else:
                        st, v = mem_slow(h, addr, size, 2, val, priv, c, R, cfg, mmio, msip, mtcmp, ctime, tlbt, tlbo,
                                         hs, out, jt)
                        if st == 1:
                            exc = hs[h, HS_EXC_CAUSE]
                            tval = hs[h, HS_EXC_TVAL]
                        elif st >= 2:
                            pc = npc
                            n += 1
                            ex = 1
                            break
        elif op == 0x53 or op == 0x43 or op == 0x47 or op == 0x4B or op == 0x4F:
            if ((c[MSTATUS] >> 13) & 3) == 0:
                exc = 2
            else:
                r = fp_exec(ins & 0xFFFFFFFF, c[FRM], xr, fr)
                if r & (1 << 31):
                    exc = 2
                else:
                    c[FFLAGS] |= r & 0x1F
                    c[MSTATUS] |= 3 << 13
        else:
            exc = 2
        xr[0] = 0
        if exc >= 0:
            if exc == 2:
                tval = raw
            pc, priv = take_trap(c, priv, pc, exc, tval)
            ctx_dirty = True
            blk = True
            ntrap += 1
        else:
            pc = npc
        if rejoin:
            rejoin = False
            blk = True
        n += 1
    xr[0] = 0
    hs[h, HS_PC] = pc
    hs[h, HS_PRIV] = priv
    hs[h, HS_INSTRET] += n - ntrap
    hs[h, HS_TRAPS] += ntrap
    return n, ex


@njit(cache=True, nogil=True)
def run_harts(budget, x, f, csr, hs, irq, R, cfg, mmio, msip, mtcmp, ctime, tlbt, tlbo, ctab, out, jt):
    """Round-robin the harts for up to ``budget`` instructions; the exit is described in ``out``."""
    x = unmanaged(x)
    f = unmanaged(f)
    csr = unmanaged(csr)
    hs = unmanaged(hs)
    irq = unmanaged(irq)
    R = (unmanaged(R[0]), unmanaged(R[1]), unmanaged(R[2]), unmanaged(R[3]), unmanaged(R[4]), unmanaged(R[5]),
         unmanaged(R[6]))
    cfg = unmanaged(cfg)
    mmio = unmanaged(mmio)
    msip = unmanaged(msip)
    mtcmp = unmanaged(mtcmp)
    ctime = unmanaged(ctime)
    tlbt = unmanaged(tlbt)
    tlbo = unmanaged(tlbo)
    ctab = unmanaged(ctab)
    out = unmanaged(out)
    jt = (unmanaged(jt[0]), unmanaged(jt[1]), unmanaged(jt[2]), unmanaged(jt[3]), unmanaged(jt[4]))
    nh = cfg[CF_NHARTS]
    total = 0
    out[0] = EXIT_BUDGET
    out[1] = 0
    while total < budget:
        if cfg[CF_STOP]:
            cfg[CF_STOP] = 0
            break
        update_timer_bits(csr, cfg, msip, mtcmp, ctime)
        ran = 0
        for h in range(nh):
            if total >= budget:
                break
            c = csr[h]
            if hs[h, HS_WFI]:
                if ((c[MIP] | irq[h]) & c[MIE]) == 0:
                    continue
                hs[h, HS_WFI] = 0
            ran += 1
            sl = min(cfg[CF_SLICE], budget - total)
            n, ex = run_slice(h, sl, x, f, csr, hs, irq, R, cfg, mmio, msip, mtcmp, ctime, tlbt, tlbo, ctab, out, jt)
            total += n
            fr = ctime[CT_FRAC] + n * cfg[CF_RATE] // nh
            ctime[CT_MTIME] += fr >> 16
            ctime[CT_FRAC] = fr & 0xFFFF
            if ex:
                return total
            if cfg[CF_JIT_SYNC] and jt[2][0] != jt[2][1]:
                return total  # the engine translates the queued regions now and calls again
        if ran == 0:
            if cfg[CF_DETERMINISTIC]:
                best = -1
                mt = ctime[CT_MTIME]
                for h in range(nh):
                    if (csr[h, MIE] >> 7) & 1 and ult(mt, mtcmp[h]):
                        if best == -1 or ult(mtcmp[h], best):
                            best = mtcmp[h]
                if best != -1:
                    ctime[CT_MTIME] = best
                    continue
            out[0] = EXIT_WFI
            return total
    return total
