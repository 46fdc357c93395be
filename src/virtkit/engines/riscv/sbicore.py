"""The SBI's hot calls served inside the compiled core (``--bios builtin``): TIME, IPI and RFENCE.

When the VMM is the SBI (KVM's model for RISC-V guests), an ``ecall`` from S-mode is a call into the
hypervisor. The calls a running kernel makes thousands of times a second (arming the timer, sending
an IPI, shooting down a remote TLB) are done here, next to the harts' registers, without leaving the
core; every other call leaves ``run_harts`` as a HYPERCALL exit that the Python SBI
(:mod:`virtkit.devices.sbi`) answers. Part of the core (``@njit``).
"""

from __future__ import annotations

from numba import njit

from virtkit.engines.riscv.consts import (
    CF_FCOUNT,
    CF_NHARTS,
    CF_SBI_CONSOLE,
    CF_SBI_IPI,
    CF_SBI_PUTCHAR,
    CF_SBI_RFENCE,
    CF_SBI_TIME,
    CF_TRAP,
    FAST0,
    FAST_BUFFER,
    FRING0,
    FRING_N,
    MIP,
    SBI_ERR_INVALID_PARAM,
    SBI_ERR_NOT_SUPPORTED,
    SBI_EXT_IPI,
    SBI_EXT_RFENCE,
    SBI_EXT_TIME,
    SBI_SUCCESS,
    TM_ZAP,
    VIRT_CSR,
)


@njit(cache=True, nogil=True, inline="always")
def _mask_ok(mask, base, nh):
    """Whether every hart named by (hart_mask, hart_mask_base) exists (base = -1: all harts)."""
    if base == -1 or mask == 0:
        return True
    if base < 0 or base >= nh:
        return False
    if base + 64 > nh:
        top = nh - base  # bits at or above ``top`` name harts that do not exist
        if (mask >> top) != 0:
            return False
    return True


@njit(cache=True, nogil=True, inline="always")
def _targets(mask, base, nh, t):
    """Whether hart ``t`` is among (hart_mask, hart_mask_base)."""
    if base == -1:
        return True
    d = t - base
    return 0 <= d < 64 and (mask >> d) & 1 != 0


@njit(cache=True, nogil=True)
def sbi_fast(h, xr, csr, cfg, mtcmp, tlbt_all, mmio):
    """Serve hart ``h``'s SBI call if it is a hot one: returns 1 when done (a0/a1 written), 0 when the
    VMM must answer it (a HYPERCALL exit). Hart masks are checked as the specification says: a hart that
    does not exist makes the whole call INVALID_PARAM, and nothing is done. The legacy console_putchar
    (Linux's ``earlycon=sbi``) is a store to the console UART's transmit register when that register is a
    buffered fast MMIO cell at the moment: the byte joins the UART's own output, in order, without an exit."""
    ext = xr[17]
    fid = xr[16]
    nh = cfg[CF_NHARTS]
    if ext == SBI_EXT_TIME or ext == 0:  # set_timer (and the legacy call, which returns a0 only)
        if ext == SBI_EXT_TIME and fid != 0:
            xr[10] = SBI_ERR_NOT_SUPPORTED
            return 1
        mtcmp[h] = xr[10]
        cfg[CF_SBI_TIME] += 1
        if ext == SBI_EXT_TIME:
            xr[11] = 0
        xr[10] = SBI_SUCCESS
        return 1
    if ext == 1 and cfg[CF_SBI_CONSOLE]:
        cell = cfg[CF_SBI_CONSOLE] - 1
        q = cfg[CF_FCOUNT]
        if mmio[FAST0 + cell, 2] == FAST_BUFFER and q < FRING_N:
            mmio[FRING0 + q, 0] = cell
            mmio[FRING0 + q, 1] = xr[10] & 0xFF
            cfg[CF_FCOUNT] = q + 1
            cfg[CF_SBI_PUTCHAR] += 1
            xr[10] = 0
            return 1
        return 0
    if ext == SBI_EXT_IPI:
        if fid != 0:
            xr[10] = SBI_ERR_NOT_SUPPORTED
            return 1
        mask = xr[10]
        base = xr[11]
        if not _mask_ok(mask, base, nh):
            xr[10] = SBI_ERR_INVALID_PARAM
            return 1
        for t in range(nh):
            if _targets(mask, base, nh, t):
                csr[t, MIP] |= 2  # SSIP
        cfg[CF_SBI_IPI] += 1
        xr[10] = SBI_SUCCESS
        xr[11] = 0
        return 1
    if ext == SBI_EXT_RFENCE:
        if fid > 6 or fid < 0 or (fid > 2 and csr[h, VIRT_CSR] == 0):  # the HFENCE calls need the H extension
            xr[10] = SBI_ERR_NOT_SUPPORTED
            return 1
        mask = xr[10]
        base = xr[11]
        if not _mask_ok(mask, base, nh):
            xr[10] = SBI_ERR_INVALID_PARAM
            return 1
        if fid != 0:  # remote sfence.vma(_asid), hfence.gvma(_vmid), hfence.vvma(_asid): the whole software TLB
            for t in range(nh):  # (fence.i has nothing to do here); under trap and emulate, the shadows too
                if _targets(mask, base, nh, t):
                    tlbt_all[t, :, :] = 0
                    if cfg[CF_TRAP]:
                        csr[t, TM_ZAP] = 1
        cfg[CF_SBI_RFENCE] += 1
        xr[10] = SBI_SUCCESS
        xr[11] = 0
        return 1
    return 0
