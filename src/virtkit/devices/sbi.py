"""The SBI implemented by the VMM (``--bios builtin``): paravirtualization on the RISC-V machine.

On real RISC-V hardware the supervisor (Linux) asks machine-mode firmware (OpenSBI) for what only M-mode
can do: arm its timer, send IPIs, start harts, power off. With ``--bios builtin`` there is no firmware in
the guest: an ``ecall`` from S-mode is a hypercall into virtkit, as KVM serves the SBI for its RISC-V
guests. The engine serves the hot calls (TIME, IPI, RFENCE) inside its compiled core
(``engines/riscv/sbicore.py``); every other call reaches :meth:`Sbi.hypercall` as a HYPERCALL exit.

Implemented (SBI specification 2.0): Base, TIME, IPI, RFENCE (not the HFENCE calls: no H extension),
HSM (start, stop, suspend, status), SRST, DBCN (the debug console, sharing the console with the UART),
SUSP (suspend to RAM) and the legacy extensions 0x00-0x08 (console putchar/getchar, set_timer, IPIs and
fences through a hart-mask pointer, shutdown). Garbage gets SBI errors: unknown extensions and functions
are NOT_SUPPORTED, bad hart ids and masks INVALID_PARAM, memory outside RAM INVALID_PARAM or
INVALID_ADDRESS, as the specification says for each call.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from virtkit import __version__
from virtkit.engines.riscv.consts import MIP, MVENDORID
from virtkit.machine.state import StateError, fields, record

SPEC_VERSION = 2 << 24  # 2.0
IMPL_ID = 0x766B  # "vk": not in the specification's table of implementation IDs (it lists KVM as 3)

EXT_BASE, EXT_TIME, EXT_IPI, EXT_RFENCE = 0x10, 0x54494D45, 0x735049, 0x52464E43
EXT_HSM, EXT_SRST, EXT_DBCN, EXT_SUSP = 0x48534D, 0x53525354, 0x4442434E, 0x53555350
LEGACY = range(0x00, 0x09)
NAMES = {EXT_BASE: "BASE", EXT_TIME: "TIME", EXT_IPI: "IPI", EXT_RFENCE: "RFENCE", EXT_HSM: "HSM",
         EXT_SRST: "SRST", EXT_DBCN: "DBCN", EXT_SUSP: "SUSP"}
SUPPORTED = set(NAMES) | set(LEGACY)

SUCCESS, FAILED, NOT_SUPPORTED, INVALID_PARAM, DENIED, INVALID_ADDRESS, ALREADY_AVAILABLE = 0, -1, -2, -3, -4, -5, -6
# HSM states
STARTED, STOPPED, SUSPENDED = 0, 1, 4
RETENTIVE, NON_RETENTIVE = 0x0000_0000, 0x8000_0000
M64 = (1 << 64) - 1
SSIP = 1 << 1  # mip's supervisor software interrupt: an IPI


def _version_number() -> int:
    """virtkit's version as the SBI's implementation version: major << 16 | minor << 8 | patch."""
    parts = [int(p) if p.isdigit() else 0 for p in __version__.split(".")[:3]] + [0, 0, 0]
    return parts[0] << 16 | parts[1] << 8 | parts[2]


class Sbi:
    """The SBI calls the core hands to the VMM; ``power(kind, code)`` ends the run (poweroff, reset, fail)."""

    STATE_KIND = "sbi"
    STATE_VERSION = 1

    def __init__(self, engine: Any, console: Any, power: Callable[[str, int], None]) -> None:
        self.engine = engine
        self.mem = engine.mem
        self.nharts = engine.nharts
        self.console = console
        self.power = power
        self.suspended = [False] * self.nharts  # harts in an HSM suspend (SUSPENDED while they wait)
        #: calls answered here, by extension name (the core counts TIME, IPI and RFENCE itself)
        self.calls: Counter[str] = Counter()

    # -- state ------------------------------------------------------------------------------------
    def save(self) -> dict:
        """Which harts are suspended (the rest of a hart's HSM state is the engine's)."""
        return record(self, suspended=[int(s) for s in self.suspended])

    def restore(self, state: dict) -> None:
        """Take a saved state."""
        f = fields(self, state)
        s = f.ints("suspended", self.nharts, 0, 1)
        if len(s) != self.nharts:
            raise StateError(f"sbi state: {len(s)} harts, this machine has {self.nharts}")
        self.suspended = [bool(v) for v in s]

    def stats(self) -> dict[str, int]:
        """Every SBI call so far by extension: those the VMM answered and those the core served."""
        c = Counter(self.calls)
        c.update(self.engine.sbi_counts())  # (legacy calls: putchar in the core, the rest here)
        return dict(sorted(c.items()))

    # -- the hypercall ------------------------------------------------------------------------------
    def hypercall(self, hart: int, args: tuple[int, ...]) -> tuple[int, ...]:
        """Answer hart ``hart``'s ``ecall``: args are a0..a5, the function ID (a6) and the extension ID (a7)."""
        a, fid, ext = args[:6], args[6], args[7]
        if ext in LEGACY:
            self.calls["legacy"] += 1
            return self._legacy(hart, ext, a)
        name = NAMES.get(ext)
        self.calls[name or "unknown"] += 1
        handler = getattr(self, f"_{name.lower()}", None) if name else None
        if handler is None:
            return (NOT_SUPPORTED, 0)
        return handler(hart, fid, a)

    def _base(self, hart: int, fid: int, a: tuple[int, ...]) -> tuple[int, ...]:
        if fid == 0:
            return (SUCCESS, SPEC_VERSION)
        if fid == 1:
            return (SUCCESS, IMPL_ID)
        if fid == 2:
            return (SUCCESS, _version_number())
        if fid == 3:
            return (SUCCESS, int(a[0] in SUPPORTED))
        if fid in (4, 5, 6):  # mvendorid, marchid, mimpid
            return (SUCCESS, self.engine.read_csr(hart, MVENDORID + fid - 4))
        return (NOT_SUPPORTED, 0)

    def _time(self, hart: int, fid: int, a: tuple[int, ...]) -> tuple[int, ...]:
        return (NOT_SUPPORTED, 0)  # set_timer is served in the core; other functions do not exist

    _ipi = _rfence = _time

    # -- HSM ----------------------------------------------------------------------------------------
    def status(self, hart: int) -> int:
        """The HSM state of ``hart`` (STARTED, STOPPED or SUSPENDED; transitions here are immediate)."""
        st = self.engine.hart_state(hart)
        if st == "stopped":
            self.suspended[hart] = False
            return STOPPED
        if self.suspended[hart] and st == "waiting":
            return SUSPENDED
        self.suspended[hart] = False
        return STARTED

    def _hsm(self, hart: int, fid: int, a: tuple[int, ...]) -> tuple[int, ...]:
        if fid == 0:  # hart_start(hartid, start_addr, opaque)
            target, addr, opaque = a[0], a[1], a[2]
            if target >= self.nharts:
                return (INVALID_PARAM, 0)
            if self.status(target) != STOPPED:
                return (ALREADY_AVAILABLE, 0)
            if not self.mem.contains(addr, 4) or addr & 1:
                return (INVALID_ADDRESS, 0)
            self.engine.start_hart(target, addr, target, opaque)
            return (SUCCESS, 0)
        if fid == 1:  # hart_stop(): does not return
            self.engine.stop_hart(hart)
            return ()
        if fid == 2:  # hart_get_status(hartid)
            if a[0] >= self.nharts:
                return (INVALID_PARAM, 0)
            return (SUCCESS, self.status(a[0]))
        if fid == 3:  # hart_suspend(type, resume_addr, opaque)
            return self._suspend(hart, a[0], a[1], a[2])
        return (NOT_SUPPORTED, 0)

    def _suspend(self, hart: int, kind: int, resume: int, opaque: int) -> tuple[int, ...]:
        if kind == RETENTIVE:
            self.suspended[hart] = True
            self.engine.suspend_hart(hart)
            return (SUCCESS, 0)  # it goes on after the ecall once an enabled interrupt is pending
        if kind == NON_RETENTIVE:
            if not self.mem.contains(resume, 4) or resume & 1:
                return (INVALID_ADDRESS, 0)
            self.suspended[hart] = True
            self.engine.start_hart(hart, resume, hart, opaque)  # where it resumes, as hart_start leaves a hart
            self.engine.suspend_hart(hart)
            return ()
        return (INVALID_PARAM, 0)  # reserved or platform-specific types (none here)

    # -- SRST, SUSP -----------------------------------------------------------------------------------
    def _srst(self, hart: int, fid: int, a: tuple[int, ...]) -> tuple[int, ...]:
        if fid != 0:
            return (NOT_SUPPORTED, 0)
        kind, reason = a[0], a[1]
        if kind > 2 or (1 < reason < 0xF000_0000) or reason > 0xFFFF_FFFF:
            return (INVALID_PARAM, 0)
        if kind == 0:
            self.power("fail" if reason == 1 else "poweroff", 1 if reason == 1 else 0)
        else:
            self.power("reset", 0)
        return (SUCCESS, 0)

    def _susp(self, hart: int, fid: int, a: tuple[int, ...]) -> tuple[int, ...]:
        if fid != 0:
            return (NOT_SUPPORTED, 0)
        sleep, resume, opaque = a[0], a[1], a[2]
        if sleep != 0:  # only SUSPEND_TO_RAM; the rest is reserved or platform-specific (none here)
            return (INVALID_PARAM, 0)
        if any(self.status(h) != STOPPED for h in range(self.nharts) if h != hart):
            return (DENIED, 0)
        return self._suspend(hart, NON_RETENTIVE, resume, opaque)

    # -- DBCN ---------------------------------------------------------------------------------------
    def _dbcn(self, hart: int, fid: int, a: tuple[int, ...]) -> tuple[int, ...]:
        if fid == 2:  # console_write_byte(byte)
            self.console.emit(bytes([a[0] & 0xFF]))
            return (SUCCESS, 0)
        if fid not in (0, 1):
            return (NOT_SUPPORTED, 0)
        n, lo, hi = a[0], a[1], a[2]
        if hi or (n and not self.mem.contains(lo, n)):
            return (INVALID_PARAM, 0)
        if fid == 0:  # console_write(num_bytes, base_lo, base_hi)
            self.console.emit(self.mem.read(lo, n) if n else b"")
            return (SUCCESS, n)
        data = self.console.take_input(n)  # console_read
        if data:
            self.mem.write(lo, data)
        return (SUCCESS, len(data))

    # -- legacy extensions (SBI v0.1): a0 only ---------------------------------------------------------
    def _legacy(self, hart: int, ext: int, a: tuple[int, ...]) -> tuple[int, ...]:
        if ext == 0x01:  # console_putchar
            self.console.emit(bytes([a[0] & 0xFF]))
            return (0,)
        if ext == 0x02:  # console_getchar
            data = self.console.take_input(1)
            return (data[0] if data else M64,)
        if ext == 0x03:  # clear_ipi
            self.engine.csr[hart, MIP] &= ~SSIP
            return (0,)
        if ext == 0x08:  # shutdown
            self.power("poweroff", 0)
            return (0,)
        if ext in (0x04, 0x05, 0x06, 0x07):  # send_ipi / remote fences through a pointer to a hart mask
            mask = self._mask_at(hart, a[0])
            if mask is None:
                return (INVALID_ADDRESS & M64,)
            if ext == 0x04:
                for t in range(self.nharts):
                    if mask >> t & 1:
                        self.engine.csr[t, MIP] |= SSIP
            elif ext != 0x05:
                for t in range(self.nharts):
                    if mask >> t & 1:
                        self.engine.flush_tlb(t)
            return (0,)
        return (NOT_SUPPORTED & M64,)  # 0x00 (set_timer) is served in the core

    def _mask_at(self, hart: int, va: int) -> int | None:
        """The legacy calls' hart mask: an unsigned long at a supervisor virtual address (0: every hart)."""
        if va == 0:
            return (1 << self.nharts) - 1
        pa = self.engine.translate(hart, va)
        if pa is None or not self.mem.contains(pa, 8):
            return None
        return self.mem.read_u64(pa)
