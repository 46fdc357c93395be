"""Memory: PMP checks, Sv39/Sv48 translation with hardware A/D updates, the software TLB's fetch page, physical
access to RAM, the CLINT and MMIO (exits), LR/SC reservations. Part of the core (``@njit``)."""

from __future__ import annotations

import numpy as np
from numba import njit

from virtkit.engines.riscv.alu import sext32, srl
from virtkit.engines.riscv.consts import (
    CF_CLINT_BASE,
    CF_FCOUNT,
    CF_FREADS,
    CF_NFAST,
    CF_NHARTS,
    CF_NMMIO,
    CF_NRESV,
    CF_RAM_BASE,
    CF_RAM_SIZE,
    CF_TOHOST,
    CF_TRAP,
    CF_TRIG_OFF,
    CLINT_SIZE,
    CSHIFT,
    CT_MTIME,
    EXIT_HTIF,
    EXIT_MMIO_READ,
    EXIT_MMIO_WRITE,
    FAST0,
    FAST_BUFFER,
    FAST_SHADOW,
    FRING0,
    FRING_N,
    HGATP,
    HS_EXC_CAUSE,
    HS_EXC_GVA,
    HS_EXC_TVAL,
    HS_EXC_TVAL2,
    HS_HLV,
    HS_RESV,
    HS_V,
    HS_VPRIV,
    HS_WALK_LEVEL,
    HSTATUS,
    MSTATUS,
    NPMP,
    PMPADDR0,
    PMPCFG0,
    SATP,
    TLB_MASK,
    VIRT_CSR,
    VSATP,
    VSSTATUS,
)
from virtkit.engines.riscv.native import jit_inval
from virtkit.engines.riscv.trigger import CAUSE_DEBUG, TARMED, trig_hit, trig_page


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
def translate(h, vaddr, acc, eff, ev, c, r64, rb, rsz, hs):
    """Virtual -> physical address for access type acc (0 fetch, 1 load, 2 store, 3 AMO/SC, 4 LR) at
    effective privilege ``eff`` and virtualization mode ``ev`` (1: two-stage, VS-stage then G-stage).

    Returns the physical address, or -1 with the exception stored in hs.
    """
    if ev:
        return _translate_v(h, vaddr, acc, eff, c, r64, rb, rsz, hs)
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
        r64[(rsz >> 3) + ((pte_addr - rb) >> 12)] = 1  # the dirty log (GuestMemory.dirty) after RAM
    lowmask = (1 << (12 + 9 * i)) - 1
    hs[h, HS_WALK_LEVEL] = i
    return ((ppn << 12) & ~lowmask) | (vaddr & lowmask)


@njit(cache=True, nogil=True)
def _gpf(hs, h, acc, vaddr, gpa, implicit):
    """A guest-page fault (20 fetch, 21 load, 23 store/AMO): tval the guest virtual address, and the guest
    physical address >> 2 for htval/mtval2; ``implicit``: 2 when it was a VS-stage page-table read."""
    hs[h, HS_EXC_CAUSE] = 20 if acc == 0 else (21 if acc == 1 or acc == 4 else 23)
    hs[h, HS_EXC_TVAL] = vaddr
    hs[h, HS_EXC_TVAL2] = srl(gpa, 2)
    hs[h, HS_EXC_GVA] = 1 | implicit
    return -1


@njit(cache=True, nogil=True)
def _gstage(h, gpa, vaddr, acc, hlvx, implicit, c, r64, rb, rsz, hs):
    """Guest physical -> host physical through hgatp (Bare, Sv39x4, Sv48x4): every access is a user-level one
    (a leaf without U faults); the root table is 16 KiB and its index two bits wider. ``implicit``: the access
    reads a VS-stage page table for the original access ``acc`` (faults are reported as that access's)."""
    hgatp = c[HGATP]
    mode = srl(hgatp, 60)
    if mode == 0:
        if gpa < 0 or gpa >= (1 << 56):
            return _fault(hs, h, _af_cause(acc), vaddr)
        return gpa
    levels = 3 if mode == 8 else 4
    if (gpa >> (14 + 9 * levels)) != 0:  # beyond the 41 (Sv39x4) or 50 (Sv48x4) bits
        return _gpf(hs, h, acc, vaddr, gpa, implicit)
    a = (hgatp & 0xFFFFFFFFFFF) << 12
    ms = c[MSTATUS]
    i = levels - 1
    while True:
        idx = (gpa >> (12 + 9 * i)) & (0x7FF if i == levels - 1 else 0x1FF)
        pte_addr = a + idx * 8
        if pte_addr < rb or pte_addr + 8 > rb + rsz or pmp_check(c, pte_addr, 8, 1, 1) != 1:
            return _fault(hs, h, _af_cause(acc), vaddr)
        pte = r64[(pte_addr - rb) >> 3]
        r = (pte >> 1) & 1
        w = (pte >> 2) & 1
        x = (pte >> 3) & 1
        if (pte & 1) == 0 or (r == 0 and w == 1) or (pte >> 54) != 0:
            return _gpf(hs, h, acc, vaddr, gpa, implicit)
        if r == 1 or x == 1:
            break
        i -= 1
        if i < 0:
            return _gpf(hs, h, acc, vaddr, gpa, implicit)
        a = ((pte >> 10) & 0xFFFFFFFFFFF) << 12
    if ((pte >> 4) & 1) == 0:
        return _gpf(hs, h, acc, vaddr, gpa, implicit)
    if implicit:  # a VS-stage page-table read: a load
        if r == 0 and not (x == 1 and ((ms >> 19) & 1) == 1):
            return _gpf(hs, h, acc, vaddr, gpa, implicit)
    elif acc == 0:
        if x == 0:
            return _gpf(hs, h, acc, vaddr, gpa, implicit)
    elif acc == 1 or acc == 4:
        if (hlvx and x == 0) or (not hlvx and r == 0 and not (x == 1 and ((ms >> 19) & 1) == 1)):
            return _gpf(hs, h, acc, vaddr, gpa, implicit)
    elif w == 0:
        return _gpf(hs, h, acc, vaddr, gpa, implicit)
    ppn = (pte >> 10) & 0xFFFFFFFFFFF
    if i > 0 and (ppn & ((1 << (9 * i)) - 1)) != 0:
        return _gpf(hs, h, acc, vaddr, gpa, implicit)
    store = (acc == 2 or acc == 3) and not implicit
    if (pte & 0x40) == 0 or (store and (pte & 0x80) == 0):
        pte |= 0x40
        if store:
            pte |= 0x80
        r64[(pte_addr - rb) >> 3] = pte
        r64[(rsz >> 3) + ((pte_addr - rb) >> 12)] = 1
    lowmask = (1 << (12 + 9 * i)) - 1
    return ((ppn << 12) & ~lowmask) | (gpa & lowmask)


@njit(cache=True, nogil=True)
def _translate_v(h, vaddr, acc, eff, c, r64, rb, rsz, hs):
    """Two-stage translation (V=1, or HLV/HSV): the guest's own tables through vsatp give a guest physical
    address, each of their reads itself G-stage translated; then hgatp's tables give the host's. VS-stage
    faults are ordinary page faults (the guest's to handle), G-stage ones guest-page faults (the hypervisor's);
    either way tval is the guest virtual address."""
    hlvx = hs[h, HS_HLV] == 2
    vsatp = c[VSATP]
    mode = srl(vsatp, 60)
    if mode == 0:
        return _gstage(h, vaddr, vaddr, acc, hlvx, 0, c, r64, rb, rsz, hs)
    levels = 3 if mode == 8 else 4
    top = vaddr >> (11 + 9 * levels)
    if top != 0 and top != -1:
        return _fault(hs, h, _pf_cause(acc), vaddr)
    a = (vsatp & 0xFFFFFFFFFFF) << 12
    vs = c[VSSTATUS]
    mxr = ((vs | c[MSTATUS]) >> 19) & 1
    i = levels - 1
    while True:
        pte_gpa = a + ((vaddr >> (12 + 9 * i)) & 0x1FF) * 8
        pte_addr = _gstage(h, pte_gpa, vaddr, acc, False, 2, c, r64, rb, rsz, hs)
        if pte_addr < 0:
            return -1
        if pte_addr < rb or pte_addr + 8 > rb + rsz or pmp_check(c, pte_addr, 8, 1, 1) != 1:
            return _fault(hs, h, _af_cause(acc), vaddr)
        pte = r64[(pte_addr - rb) >> 3]
        r = (pte >> 1) & 1
        w = (pte >> 2) & 1
        x = (pte >> 3) & 1
        if (pte & 1) == 0 or (r == 0 and w == 1) or (pte >> 54) != 0:
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
        if eff == 1 and u == 1 and ((vs >> 18) & 1) == 0:
            return _fault(hs, h, _pf_cause(acc), vaddr)
        if acc == 1 or acc == 4:
            if (hlvx and x == 0) or (not hlvx and r == 0 and not (x == 1 and mxr == 1)):
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
        r64[(rsz >> 3) + ((pte_addr - rb) >> 12)] = 1
    lowmask = (1 << (12 + 9 * i)) - 1
    gpa = ((ppn << 12) & ~lowmask) | (vaddr & lowmask)
    return _gstage(h, gpa, vaddr, acc, hlvx, 0, c, r64, rb, rsz, hs)


@njit(cache=True, nogil=True, inline="always")
def ctx_tag(acc, eff, ms, v):
    """The privilege-context bits XORed into TLB tags (bits 58..63): privilege, SUM and MXR as ``ms`` (the
    status word :func:`ctx_status` gives) has them, and V (bit 63)."""
    if acc == 0:
        k = eff
    elif acc == 1:
        k = eff | (((ms >> 18) & 1) << 2) | (((ms >> 19) & 1) << 3)
    else:
        k = eff | (((ms >> 18) & 1) << 2)
    return (k | 16 | (v << 5)) << 58


@njit(cache=True, nogil=True, inline="always")
def eff_priv(priv, ms):
    if priv == 3 and (ms >> 17) & 1:
        return (ms >> 11) & 3
    return priv


@njit(cache=True, nogil=True, inline="always")
def eff_virt(priv, v, ms):
    """The virtualization mode loads and stores use: mstatus.MPV under MPRV (when MPP is not M), else V."""
    if priv == 3 and (ms >> 17) & 1 and ((ms >> 11) & 3) != 3:
        return (ms >> 39) & 1
    return v


@njit(cache=True, nogil=True, inline="always")
def ctx_status(c, ev):
    """The status word whose SUM and MXR govern translation: mstatus, or with V=1 vsstatus (SUM) with MXR
    from either (mstatus.MXR makes executable pages readable at both stages)."""
    if ev:
        return c[VSSTATUS] | (c[MSTATUS] & (1 << 19))
    return c[MSTATUS]


@njit(cache=True, nogil=True, inline="always")
def fetch_page(h, vaddr, priv, c, r64, rb, rsz, cfg, tlbt, tlbo, hs):
    """RAM offset of the page holding ``vaddr`` for instruction fetch, or -1 (exception in hs)."""
    vpn = vaddr >> 12
    idx = vpn & TLB_MASK
    v = hs[h, HS_V]
    tag = vpn ^ ctx_tag(0, hs[h, HS_VPRIV] if cfg[CF_TRAP] else priv, 0, v)  # (trap and emulate: the guest's)
    if tlbt[0, idx] == tag:
        return tlbo[0, idx]
    if c[VIRT_CSR]:  # a fault from here on: no guest physical address unless a G-stage walk says so
        hs[h, HS_EXC_TVAL2] = 0
        hs[h, HS_EXC_GVA] = v
    watched = False
    if c[TARMED] & 4:  # an execute trigger: every fetch of its page comes here (the page is never cached)
        if cfg[CF_TRIG_OFF] == 0:
            a = trig_hit(c, vaddr, 2, 4, priv)
            if a >= 0:
                return _fault(hs, h, 3 if a == 0 else CAUSE_DEBUG, vaddr)
        watched = trig_page(c, vaddr, 4)
    pa = translate(h, vaddr, 0, priv, v, c, r64, rb, rsz, hs)
    if pa < 0:
        return -1
    page = pa & ~0xFFF
    if pa < rb or pa >= rb + rsz:
        return _fault(hs, h, 1, vaddr)
    p = pmp_check(c, page, 4096, priv, 4)
    if p == 1:
        if not watched:
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
    ev = 0
    hlv = False
    if c[VIRT_CSR]:
        ev = eff_virt(priv, hs[h, HS_V], ms)
        if hs[h, HS_HLV]:  # HLV/HSV: as VS- or VU-mode would (hstatus.SPVP), never through the TLB
            hlv = True
            ev = 1
            eff = (c[HSTATUS] >> 8) & 1
        hs[h, HS_EXC_TVAL2] = 0
        hs[h, HS_EXC_GVA] = ev
        ms = ctx_status(c, ev)
    perm = 1 if (acc == 1 or acc == 4) else 2
    tl = 1 if perm == 1 else 2
    kind = perm if acc != 3 else 3  # debug triggers: 1 load, 2 store, 3 AMO/SC (both)
    tkind = 1 if perm == 1 else 3  # what keeps this access's TLB from caching a page (the store TLB serves AMOs)
    armed = c[TARMED] & tkind
    if armed and (c[TARMED] & kind) and cfg[CF_TRIG_OFF] == 0:
        a = trig_hit(c, vaddr, size, kind, eff)
        if a >= 0:  # an address breakpoint: before the access and before its page fault
            return 1, _fault(hs, h, 3 if a == 0 else CAUSE_DEBUG, vaddr)
    if (vaddr & 0xFFF) + size > 4096:
        # page-crossing (misaligned) access: translate both pages first, then go byte by byte in RAM
        pa1 = translate(h, vaddr, acc, eff, ev, c, r64, rb, rsz, hs)
        if pa1 < 0:
            return 1, 0
        v2 = (vaddr + size - 1) & ~0xFFF
        pa2 = translate(h, v2, acc, eff, ev, c, r64, rb, rsz, hs)
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
        if perm == 2:
            r64[(rsz >> 3) + ((pa1 - rb) >> 12)] = 1
            r64[(rsz >> 3) + ((pa2 - rb) >> 12)] = 1
        return 0, v
    pa = translate(h, vaddr, acc, eff, ev, c, r64, rb, rsz, hs)
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
            if not (perm == 2 and th >= 0 and (th & ~0xFFF) == page) and not (
                    armed and trig_page(c, vaddr, tkind)) and not hlv:  # a watched page: never cached
                vpn = vaddr >> 12
                idx = vpn & TLB_MASK
                tlbt[tl, idx] = vpn ^ ctx_tag(tl, hs[h, HS_VPRIV] if cfg[CF_TRAP] else eff, ms, ev)
                tlbo[tl, idx] = page - rb
        if p != 1:
            return 1, _fault(hs, h, _af_cause(acc), vaddr)
        o = pa - rb
        if perm == 2:
            # the dirty log: every store that fills the store TLB passes here (the fast paths only hit
            # pages already logged; clearing the log flushes the store TLB)
            r64[(rsz >> 3) + (o >> 12)] = 1
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
