"""Trap and emulate (``--mode trap``): the monitor a type-2 VMM of the VMware/VirtualBox kind would have, here
beside the core in compiled code. Part of the core (``@njit``).

The guest kernel runs *deprivileged*: the hart is really in U-mode while the guest believes it is in S-mode
(its virtual privilege, ``hs[h, HS_VPRIV]``: 1 vS, 0 vU). Everything only S-mode may do traps, as it would on
hardware, and lands here:

- an illegal-instruction exception for a CSR access, ``sret``, ``wfi`` or ``sfence.vma`` made in vS: the
  monitor decodes the instruction and emulates it against the guest's virtual supervisor state (the CSRs the
  guest sees live in the engine's S-level slots; only ``satp`` is kept apart, ``TM_SATP``, because the real
  one points at the shadow tables);
- an ``ecall`` from vS: an SBI call, answered by the VMM's SBI (the monitor *is* the firmware);
- a page fault: the real ``satp`` holds **shadow page tables** the monitor builds from the guest's own. On a
  fault the monitor walks the guest's tables as the guest's privilege would (setting the guest's A/D bits);
  a fault there is the guest's and is handed to it, else the monitor maps the page in the shadow (4 KiB
  leaves, only the permission the access needed, U set so the real U-mode hart can use it) and the access
  is retried. Three shadow roots per hart (vU, vS, vS with SUM) so a privilege switch is a root switch, not
  a flush; an ``sfence.vma`` of one address drops that page's entries (all of them if the guest mapped it
  with a superpage, whose other pages the shadow also holds); the shadows are dropped whole on an
  ``sfence.vma`` of everything, a ``satp`` write, a change of MXR, a remote fence (SBI RFENCE) and when the
  hart's pool is full. That is what RISC-V's rules allow: a page-table change
  takes effect only after an ``sfence.vma``, so no guest page-table page needs write protection (x86 shadow
  MMUs protect them to keep shadows across CR3 switches; this monitor trades that for simplicity).
- anything else (the guest's own illegal instructions, its user programs' ecalls, access faults,
  breakpoints, interrupts) is *reflected*: entered into the guest's trap handler as the hardware would.

The shadow pool lives in RAM above what the guest sees (``cfg[CF_GUEST_RAM]``); the monitor never maps
that part for the guest.
"""

from __future__ import annotations

from numba import njit

from virtkit.engines.riscv.alu import srl
from virtkit.engines.riscv.consts import (
    HS_EXC_CAUSE,
    HS_EXC_TVAL,
    HS_VPRIV,
    HS_WALK_LEVEL,
    MIE,
    MIP,
    MSTATUS,
    SATP,
    TLB_MASK,
    TM_FILLS,
    TM_GUEST_FAULTS,
    TM_NEXT,
    TM_POOL,
    TM_POOL_PAGES,
    TM_PRIV_TRAPS,
    TM_SATP,
    TM_ZAP,
    TM_ZAPS,
)
from virtkit.engines.riscv.csr import csr_read, csr_write
from virtkit.engines.riscv.mmu import translate

TM_EMULATED, TM_REFLECT, TM_WAIT = 0, 1, 3
SUPER = 1 << 8  # a software bit of the shadow leaf: the guest maps this page with a superpage


@njit(cache=True, nogil=True, inline="always")
def _root(c, vpriv):
    """RAM offset of the shadow root for the guest's context: vU, vS, or vS with SUM."""
    return c[TM_POOL] + (0 if vpriv == 0 else 1 + ((c[MSTATUS] >> 18) & 1)) * 4096


@njit(cache=True, nogil=True, inline="always")
def _levels(c):
    """Levels of the shadow tables: the guest's Sv39 or Sv48 (Sv48 while its translation is off)."""
    return 3 if srl(c[TM_SATP], 60) == 8 else 4


@njit(cache=True, nogil=True, inline="always")
def tm_satp(c, vpriv, rb):
    """The real satp for the guest's context: its mode (Sv48 while the guest has translation off), the root of
    vU, vS or vS-with-SUM."""
    return ((8 if _levels(c) == 3 else 9) << 60) | ((rb + _root(c, vpriv)) >> 12)


@njit(cache=True, nogil=True)
def tm_zap(c, r64, tlbt):
    """Drop every shadow table of the hart (the roots emptied, the pool free again) and its software TLB."""
    lo = c[TM_POOL]
    r64[lo >> 3:(lo + 3 * 4096) >> 3] = 0
    c[TM_NEXT] = lo + 3 * 4096
    c[TM_ZAP] = 0
    c[TM_ZAPS] += 1
    tlbt[:, :] = 0


@njit(cache=True, nogil=True)
def _fill(c, r64, rb, vaddr, pa, perm, vpriv):
    """Map ``vaddr`` -> ``pa`` in the current shadow root with ``perm`` (R 2, W 4, X 8, and SUPER) added to what
    the leaf had; False when the pool has no page left for a table."""
    a = _root(c, vpriv)
    for i in range(_levels(c) - 1, 0, -1):
        k = (a >> 3) + ((vaddr >> (12 + 9 * i)) & 0x1FF)
        e = r64[k]
        if e & 1:
            a = ((e >> 10) << 12) - rb
            continue
        nxt = c[TM_NEXT]
        if nxt >= c[TM_POOL] + TM_POOL_PAGES * 4096:
            return False
        c[TM_NEXT] = nxt + 4096
        r64[nxt >> 3:(nxt + 4096) >> 3] = 0
        r64[k] = (((rb + nxt) >> 12) << 10) | 1
        a = nxt
    k = (a >> 3) + ((vaddr >> 12) & 0x1FF)
    old = r64[k]
    keep = old & (0xE | SUPER) if (old & 1) and ((old >> 10) << 12) == (pa & ~0xFFF) else 0
    r64[k] = (((pa >> 12) & 0xFFFFFFFFFFF) << 10) | keep | perm | 0xD1  # V U A D: the walker never writes it
    return True


@njit(cache=True, nogil=True)
def _unmap(c, r64, rb, vaddr):
    """Drop the shadow leaves of ``vaddr``'s page in the three roots; False when one came from a guest
    superpage (the caller drops everything: the shadow holds that superpage's other pages too)."""
    levels = _levels(c)
    for idx in range(3):
        a = c[TM_POOL] + idx * 4096
        for i in range(levels - 1, -1, -1):
            k = (a >> 3) + ((vaddr >> (12 + 9 * i)) & 0x1FF)
            e = r64[k]
            if (e & 1) == 0:
                break
            if i == 0:
                if e & SUPER:
                    return False
                r64[k] = 0
                break
            a = ((e >> 10) << 12) - rb
    return True


@njit(cache=True, nogil=True)
def tm_page_fault(h, vaddr, cause, vpriv, c, r64, rb, rsz, gram, hs, tlbt):
    """A page fault of the real (shadow) translation: 0 when the shadow now maps the page (retry the access),
    1 when the guest's own tables refuse it (the guest's fault, in ``hs``)."""
    acc = 0 if cause == 12 else (1 if cause == 13 else 2)
    mode = srl(c[TM_SATP], 60)
    if mode == 0 and (vaddr < 0 or (vaddr >> 47) != 0):  # beyond what a shadow maps: no memory there either
        hs[h, HS_EXC_CAUSE] = 1 if acc == 0 else (5 if acc == 1 else 7)
        hs[h, HS_EXC_TVAL] = vaddr
        return 1
    real = c[SATP]
    c[SATP] = c[TM_SATP]
    pa = translate(h, vaddr, acc, vpriv, 0, c, r64, rb, rsz, hs)  # the guest's walk: its A/D bits, its faults
    c[SATP] = real
    if pa < 0:
        c[TM_GUEST_FAULTS] += 1
        return 1
    if rb + gram <= pa < rb + rsz:  # the monitor's own memory is never the guest's
        hs[h, HS_EXC_CAUSE] = 1 if acc == 0 else (5 if acc == 1 else 7)
        hs[h, HS_EXC_TVAL] = vaddr
        return 1
    perm = 8 if acc == 0 else (2 if acc == 1 else 6)
    if hs[h, HS_WALK_LEVEL] > 0:
        perm |= SUPER
    if not _fill(c, r64, rb, vaddr, pa, perm, vpriv):
        tm_zap(c, r64, tlbt)
        _fill(c, r64, rb, vaddr, pa, perm, vpriv)
    tlbt[0, (vaddr >> 12) & TLB_MASK] = 0  # (a fetch page may have been cached under the old permissions)
    c[TM_FILLS] += 1
    return 0


@njit(cache=True, nogil=True)
def tm_privileged(h, raw, vpriv, xr, c, hs, irq, ctime, retired, r64, rb, tlbt):
    """An illegal-instruction trap from the deprivileged guest: TM_EMULATED (go on at the next instruction;
    an ``sret`` has set the pc to sepc itself: returns 2), TM_REFLECT (the guest's own illegal instruction),
    TM_WAIT (a ``wfi`` with nothing pending)."""
    if vpriv != 1 or (raw & 0x7F) != 0x73:
        return TM_REFLECT
    f3 = (raw >> 12) & 7
    rd = (raw >> 7) & 31
    rs1 = (raw >> 15) & 31
    if f3 == 0:
        if raw == 0x10200073:  # sret: back to the guest's SPP, through its sstatus
            ms = c[MSTATUS]
            hs[h, HS_VPRIV] = (ms >> 8) & 1
            c[MSTATUS] = (ms & ~((1 << 1) | (1 << 8))) | (((ms >> 5) & 1) << 1) | (1 << 5)
            c[TM_PRIV_TRAPS] += 1
            return 2
        if raw == 0x10500073:  # wfi
            c[TM_PRIV_TRAPS] += 1
            return TM_WAIT if ((c[MIP] | irq[h]) & c[MIE]) == 0 else TM_EMULATED
        if (raw >> 25) == 0x09 and rd == 0:  # sfence.vma: the shadows of that page, or all of them
            c[TM_PRIV_TRAPS] += 1
            if rs1 == 0 or not _unmap(c, r64, rb, xr[rs1]):
                tm_zap(c, r64, tlbt)
            tlbt[:, :] = 0
            return TM_EMULATED
        return TM_REFLECT
    if f3 == 4:
        return TM_REFLECT
    num = (raw >> 20) & 0xFFF
    write = (f3 & 3) == 1 or rs1 != 0
    if write and (num >> 10) == 3:
        return TM_REFLECT
    src = rs1 if f3 >= 5 else xr[rs1]
    k = f3 & 3
    if num == SATP:
        old = c[TM_SATP]
        if write:
            nv = src if k == 1 else (old | src if k == 2 else old & ~src)
            mode = srl(nv, 60)
            if mode == 0 or mode == 8 or mode == 9:  # else the write has no effect, as for satp
                c[TM_SATP] = nv
                tm_zap(c, r64, tlbt)
    else:
        exc, old = csr_read(h, num, 1, c, hs, irq, ctime, retired)
        if exc >= 0:
            return TM_REFLECT
        if write:
            nv = src if k == 1 else (old | src if k == 2 else old & ~src)
            before = c[MSTATUS]
            if csr_write(h, num, nv, 1, c, hs, ctime, retired):
                tlbt[:, :] = 0
            if num <= 3:
                c[MSTATUS] |= 3 << 13
            if ((before ^ c[MSTATUS]) >> 19) & 1:  # MXR: the shadows were built for the other value
                tm_zap(c, r64, tlbt)
    if rd != 0:
        xr[rd] = old
    c[TM_PRIV_TRAPS] += 1
    return TM_EMULATED
