"""CSRs, traps and interrupts: reads and writes with their WARL masks, counters, trap entry and delegation,
interrupt priority, the CLINT timer bits. Part of the core (``@njit``)."""

from __future__ import annotations

from numba import njit

from virtkit.engines.riscv.alu import srl, ult
from virtkit.engines.riscv.consts import (
    CAUSE_VIRTUAL,
    CF_NHARTS,
    CF_SBI,
    CT_MTIME,
    CYCLE,
    FCSR,
    FFLAGS,
    FRM,
    HCOUNTEREN,
    HEDELEG,
    HEDELEG_MASK,
    HENVCFG,
    HGATP,
    HGEIE,
    HGEIP,
    HIDELEG,
    HIE,
    HIP,
    HS_CY_FROZEN,
    HS_CYC_OFF,
    HS_EXC_GVA,
    HS_EXC_TVAL2,
    HS_IR_FROZEN,
    HS_IRET_OFF,
    HS_V,
    HSTATUS,
    HSTATUS_FIXED,
    HSTATUS_WMASK,
    HTIMEDELTA,
    HTINST,
    HTVAL,
    HVIP,
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
    MEDELEG_H,
    MEDELEG_MASK,
    MEM_CAUSES,
    MENVCFG,
    MEPC,
    MHARTID,
    MIDELEG,
    MIDELEG_H,
    MIDELEG_MASK,
    MIE,
    MIE_MASK,
    MIMPID,
    MINSTRET,
    MIP,
    MIP_SWMASK,
    MISA,
    MISA_H,
    MISA_VALUE,
    MSCRATCH,
    MSTATUS,
    MSTATUS_FIXED,
    MSTATUS_GVA,
    MSTATUS_MPV,
    MSTATUS_WMASK,
    MTINST,
    MTVAL,
    MTVAL2,
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
    TRAPS_H,
    TRAPS_INT,
    VIRT_CSR,
    VS_IRQ,
    VSATP,
    VSCAUSE,
    VSEPC,
    VSIE,
    VSIP,
    VSSCRATCH,
    VSSTATUS,
    VSTVAL,
    VSTVEC,
)
from virtkit.engines.riscv.trigger import TINFO, TSELECT, trig_read, trig_write


@njit(cache=True, nogil=True)
def flush_tlb(tlbt):
    tlbt[:, :] = 0


@njit(cache=True, nogil=True, inline="always")
def csr_read(h, num, priv, c, hs, irq, ctime, retired):
    """(exc, value) of CSR ``num`` read at privilege ``priv``: exc -1 when the access is allowed, else the
    exception it raises (2 illegal instruction; 22 virtual instruction, only with the H extension on)."""
    if c[VIRT_CSR]:
        return _csr_read_h(h, num, priv, c, hs, irq, ctime, retired)
    ok, v = _csr_read(h, num, priv, c, hs, irq, ctime, retired)
    return (-1 if ok else 2), v


@njit(cache=True, nogil=True, inline="always")
def _csr_read(h, num, priv, c, hs, irq, ctime, retired):
    """(ok, value) of CSR ``num`` read at privilege ``priv`` (V=0); ok=False means illegal instruction."""
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
        return True, c[MIE] & c[MIDELEG] & S_MODE_IRQ
    if num == SIP:
        return True, (c[MIP] | irq[h]) & c[MIDELEG] & S_MODE_IRQ
    if num == MIP:
        return True, c[MIP] | irq[h] | c[HVIP]  # (hvip: the VS-level bits, H only)
    if num == SATP:
        if priv == 1 and (c[MSTATUS] >> 20) & 1:
            return False, 0
        return True, c[SATP]
    if num == MISA:
        return True, MISA_VALUE | (MISA_H if c[VIRT_CSR] else 0)
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
    if (num == MTINST or num == MTVAL2) and c[VIRT_CSR]:
        return True, c[num]
    return False, 0


@njit(cache=True, nogil=True, inline="always")
def _swapped(num):
    """The supervisor CSRs that VS-mode reaches as their VS-level twins (num + 0x100)."""
    return (num == SSTATUS or num == SIE or num == STVEC or num == SSCRATCH or num == SEPC or num == SCAUSE
            or num == STVAL or num == SIP or num == SATP)


@njit(cache=True, nogil=True)
def _h_csr(num):
    """An implemented hypervisor or VS CSR."""
    return (num == HSTATUS or num == HEDELEG or num == HIDELEG or num == HIE or num == HTIMEDELTA
            or num == HCOUNTEREN or num == HGEIE or num == HENVCFG or num == HTVAL or num == HIP or num == HVIP
            or num == HTINST or num == HGATP or num == HGEIP or _swapped(num - 0x100))


@njit(cache=True, nogil=True)
def _h_value(h, num, c, irq):
    """The value of hypervisor or VS CSR ``num`` (implemented, access checked)."""
    mip = c[MIP] | irq[h] | c[HVIP]
    if num == HIE:
        return c[MIE] & MIDELEG_H
    if num == HIP:
        return mip & MIDELEG_H
    if num == HGEIE or num == HGEIP:
        return 0  # GEILEN = 0: no guest external interrupt lines
    if num == VSSTATUS:
        v = c[VSSTATUS]
        return v | INTBIT if ((v >> 13) & 3) == 3 else v
    if num == VSIE:
        return ((c[MIE] & c[HIDELEG]) >> 1) & S_MODE_IRQ
    if num == VSIP:
        return ((mip & c[HIDELEG]) >> 1) & S_MODE_IRQ
    return c[num]


@njit(cache=True, nogil=True)
def _csr_read_h(h, num, priv, c, hs, irq, ctime, retired):
    """csr_read with the H extension on: VS-mode sees the VS CSRs in place of the supervisor ones, and the
    accesses HS-mode could make but V-mode may not raise virtual-instruction exceptions."""
    v = hs[h, HS_V] if priv < 3 else 0
    lvl = (num >> 8) & 3
    if v:
        if lvl == 3:
            return 2, 0
        if lvl == 2:
            return (CAUSE_VIRTUAL if _h_csr(num) else 2), 0
        if lvl == 1:
            ok, _ = _csr_read(h, num, 1, c, hs, irq, ctime, retired)
            if priv == 0:
                return (CAUSE_VIRTUAL if ok or num == SATP else 2), 0
            if num == SATP:
                if (c[HSTATUS] >> 20) & 1:  # hstatus.VTVM
                    return CAUSE_VIRTUAL, 0
                return -1, c[VSATP]
            if _swapped(num):
                return -1, _h_value(h, num + 0x100, c, irq)
        elif 0xC00 <= num <= 0xC1F:
            bit = num - 0xC00
            if ((c[MCOUNTEREN] >> bit) & 1) == 0:
                return 2, 0
            if ((c[HCOUNTEREN] >> bit) & 1) == 0 or (priv == 0 and ((c[SCOUNTEREN] >> bit) & 1) == 0):
                return CAUSE_VIRTUAL, 0
            if num == TIME:
                return -1, ctime[CT_MTIME] + c[HTIMEDELTA]
            ok, val = _csr_read(h, num, 3, c, hs, irq, ctime, retired)
            return -1, val
        elif num <= 3 and ((c[VSSTATUS] >> 13) & 3) == 0:
            return 2, 0
    elif lvl == 2:  # the hypervisor CSRs (0x6xx, 0xExx) and the VS CSRs (0x2xx): HS-mode and M-mode
        if priv < 1 or not _h_csr(num):
            return 2, 0
        if num == HGATP and priv == 1 and (c[MSTATUS] >> 20) & 1:  # mstatus.TVM
            return 2, 0
        return -1, _h_value(h, num, c, irq)
    ok, val = _csr_read(h, num, priv, c, hs, irq, ctime, retired)
    return (-1 if ok else 2), val


@njit(cache=True, nogil=True, inline="always")
def _counter(c, hs, h, retired, which):
    """mcycle (which=0) or minstret (which=2): retired instructions plus the written offset."""
    if (c[MCOUNTINHIBIT] >> which) & 1:
        return hs[h, HS_CY_FROZEN] if which == 0 else hs[h, HS_IR_FROZEN]
    return retired + (hs[h, HS_CYC_OFF] if which == 0 else hs[h, HS_IRET_OFF])


@njit(cache=True, nogil=True, inline="always")
def csr_write(h, num, val, priv, c, hs, ctime, retired):
    """Write CSR ``num`` (access already checked). Returns 1 when TLBs must be flushed."""
    if c[VIRT_CSR]:
        if priv < 3 and hs[h, HS_V] and _swapped(num):
            num += 0x100  # VS-mode writes the VS twin
        if ((num >> 8) & 3) == 2:
            return _csr_write_h(num, val, c)
    if num == FFLAGS:
        c[FFLAGS] = val & 0x1F
    elif num == FRM:
        c[FRM] = val & 7
    elif num == FCSR:
        c[FFLAGS] = val & 0x1F
        c[FRM] = (val >> 5) & 7
    elif num == MSTATUS or num == SSTATUS:
        mask = MSTATUS_WMASK if num == MSTATUS else (SSTATUS_MASK & ~(3 << 32))
        if num == MSTATUS and c[VIRT_CSR]:
            mask |= MSTATUS_MPV | MSTATUS_GVA
        old = c[MSTATUS]
        nv = (old & ~mask) | (val & mask)
        if ((nv >> 11) & 3) == 2:
            nv = (nv & ~(3 << 11)) | (old & (3 << 11))
        c[MSTATUS] = (nv & ~(0xF << 32)) | MSTATUS_FIXED
        # with H, mstatus.MXR also governs G-stage translation, which the TLB's context bits do not tell apart
        return 1 if c[VIRT_CSR] and ((old ^ nv) >> 19) & 1 else 0
    elif num == MEDELEG:
        c[MEDELEG] = val & (MEDELEG_MASK | (MEDELEG_H if c[VIRT_CSR] else 0))
    elif num == MIDELEG:
        c[MIDELEG] = (val & MIDELEG_MASK) | (MIDELEG_H if c[VIRT_CSR] else 0)
    elif num == MIE:
        c[MIE] = val & (MIE_MASK | (VS_IRQ if c[VIRT_CSR] else 0))
    elif num == SIE:
        m = c[MIDELEG] & S_MODE_IRQ
        c[MIE] = (c[MIE] & ~m) | (val & m)
    elif num == MIP:
        c[MIP] = (c[MIP] & ~MIP_SWMASK) | (val & MIP_SWMASK)
        if c[VIRT_CSR]:  # mip.VSSIP is hvip.VSSIP
            c[HVIP] = (c[HVIP] & ~4) | (val & 4)
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
    elif num == MTINST or num == MTVAL2:
        c[num] = val
    return 0


@njit(cache=True, nogil=True)
def _csr_write_h(num, val, c):
    """Write a hypervisor or VS CSR (access checked) with its WARL mask; 1 when TLBs must be flushed."""
    if num == HSTATUS:
        c[HSTATUS] = (val & HSTATUS_WMASK) | HSTATUS_FIXED
    elif num == HEDELEG:
        c[HEDELEG] = val & HEDELEG_MASK
    elif num == HIDELEG:
        c[HIDELEG] = val & VS_IRQ
    elif num == HIE:
        c[MIE] = (c[MIE] & ~VS_IRQ) | (val & VS_IRQ)
    elif num == HIP:  # only VSSIP is writable here (an alias of hvip.VSSIP)
        c[HVIP] = (c[HVIP] & ~4) | (val & 4)
    elif num == HVIP:
        c[HVIP] = val & VS_IRQ
    elif num == HCOUNTEREN:
        c[num] = val & 0xFFFFFFFF
    elif num == HENVCFG:
        c[num] = val & 1
    elif num == HTIMEDELTA or num == HTVAL or num == HTINST or num == VSSCRATCH or num == VSCAUSE or num == VSTVAL:
        c[num] = val
    elif num == HGATP:
        # unlike satp, a write of an unsupported mode is not ignored: the fields are WARL (an unsupported mode
        # reads Bare); VMIDLEN 14; the root of Sv39x4/Sv48x4 is 16 KiB: the PPN's two low bits read as zero
        mode = srl(val, 60)
        if mode != 8 and mode != 9:
            mode = 0
        c[HGATP] = (mode << 60) | (val & ((0x3FFF << 44) | (0xFFFFFFFFFFC if mode else 0xFFFFFFFFFFF)))
        return 1
    elif num == VSSTATUS:
        m = SSTATUS_MASK & ~(3 << 32)
        c[VSSTATUS] = (c[VSSTATUS] & ~m) | (val & m) | (2 << 32)  # UXL = 64-bit (SUM, MXR: in the TLB tags)
    elif num == VSIE:  # the VS-level bits hideleg gives the guest, seen one place lower
        m = c[HIDELEG] & VS_IRQ
        c[MIE] = (c[MIE] & ~m) | ((val << 1) & m)
    elif num == VSIP:
        m = c[HIDELEG] & 4
        c[HVIP] = (c[HVIP] & ~m) | ((val << 1) & m)
    elif num == VSTVEC:
        c[num] = val & ~2
    elif num == VSEPC:
        c[num] = val & ~1
    elif num == VSATP:
        mode = srl(val, 60)
        if mode == 0 or mode == 8 or mode == 9:
            c[VSATP] = val
            return 1
    return 0


@njit(cache=True, nogil=True, inline="always")
def take_trap(c, hs, h, priv, pc, cause, tval):
    """Enter the trap handler for ``cause`` (bit 63 set for interrupts); returns (new_pc, new_priv) and, with
    the H extension, leaves the new V in ``hs``."""
    intr = cause < 0
    code = cause & 0xFF
    if intr:  # statistics: traps by cause (virtkit modes, --stats)
        c[TRAPS_INT + (code & 15)] += 1
    elif code < 20:
        c[TRAPS_EXC + (code if code < 15 else 15)] += 1
    else:
        c[TRAPS_H + ((code - 20) & 3)] += 1
    if c[VIRT_CSR]:
        return _trap_h(c, hs, h, priv, pc, cause, tval)
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


@njit(cache=True, nogil=True)
def _trap_h(c, hs, h, priv, pc, cause, tval):
    """take_trap with the H extension: to M, to HS (medeleg/mideleg), or on to VS (hedeleg/hideleg, from V=1
    only); V, mstatus.MPV/GVA, hstatus.SPV/SPVP/GVA, htval/mtval2 (guest physical address >> 2) and
    htinst/mtinst (0, or the pseudoinstruction of an implicit VS-stage page-table access) as the spec says.
    The exceptions of memory accesses find their guest-page-fault details in ``hs`` (the access's slow path
    set them)."""
    intr = cause < 0
    code = cause & 0xFF
    v = hs[h, HS_V]
    gpa = 0
    gva = 0
    tinst = 0
    if not intr and (MEM_CAUSES >> code) & 1:
        gpa = hs[h, HS_EXC_TVAL2]
        gva = hs[h, HS_EXC_GVA] & 1
        if hs[h, HS_EXC_GVA] & 2:  # a fault reading the VS-stage page table: a 64-bit read
            tinst = 0x3000
    elif code == 3 and not intr:  # a breakpoint's tval is the pc: a guest virtual address from V-mode
        gva = v
    ms = c[MSTATUS]
    if priv <= 1 and ((c[MIDELEG] if intr else c[MEDELEG]) >> code) & 1:
        if v and ((c[HIDELEG] if intr else c[HEDELEG]) >> code) & 1:
            vcode = code - 1 if intr else code  # VSSIP/VSTIP/VSEIP arrive as SSIP/STIP/SEIP
            c[VSCAUSE] = (INTBIT | vcode) if intr else code
            c[VSEPC] = pc
            c[VSTVAL] = tval
            vs = c[VSSTATUS]
            c[VSSTATUS] = (vs & ~((1 << 5) | (1 << 1) | (1 << 8))) | (((vs >> 1) & 1) << 5) | (priv << 8)
            tv = c[VSTVEC]
            npc = tv & ~3
            if intr and (tv & 3) == 1:
                npc += 4 * vcode
            return npc, 1
        c[SCAUSE] = cause
        c[SEPC] = pc
        c[STVAL] = tval
        c[HTVAL] = gpa
        c[HTINST] = tinst
        hst = (c[HSTATUS] & ~((1 << 7) | (1 << 6))) | (v << 7) | (gva << 6)
        if v:
            hst = (hst & ~(1 << 8)) | (priv << 8)  # SPVP
        c[HSTATUS] = hst
        ms = (ms & ~((1 << 5) | (1 << 1) | (1 << 8))) | (((ms >> 1) & 1) << 5) | (priv << 8)
        c[MSTATUS] = ms
        hs[h, HS_V] = 0
        tv = c[STVEC]
        npc = tv & ~3
        if intr and (tv & 3) == 1:
            npc += 4 * code
        return npc, 1
    c[MCAUSE] = cause
    c[MEPC] = pc
    c[MTVAL] = tval
    c[MTVAL2] = gpa
    c[MTINST] = tinst
    ms = (ms & ~((1 << 7) | (1 << 3) | (3 << 11) | MSTATUS_MPV | MSTATUS_GVA)) | (((ms >> 3) & 1) << 7) | (
        priv << 11) | (v << 39) | (gva << 38)
    c[MSTATUS] = ms
    hs[h, HS_V] = 0
    tv = c[MTVEC]
    npc = tv & ~3
    if intr and (tv & 3) == 1:
        npc += 4 * code
    return npc, 3


@njit(cache=True, nogil=True, inline="always")
def pending_irq(c, priv, v, ext):
    """The interrupt to take now (cause with bit 63), or 0 when none: M-level first, then HS-level (always
    enabled in V-mode), then (in V-mode) the VS-level interrupts hideleg hands the guest."""
    pend = (c[MIP] | ext | c[HVIP]) & c[MIE]
    if pend == 0:
        return 0
    ms = c[MSTATUS]
    mdel = c[MIDELEG]
    m_en = pend & ~mdel
    if not (priv < 3 or (ms >> 3) & 1):
        m_en = 0
    hdel = c[HIDELEG]
    s_en = pend & mdel & ~hdel
    if not (v or priv < 1 or (priv == 1 and (ms >> 1) & 1)):
        s_en = 0
    sel = m_en if m_en else s_en
    if sel == 0 and v and (priv == 0 or (c[VSSTATUS] >> 1) & 1):
        sel = pend & mdel & hdel
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
