"""Debug triggers (the Sdtrig extension): address/data match triggers of type ``mcontrol6``. Part of the core.

Four triggers per hart, selected with ``tselect``; ``tdata1`` holds the trigger (type 6, or 15 =
disabled), ``tdata2`` the address, ``tinfo`` says which types exist. A trigger matches loads, stores or
instruction fetches (``load``/``store``/``execute``) in the privilege modes it names (``m``/``s``/``u``)
whose bytes meet its address: equal (``match`` 0), a NAPOT range (1), at or above (2), below (3).
Action 0 raises a breakpoint exception (cause 3, ``tval`` = the address) *before* the access; action 1
("enter Debug Mode") is for an external debugger: the engine exits to the VMM (the GDB stub's
watchpoints), and only a trigger with ``dmode`` set (written by the VMM, never by the guest) has it.

How it costs nothing while no trigger is armed: the software TLB never caches a page that an armed
trigger touches, so every access to such a page takes the slow path (``mmu.mem_slow`` and
``mmu.fetch_page``), which checks the triggers; other pages run at full speed, in the JIT too.

Storage: the triggers live in CSR slots no instruction reaches (``csr_read`` refuses those numbers):
tdata1[i] at 0x7C0+i, tdata2[i] at 0x7C8+i, and a summary of what is armed at 0x7D8.
"""

from __future__ import annotations

from numba import njit

from virtkit.engines.riscv.alu import ult

NTRIG = 4
TSELECT, TDATA1, TDATA2, TDATA3, TINFO = 0x7A0, 0x7A1, 0x7A2, 0x7A3, 0x7A4
T1, T2, TARMED = 0x7C0, 0x7C8, 0x7D8
DISABLED = -(1 << 60)  # type 15 in bits 63:60
MC6 = 6 << 60
DMODE = 1 << 59
HIT0 = 1 << 22
CAUSE_DEBUG = 99  # an exception cause no hardware raises: "a debugger's trigger fired" (the engine exits)
TINFO_VALUE = (1 << 24) | (1 << 6) | (1 << 15)  # Sdtrig 1.0; types 6 and 15
#: tdata1 bits a guest may write in an mcontrol6 trigger: hit0, size, action, match, m, s, u, execute, store, load
_WMASK = HIT0 | (0xF << 12) | (0xF << 7) | (1 << 6) | (1 << 4) | (1 << 3) | 7


@njit(cache=True, nogil=True, inline="always")
def trig_read(c, num):
    """The value of tselect/tdata1-3/tinfo."""
    if num == TSELECT:
        return c[TSELECT]
    if num == TINFO:
        return TINFO_VALUE
    if num == TDATA3:
        return 0
    sel = c[TSELECT]
    v = c[T1 + sel] if num == TDATA1 else c[T2 + sel]
    if num == TDATA1 and v == 0:
        return DISABLED
    return v


@njit(cache=True, nogil=True)
def trig_write(c, num, val):
    """A guest write of tselect/tdata1-3 (M-mode; WARL). Returns 1: the caller flushes the TLB."""
    if num == TSELECT:
        if 0 <= val < NTRIG:
            c[TSELECT] = val
        return 0
    if num == TINFO or num == TDATA3:
        return 0
    sel = c[TSELECT]
    cur = c[T1 + sel]
    if cur & DMODE:  # the debugger's trigger: M-mode may not touch it
        return 0
    if num == TDATA2:
        c[T2 + sel] = val
    elif ((val >> 60) & 0xF) == 6:
        v = MC6 | (val & _WMASK)
        if ((v >> 12) & 0xF) != 0:  # only "breakpoint exception" for the guest
            v &= ~(0xF << 12)
        if ((v >> 7) & 0xF) > 3:  # matches other than equal, NAPOT, >=, < are not implemented
            v &= ~(0xF << 7)
        c[T1 + sel] = v
    else:
        c[T1 + sel] = DISABLED
    trig_summary(c)
    return 1


@njit(cache=True, nogil=True)
def trig_summary(c):
    """Recompute which access kinds any trigger of this hart watches (bit 0 load, 1 store, 2 execute)."""
    a = 0
    for i in range(NTRIG):
        t = c[T1 + i]
        if ((t >> 60) & 0xF) == 6:
            a |= t & 7
    c[TARMED] = a


@njit(cache=True, nogil=True, inline="always")
def _range(t1, t2):
    """[lo, hi) of a trigger's addresses (hi = 0 means up to the top of the address space)."""
    m = (t1 >> 7) & 0xF
    if m == 0:
        return t2, t2 + 1
    if m == 1:
        ones = 0
        while ones < 63 and (t2 >> ones) & 1:
            ones += 1
        size = 1 << (ones + 1) if ones < 62 else 0
        if size == 0:
            return 0, 0
        return t2 & ~(size - 1), (t2 & ~(size - 1)) + size
    if m == 2:
        return t2, 0
    return 0, t2


@njit(cache=True, nogil=True, inline="always")
def _meets(lo, hi, a, n):
    """Whether [a, a+n) meets [lo, hi) (unsigned; hi = 0: no upper end)."""
    end = a + n
    if hi != 0 and not ult(lo, hi):  # an empty range ("below 0")
        return False
    if hi != 0 and not ult(a, hi):
        return False
    return ult(lo, end) or end == 0


@njit(cache=True, nogil=True)
def trig_page(c, va, kind):
    """Whether an armed trigger of ``kind`` touches the 4 KiB page of ``va`` (then the TLB must not cache it)."""
    page = va & ~0xFFF
    for i in range(NTRIG):
        t = c[T1 + i]
        if ((t >> 60) & 0xF) == 6 and (t & kind):
            lo, hi = _range(t, c[T2 + i])
            if _meets(lo, hi, page, 4096):
                return True
    return False


@njit(cache=True, nogil=True)
def trig_hit(c, va, size, kind, priv):
    """The trigger that fires for an access of ``size`` bytes at ``va`` (kind: 1 load, 2 store, 3 AMO,
    4 fetch) in privilege ``priv``: its action (0 exception, 1 debugger) after setting its hit bit, or -1."""
    pbit = 1 << 6 if priv == 3 else (1 << 4 if priv == 1 else 1 << 3)
    for i in range(NTRIG):
        t = c[T1 + i]
        if ((t >> 60) & 0xF) == 6 and (t & kind) and (t & pbit):
            lo, hi = _range(t, c[T2 + i])
            if _meets(lo, hi, va, size):
                c[T1 + i] = t | HIT0
                return (t >> 12) & 0xF
    return -1
