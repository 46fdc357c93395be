"""The RV64IMAFDC interpreter loop, compiled with Numba: fetch, decode and execute, slices over harts.

The rest of the core lives beside it by concern: ``decode`` (compressed instructions), ``alu`` (arithmetic),
``mmu`` (PMP, page walks, physical access, CLINT, MMIO), ``csr`` (CSRs, traps, interrupts), ``native`` (calls
into JIT-compiled regions) and ``fpu`` (F/D).

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
from numba import njit

from virtkit.engines.riscv.alu import (
    div64,
    divu64,
    mulh,
    mulhsu,
    mulhu,
    rem64,
    remu64,
    sext32,
    srl,
    ult,
)
from virtkit.engines.riscv.consts import (
    CAUSE_VIRTUAL,
    CF_DEBUG,
    CF_DETERMINISTIC,
    CF_GUEST_RAM,
    CF_JIT,
    CF_JIT_SYNC,
    CF_NEXT_HART,
    CF_NHARTS,
    CF_NRESV,
    CF_RAM_BASE,
    CF_RAM_SIZE,
    CF_RATE,
    CF_SBI,
    CF_SLICE,
    CF_STEP_HART,
    CF_STOP,
    CF_TRAP,
    CSHIFT,
    CT_FRAC,
    CT_MTIME,
    EXIT_BUDGET,
    EXIT_DEBUG,
    EXIT_HYPERCALL,
    EXIT_WFI,
    FFLAGS,
    FRM,
    HART_STOPPED,
    HS_EXC_CAUSE,
    HS_EXC_GVA,
    HS_EXC_TVAL,
    HS_EXC_TVAL2,
    HS_HLV,
    HS_INSTRET,
    HS_JIT,
    HS_JIT_CALLS,
    HS_MMIO_KIND,
    HS_MMIO_RD,
    HS_PC,
    HS_PRIV,
    HS_RESV,
    HS_TRAPS,
    HS_V,
    HS_VPRIV,
    HS_WFI,
    HSTATUS,
    HVIP,
    J_ARG,
    J_LCTX,
    J_LIMIT,
    J_PC,
    J_SCTX,
    J_SELF,
    J_STATUS,
    JMASK,
    JR_RING,
    JSTRIDE,
    JT_FN,
    JT_KEY,
    MEPC,
    MIDELEG,
    MIE,
    MIP,
    MSTATUS,
    REQ_AGAIN,
    REQ_N,
    SATP,
    SEPC,
    SIE,
    SIP,
    SSTATUS,
    ST_BAIL,
    ST_CODE,
    ST_END,
    ST_REJOIN,
    TLB_MASK,
    TM_SBI,
    TM_ZAP,
    VIRT_CSR,
    VSEPC,
    VSSTATUS,
)
from virtkit.engines.riscv.csr import (
    csr_read,
    csr_write,
    flush_tlb,
    pending_irq,
    take_trap,
    update_timer_bits,
)
from virtkit.engines.riscv.decode import build_ctab  # noqa: F401  (a core function: coresel.CORE_FUNCTIONS)
from virtkit.engines.riscv.fpu import fp_exec
from virtkit.engines.riscv.mmu import (
    break_resv,
    ctx_status,
    ctx_tag,
    eff_priv,
    eff_virt,
    fetch_page,
    mem_slow,
)
from virtkit.engines.riscv.native import (
    call_native,
    jit_inval,
    unmanaged,
)
from virtkit.engines.riscv.sbicore import sbi_fast
from virtkit.engines.riscv.trapmon import TM_REFLECT, TM_WAIT, tm_page_fault, tm_privileged, tm_satp, tm_zap
from virtkit.engines.riscv.trigger import CAUSE_DEBUG


@njit(cache=True, nogil=True, inline="always")
def _exit(out, code, h, addr, size):
    """Describe an exit the core makes itself (not an MMIO access): a hypercall, or a debugger's stop (size 1:
    a trigger on the access to addr; 0: an ebreak at addr)."""
    out[0] = code
    out[1] = h
    out[2] = addr
    out[3] = size
    out[4] = 0


@njit(cache=True, nogil=True, inline="always")
def _enter_trap(c, hs, h, tmode, priv, vpriv, pc, cause, tval):
    """Take a trap: under trap and emulate into the guest's own handler (its virtual privilege changes, the
    hart stays in U-mode), else as the hardware does. Returns (pc, priv, vpriv) after it."""
    if tmode:
        pc, vpriv = take_trap(c, hs, h, vpriv, pc, cause, tval)
        hs[h, HS_VPRIV] = vpriv
    else:
        pc, priv = take_trap(c, hs, h, priv, pc, cause, tval)
    return pc, priv, vpriv


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
    virt = hs[h, HS_V]  # the H extension's V: 1 in VS- and VU-mode (every trap and xRET may change it)
    tmode = cfg[CF_TRAP]  # trap and emulate: the hart is in U-mode, the guest's privilege is vpriv (trapmon.py)
    vpriv = hs[h, HS_VPRIV]
    tpriv = priv  # the privilege the TLB tags name: the guest's under trap and emulate
    if tmode and c[TM_ZAP]:
        tm_zap(c, R[3], tlbt)
    fvpn = -1
    foff = 0
    n = 0
    ntrap = 0
    nmon = 0  # trap and emulate: shadow fills (traps to the monitor that retire nothing and the guest never sees)
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
                if tmode:  # the shadow root of the guest's privilege (and SUM)
                    e = vpriv
                    c[SATP] = tm_satp(c, vpriv, rb)
                tpriv = e if tmode else priv
                ev = eff_virt(priv, virt, ms)
                tms = ctx_status(c, ev)
                lctx = ctx_tag(1, e, tms, ev)
                sctx = ctx_tag(2, e, tms, ev)
                fvpn = -1
            if irq_check:
                irq_check = False
                cause = pending_irq(c, vpriv if tmode else priv, virt, irq[h])
                if cause != 0:
                    pc, priv, vpriv = _enter_trap(c, hs, h, tmode, priv, vpriv, pc, cause, 0)
                    virt = hs[h, HS_V]
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
                if hs[h, HS_EXC_CAUSE] == CAUSE_DEBUG:  # a debugger's execute trigger: exit before the fetch
                    _exit(out, EXIT_DEBUG, h, pc, 1)
                    ex = 1
                    break
                if tmode and hs[h, HS_EXC_CAUSE] == 12 and tm_page_fault(
                        h, hs[h, HS_EXC_TVAL], 12, vpriv, c, R[3], rb, rsz, cfg[CF_GUEST_RAM], hs, tlbt) == 0:
                    nmon += 1
                    n += 1  # (counts against the budget: a fill that does not help cannot spin forever)
                    continue  # the shadow maps it now: fetch again
                pc, priv, vpriv = _enter_trap(c, hs, h, tmode, priv, vpriv, pc, hs[h, HS_EXC_CAUSE],
                                              hs[h, HS_EXC_TVAL])
                virt = hs[h, HS_V]
                ctx_dirty = True
                ntrap += 1
                n += 1
                continue
            fvpn = pc >> 12
            if tlbt[0, fvpn & TLB_MASK] != (fvpn ^ ctx_tag(0, tpriv, 0, virt)):
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
                    if hs[h, HS_EXC_CAUSE] == CAUSE_DEBUG:
                        _exit(out, EXIT_DEBUG, h, pc, 1)
                        ex = 1
                        break
                    if tmode and hs[h, HS_EXC_CAUSE] == 12 and tm_page_fault(
                            h, hs[h, HS_EXC_TVAL], 12, vpriv, c, R[3], rb, rsz, cfg[CF_GUEST_RAM], hs, tlbt) == 0:
                        nmon += 1
                        n += 1
                        continue
                    pc, priv, vpriv = _enter_trap(c, hs, h, tmode, priv, vpriv, pc, hs[h, HS_EXC_CAUSE],
                                                  hs[h, HS_EXC_TVAL])
                    virt = hs[h, HS_V]
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
                    if ((priv == 1 and not virt) or (tmode and vpriv == 1)) and cfg[CF_SBI]:
                        # the VMM is the SBI: a hypercall (under trap and emulate: the ecall's trap to the monitor)
                        if tmode:
                            c[TM_SBI] += 1
                        if sbi_fast(h, xr, csr, cfg, mtcmp, tlbt_all, mmio):
                            update_timer_bits(csr, cfg, msip, mtcmp, ctime)
                            if tmode and c[TM_ZAP]:  # a remote fence that included this hart
                                tm_zap(c, R[3], tlbt)
                            fvpn = -1
                            irq_check = True
                        else:
                            _exit(out, EXIT_HYPERCALL, h, 0, 0)
                            pc = npc
                            n += 1
                            ex = 1
                            break
                    else:
                        exc = 8 + priv + (virt & priv)  # 8 U/VU, 9 HS, 10 VS, 11 M
                elif ins == 0x00100073:
                    if cfg[CF_DEBUG]:  # a debugger's breakpoint (or the guest's own, which it re-injects)
                        _exit(out, EXIT_DEBUG, h, pc, 0)
                        ex = 1
                        break
                    exc = 3
                    tval = pc
                elif ins == 0x30200073:
                    if priv != 3:
                        exc = 2
                    else:
                        ms = c[MSTATUS]
                        mpp = (ms >> 11) & 3
                        virt = (ms >> 39) & 1 if mpp != 3 else 0  # mstatus.MPV (0 without H)
                        ms = (ms & ~((1 << 3) | (3 << 11) | (1 << 39))) | (((ms >> 7) & 1) << 3) | (1 << 7)
                        if mpp != 3:
                            ms &= ~(1 << 17)
                        c[MSTATUS] = ms
                        hs[h, HS_V] = virt
                        priv = mpp
                        npc = c[MEPC]
                        ctx_dirty = True
                        irq_check = True
                        blk = True
                elif ins == 0x10200073:
                    ms = c[MSTATUS]
                    if virt:
                        if priv == 0 or (c[HSTATUS] >> 22) & 1:  # VU-mode, or hstatus.VTSR
                            exc = CAUSE_VIRTUAL
                        else:  # VS-mode returns through vsstatus and vsepc, V stays 1
                            vs = c[VSSTATUS]
                            priv = (vs >> 8) & 1
                            c[VSSTATUS] = (vs & ~((1 << 1) | (1 << 8))) | (((vs >> 5) & 1) << 1) | (1 << 5)
                            npc = c[VSEPC]
                            ctx_dirty = True
                            irq_check = True
                            blk = True
                    elif priv == 0 or (priv == 1 and (ms >> 22) & 1):
                        exc = 2
                    else:
                        if c[VIRT_CSR]:  # to V = hstatus.SPV, which is cleared
                            virt = (c[HSTATUS] >> 7) & 1
                            c[HSTATUS] &= ~(1 << 7)
                            hs[h, HS_V] = virt
                        spp = (ms >> 8) & 1
                        ms = (ms & ~((1 << 1) | (1 << 8) | (1 << 17))) | (((ms >> 5) & 1) << 1) | (1 << 5)
                        c[MSTATUS] = ms
                        priv = spp
                        npc = c[SEPC]
                        ctx_dirty = True
                        irq_check = True
                        blk = True
                elif ins == 0x10500073:
                    if (priv == 0 and not virt) or (priv < 3 and (c[MSTATUS] >> 21) & 1):
                        exc = 2
                    elif virt and (priv == 0 or (c[HSTATUS] >> 21) & 1):  # VU-mode, or hstatus.VTW
                        exc = CAUSE_VIRTUAL
                    elif ((c[MIP] | irq[h] | c[HVIP]) & c[MIE]) == 0:
                        hs[h, HS_WFI] = 1
                        pc = npc
                        n += 1
                        break
                elif (ins >> 25) == 0x09 and rd == 0:
                    if virt:
                        if priv == 0 or (c[HSTATUS] >> 20) & 1:  # VU-mode, or hstatus.VTVM
                            exc = CAUSE_VIRTUAL
                        else:
                            flush_tlb(tlbt)
                            fvpn = -1
                    elif priv == 0 or (priv == 1 and (c[MSTATUS] >> 20) & 1):
                        exc = 2
                    else:
                        flush_tlb(tlbt)
                        fvpn = -1
                elif ((ins >> 25) == 0x11 or (ins >> 25) == 0x31) and rd == 0 and c[VIRT_CSR]:
                    # HFENCE.VVMA, HFENCE.GVMA (mstatus.TVM traps the latter in HS-mode)
                    if virt:
                        exc = CAUSE_VIRTUAL
                    elif priv == 0 or ((ins >> 25) == 0x31 and priv == 1 and (c[MSTATUS] >> 20) & 1):
                        exc = 2
                    else:
                        flush_tlb(tlbt)
                        fvpn = -1
                else:
                    exc = 2
            elif f3 == 4:  # HLV, HLVX, HSV: loads and stores as V-mode would make them
                f7 = (ins >> 25) & 0x7F
                ld = (f7 & 1) == 0
                if ld:  # HLV.B/BU/H/HU/W/WU/D (rs2 0 signed, 1 unsigned), HLVX.HU/WU (rs2 3)
                    ok = rs2 == 0 or (rs2 == 1 and f7 != 0x36) or (rs2 == 3 and (f7 == 0x32 or f7 == 0x34))
                else:  # HSV.B/H/W/D
                    ok = rd == 0
                if (f7 >> 3) != 6 or not ok:
                    exc = 2
                elif not c[VIRT_CSR] or (priv == 0 and not virt and ((c[HSTATUS] >> 9) & 1) == 0):
                    exc = 2  # no H, or U-mode without hstatus.HU
                elif virt:
                    exc = CAUSE_VIRTUAL
                else:
                    size = 1 << ((f7 >> 1) & 3)
                    addr = xr[rs1]
                    hs[h, HS_HLV] = 2 if rs2 == 3 and ld else 1
                    if ld:
                        st, v = mem_slow(h, addr, size, 1, 0, priv, c, R, cfg, mmio, msip, mtcmp, ctime, tlbt, tlbo,
                                         hs, out, jt)
                    else:
                        st, v = mem_slow(h, addr, size, 2, xr[rs2], priv, c, R, cfg, mmio, msip, mtcmp, ctime, tlbt,
                                         tlbo, hs, out, jt)
                    hs[h, HS_HLV] = 0
                    kind = ((f7 >> 1) & 3) | (4 if rs2 != 0 else 0)  # as a load's funct3: size, unsigned
                    if st == 1:
                        exc = hs[h, HS_EXC_CAUSE]
                        tval = hs[h, HS_EXC_TVAL]
                    elif st >= 2:
                        if ld:
                            hs[h, HS_MMIO_RD] = rd
                            hs[h, HS_MMIO_KIND] = kind
                        pc = npc
                        n += 1
                        ex = 1
                        break
                    elif ld:
                        if kind == 0:
                            v = ((v & 0xFF) ^ 0x80) - 0x80
                        elif kind == 1:
                            v = ((v & 0xFFFF) ^ 0x8000) - 0x8000
                        elif kind == 2:
                            v = sext32(v)
                        xr[rd] = v
            else:
                num = (ins >> 20) & 0xFFF
                retired = base_ret + n - ntrap - nmon
                ce, old = csr_read(h, num, priv, c, hs, irq, ctime, retired)
                write = (f3 & 3) == 1 or rs1 != 0
                if write and (num >> 10) == 3:
                    exc = 2  # a read-only CSR (illegal in any mode, V too: HS-mode could not write it either)
                elif ce >= 0:
                    exc = ce
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
                            if virt:
                                c[VSSTATUS] |= 3 << 13
                        if c[VIRT_CSR] and ((num >> 8) & 3) == 2:  # hypervisor and VS CSRs: anything may change
                            ctx_dirty = True
                            irq_check = True
                        if (num == MSTATUS or num == SSTATUS or num == SATP or 0x3A0 <= num <= 0x3EF
                                or 0x7A0 <= num <= 0x7A2):  # (the triggers: which pages may be cached)
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
                    if c[VIRT_CSR]:  # tval is a guest virtual address when the access is V-mode's
                        hs[h, HS_EXC_TVAL2] = 0
                        hs[h, HS_EXC_GVA] = eff_virt(priv, virt, c[MSTATUS])
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
            if ((c[MSTATUS] >> 13) & 3) == 0 or (f3 != 2 and f3 != 3) or (virt and ((c[VSSTATUS] >> 13) & 3) == 0):
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
                        if virt:
                            c[VSSTATUS] |= 3 << 13
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
                            if virt:
                                c[VSSTATUS] |= 3 << 13
                            pc = npc
                            n += 1
                            ex = 1
                            break
                        else:
                            fr[rd] = (v | (-1 << 32)) if size == 4 else v
                            c[MSTATUS] |= 3 << 13
                            if virt:
                                c[VSSTATUS] |= 3 << 13
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
            if ((c[MSTATUS] >> 13) & 3) == 0 or (virt and ((c[VSSTATUS] >> 13) & 3) == 0):
                exc = 2
            else:
                r = fp_exec(ins & 0xFFFFFFFF, c[FRM], xr, fr)
                if r & (1 << 31):
                    exc = 2
                else:
                    c[FFLAGS] |= r & 0x1F
                    c[MSTATUS] |= 3 << 13
                    if virt:
                        c[VSSTATUS] |= 3 << 13
        else:
            exc = 2
        xr[0] = 0
        if exc >= 0:
            if exc == CAUSE_DEBUG:  # a debugger's load/store trigger: exit before the access, pc unchanged
                _exit(out, EXIT_DEBUG, h, tval, 1)
                ex = 1
                break
            if exc == 2 or exc == CAUSE_VIRTUAL:
                tval = raw
            if tmode:  # the monitor's turn: emulate, map the page in the shadow, or hand the trap to the guest
                act = TM_REFLECT
                if exc == 2:
                    act = tm_privileged(h, raw, vpriv, xr, c, hs, irq, ctime, base_ret + n - ntrap - nmon, R[3],
                                        rb, tlbt)
                    if act == 2:  # sret
                        npc = c[SEPC]
                        vpriv = hs[h, HS_VPRIV]
                    if act != TM_REFLECT:
                        pc = npc
                elif exc == 12 or exc == 13 or exc == 15:
                    if tm_page_fault(h, tval, exc, vpriv, c, R[3], rb, rsz, cfg[CF_GUEST_RAM], hs, tlbt) == 0:
                        act = 0  # mapped: the access runs again (a trap to the monitor, not an instruction)
                        nmon += 1
                    else:
                        exc = hs[h, HS_EXC_CAUSE]
                        tval = hs[h, HS_EXC_TVAL]
                if act == TM_REFLECT:
                    pc, priv, vpriv = _enter_trap(c, hs, h, tmode, priv, vpriv, pc, exc, tval)
                    ntrap += 1
                ctx_dirty = True
                irq_check = True
                blk = True
                if act == TM_WAIT:
                    hs[h, HS_WFI] = 1
                    n += 1
                    break
            else:
                pc, priv = take_trap(c, hs, h, priv, pc, exc, tval)
                virt = hs[h, HS_V]
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
    hs[h, HS_INSTRET] += n - ntrap - nmon
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
        first = cfg[CF_NEXT_HART]
        for i in range(nh):
            if total >= budget:
                break
            h = first + i
            if h >= nh:
                h -= nh
            if cfg[CF_STEP_HART] and h != cfg[CF_STEP_HART] - 1:
                continue
            c = csr[h]
            if hs[h, HS_WFI]:
                if hs[h, HS_WFI] == HART_STOPPED or ((c[MIP] | irq[h] | c[HVIP]) & c[MIE]) == 0:
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
                cfg[CF_NEXT_HART] = h + 1 if h + 1 < nh else 0  # the others run before this hart again
                return total
            if cfg[CF_JIT_SYNC] and jt[2][0] != jt[2][1]:
                return total  # the engine translates the queued regions now and calls again
        if ran == 0:
            if cfg[CF_DETERMINISTIC]:
                best = -1
                mt = ctime[CT_MTIME]
                tbit = 5 if cfg[CF_SBI] else 7  # the SBI's timer drives STIP, the CLINT's MTIP
                for h in range(nh):
                    if (csr[h, MIE] >> tbit) & 1 and hs[h, HS_WFI] != HART_STOPPED and ult(mt, mtcmp[h]):
                        if best == -1 or ult(mtcmp[h], best):
                            best = mtcmp[h]
                if best != -1:
                    ctime[CT_MTIME] = best
                    continue
            out[0] = EXIT_WFI
            return total
    return total
