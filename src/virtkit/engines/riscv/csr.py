"""CSRs, traps and interrupts: reads and writes with their WARL masks, counters, trap entry and delegation,
interrupt priority, the CLINT timer bits. Part of the core (``@njit``)."""

from __future__ import annotations

from numba import njit

from virtkit.engines.riscv.alu import srl, ult
from virtkit.engines.riscv.consts import (
    CF_NHARTS,
    CF_SBI,
    CT_MTIME,
    CYCLE,
    FCSR,
    FFLAGS,
    FRM,
    HS_CY_FROZEN,
    HS_CYC_OFF,
    HS_IR_FROZEN,
    HS_IRET_OFF,
    INSTRET,
    INTBIT,
    IRQ_ORDER,
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
    PMPCFG0,
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
    STVAL,
    STVEC,
    TIME,
    TRAPS_EXC,
    TRAPS_INT,
)
from virtkit.engines.riscv.trigger import TINFO, TSELECT, trig_read, trig_write


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
    if TSELECT <= num <= TINFO:
        return True, trig_read(c, num)
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
    elif TSELECT <= num <= TINFO:
        return trig_write(c, num, val)
    elif num == MSCRATCH or num == SSCRATCH or num == MCAUSE or num == SCAUSE or num == MTVAL or num == STVAL:
        c[num] = val
    return 0


@njit(cache=True, nogil=True, inline="always")
def take_trap(c, priv, pc, cause, tval):
    """Enter the trap handler for ``cause`` (bit 63 set for interrupts); returns (new_pc, new_priv)."""
    intr = cause < 0
    code = cause & 0xFF
    if intr:  # statistics: traps by cause (virtkit modes, --stats)
        c[TRAPS_INT + (code & 15)] += 1
    else:
        c[TRAPS_EXC + (code if code < 15 else 15)] += 1
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
    """Drive MTIP/MSIP in each hart's mip from the CLINT; when the VMM is the SBI, the timer compare is the
    one SBI set_timer armed and drives STIP instead (the supervisor's timer, as KVM gives its guests)."""
    mt = ctime[CT_MTIME]
    if cfg[CF_SBI]:
        for h in range(cfg[CF_NHARTS]):
            v = csr[h, MIP] & ~(1 << 5)
            if not ult(mt, mtcmp[h]):
                v |= 1 << 5
            csr[h, MIP] = v
        return
    for h in range(cfg[CF_NHARTS]):
        v = csr[h, MIP] & ~((1 << 7) | (1 << 3))
        if not ult(mt, mtcmp[h]):
            v |= 1 << 7
        if msip[h] & 1:
            v |= 1 << 3
        csr[h, MIP] = v
