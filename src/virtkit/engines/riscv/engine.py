"""The software RISC-V engine: N RV64IMAFDC harts (M/S/U, Sv39/Sv48, PMP) + CLINT over guest RAM.

It implements the machine's engine contract (:mod:`virtkit.machine.engine`: ``run(budget) -> Exit``,
``complete_read``, ``set_irq``, ``request_exit``, ``next_timer_deadline``, ``pause_clock``...). All harts
run in one host thread (``threads = 1``): ``run`` interleaves them in slices and the exit names the
hart in ``vcpu``. What is RISC-V-specific::

    eng = RiscvEngine(mem, nharts=1, reset_pc=0x8000_0000, clint_base=0x0200_0000, deterministic=False)
    eng.add_mmio_region(base, size)    # accesses here exit; any other non-RAM, non-CLINT access raises
                                       # the architectural access fault inside the core
    eng.set_reg(h, 11, dtb_addr)       # a0 = mhartid is preset; a1 is yours
    eng.tohost = addr                  # HTIF: a store to this RAM word exits as MMIO_WRITE(addr, 8, value)

Exit reasons (the shared :class:`~virtkit.machine.engine.ExitReason`): BUDGET (budget spent or
:meth:`request_exit`), MMIO_READ (the load completes, with the right sign/zero extension, when
:meth:`complete_read` is called before the next ``run()``), MMIO_WRITE (also HTIF's ``tohost``), HALT (every
hart waits in WFI with nothing pending), SHUTDOWN (reserved). MMIO accesses are 1, 2, 4 or 8 bytes; AMO/LR/SC
on MMIO raise an access fault. ``set_irq(hart, line, level)`` drives MEIP (11) or SEIP (9); the SEIP the
guest reads is its software-written bit OR the line.

Other calls: ``get_reg/set_reg``, ``get_freg/set_freg``, ``pc/set_pc``, ``read_csr/write_csr`` (debug and boot
setup); ``stats()``; ``idle(seconds)``; ``add_fast_mmio``/``set_fast_mmio`` (coalesced MMIO).

Architectural choices: misaligned loads and stores are performed in hardware (also across pages);
misaligned AMO/LR/SC raise address-misaligned (LR: load, others: store/AMO). The page walker sets
A and D in hardware (the spec's "update in hardware" option). 16 PMP entries (G=0; entries 16..63
read as zero). ``misa`` = RV64IMAFDC + S + U. ``time`` = CLINT mtime at 10 MHz: it follows the
host monotonic clock (sampled at each ``run()``, advanced inside the core by an instruction-count
estimate, never backwards; it stands still while the VM is paused), or with ``deterministic=True`` it
advances by one tick per 10 instructions and jumps to the next timer deadline when every hart is in WFI.
The CLINT (msip at +0x0, mtimecmp at +0x4000, mtime at +0xBFF8) lives inside the core.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from virtkit.engines.riscv import consts, coresel
from virtkit.engines.riscv.coresel import core, ctab, selected_core  # noqa: F401  (selected_core: re-exported)
from virtkit.engines.riscv.jit import Jit, threshold_from_env
from virtkit.errors import ConfigError
from virtkit.machine.engine import Exit, ExitReason, RawExit
from virtkit.machine.memory import GuestMemory
from virtkit.machine.state import StateError, fields, record

TIMEBASE_HZ = 10_000_000
MAX_MMIO = consts.MAX_MMIO


#: core exit code -> shared exit reason (the core's HTIF code becomes an MMIO_WRITE at ``tohost``)
_REASONS = {core.EXIT_BUDGET: ExitReason.BUDGET, core.EXIT_MMIO_READ: ExitReason.MMIO_READ,
            core.EXIT_MMIO_WRITE: ExitReason.MMIO_WRITE, core.EXIT_WFI: ExitReason.HALT,
            core.EXIT_HTIF: ExitReason.MMIO_WRITE, core.EXIT_SHUTDOWN: ExitReason.SHUTDOWN,
            core.EXIT_HYPERCALL: ExitReason.HYPERCALL, core.EXIT_DEBUG: ExitReason.DEBUG}




def _u64(v: int) -> int:
    return int(v) & 0xFFFF_FFFF_FFFF_FFFF


def _s64(v: int) -> int:
    v = int(v) & 0xFFFF_FFFF_FFFF_FFFF
    return v - (1 << 64) if v >> 63 else v


#: trap causes as ``traps_by_cause`` names them (the privileged spec's mcause table)
EXCEPTIONS = {0: "misaligned fetch", 1: "fetch access fault", 2: "illegal instruction", 3: "breakpoint",
              4: "misaligned load", 5: "load access fault", 6: "misaligned store/AMO", 7: "store/AMO access fault",
              8: "ecall from U", 9: "ecall from S", 10: "ecall from VS", 11: "ecall from M", 12: "fetch page fault",
              13: "load page fault", 15: "store/AMO page fault", 20: "fetch guest-page fault",
              21: "load guest-page fault", 22: "virtual instruction", 23: "store/AMO guest-page fault"}
INTERRUPTS = {1: "S software interrupt", 3: "M software interrupt", 5: "S timer interrupt", 7: "M timer interrupt",
              9: "S external interrupt", 11: "M external interrupt", 2: "VS software interrupt",
              6: "VS timer interrupt", 10: "VS external interrupt", 12: "guest external interrupt"}

#: the per-hart words of ``hs`` a snapshot keeps (the others describe an exit in progress or are statistics)
_HS_SAVED = {"pc": core.HS_PC, "priv": core.HS_PRIV, "wfi": core.HS_WFI, "resv": core.HS_RESV,
             "instret": core.HS_INSTRET, "cyc_off": core.HS_CYC_OFF, "iret_off": core.HS_IRET_OFF,
             "cy_frozen": core.HS_CY_FROZEN, "ir_frozen": core.HS_IR_FROZEN, "traps": core.HS_TRAPS,
             "jit_insns": core.HS_JIT, "jit_calls": core.HS_JIT_CALLS}
#: saved when not zero (states from before the H extension and trap and emulate have none)
_HS_OPTIONAL = {"v": core.HS_V, "vpriv": core.HS_VPRIV}
_I64 = (-(1 << 63), (1 << 63) - 1)


class RiscvEngine:
    """N RISC-V harts executing from ``mem`` (see the module docstring for the interface)."""

    STATE_KIND = "riscv-engine"
    STATE_VERSION = 1

    def __init__(
        self,
        mem: GuestMemory,
        nharts: int = 1,
        *,
        reset_pc: int = 0x8000_0000,
        clint_base: int = 0x0200_0000,
        deterministic: bool = False,
        slice_len: int = 1000,
        jit: int | None = None,
        sbi: bool = False,
        h: bool = False,
        trap: bool = False,
        guest_ram: int | None = None,
    ) -> None:
        if not 1 <= nharts <= 64:
            raise ConfigError(f"number of harts must be 1..64: {nharts}")
        if mem.size % 8 or mem.base % 4096:
            raise ConfigError("guest RAM must be page aligned")
        self.mem = mem
        self.nharts = nharts
        self.deterministic = deterministic
        ram = mem.array
        self._R = (
            ram,
            ram.view(np.uint16),
            ram.view(np.uint32),
            ram.view(np.int64),
            ram.view(np.int8),
            ram.view(np.int16),
            ram.view(np.int32),
        )
        self.x = np.zeros((nharts, 32), dtype=np.int64)
        self.f = np.zeros((nharts, 32), dtype=np.int64)
        self.csr = np.zeros((nharts, 4096), dtype=np.int64)
        self.hs = np.zeros((nharts, core.HS_N), dtype=np.int64)
        self.irq = np.zeros(nharts, dtype=np.int64)
        self.cfg = np.zeros(core.CF_N, dtype=np.int64)
        self.mmio = np.zeros((core.MMIO_ROWS, core.MMIO_COLS), dtype=np.int64)
        self._fast_sinks: list[Callable[[int], None] | None] = []  # per fast cell: where buffered writes go
        self._fast_bulk: list[Callable[[bytes], None] | None] = []  # per fast cell: where runs of them go
        self.fast_writes = 0
        self.msip = np.zeros(nharts, dtype=np.int64)
        self.mtimecmp = np.full(nharts, -1, dtype=np.int64)
        self.ctime = np.zeros(4, dtype=np.int64)
        self.tlbt = np.zeros((nharts, 3, core.TLB_SIZE), dtype=np.int64)
        self.tlbo = np.zeros((nharts, 3, core.TLB_SIZE), dtype=np.int64)
        self.out = np.zeros(8, dtype=np.int64)
        self._ctab = ctab()
        self.cfg[core.CF_RAM_BASE] = mem.base
        self.cfg[core.CF_RAM_SIZE] = mem.size
        self.cfg[core.CF_CLINT_BASE] = clint_base
        self.cfg[core.CF_TOHOST] = -1
        self.cfg[core.CF_NHARTS] = nharts
        self.cfg[core.CF_SLICE] = slice_len
        self.cfg[core.CF_DETERMINISTIC] = int(deterministic)
        self.cfg[core.CF_RATE] = 6554  # 1/10 tick per instruction (65536 = 1 tick)
        self.x[:, 10] = np.arange(nharts)
        self.csr[:, core.MSTATUS] = core.MSTATUS_FIXED
        self.hs[:, core.HS_PC] = reset_pc
        self.hs[:, core.HS_PRIV] = 3
        self.hs[:, core.HS_RESV] = -1
        self.clint_base = clint_base
        self.fromhost: int | None = None
        self._pending_read: RawExit | None = None
        self._exits = {r.name: 0 for r in ExitReason}
        self._paused_at: float | None = None
        #: the shared engine contract (virtkit.machine.engine.Engine)
        self.name = "riscv"
        self.nvcpus = nharts
        self.threads = 1
        self._t0 = time.monotonic()
        self._time_base = 0
        # the JIT tier (jit.py): threshold from ``jit`` (0 = off) or $VIRTKIT_JIT
        thr = threshold_from_env() if jit is None else int(jit)
        # deterministic runs translate synchronously (same results whatever the host's speed)
        self.jit = Jit(ram, nharts, self._ctab, thr, background=not deterministic)
        self.cfg[core.CF_JIT_SYNC] = int(deterministic)
        self.jit.bind(self.x, ram, self.tlbt, self.tlbo, self.cfg)
        self.jit.resident = mem.resident_pages
        hs = self.hs
        self.jit.clock = lambda: int(hs[:, core.HS_INSTRET].sum())
        self._jt = (self.jit.jtab, self.jit.jhot, self.jit.jreq, self.jit.cmap, self.jit.jctx)
        self.cfg[core.CF_JIT] = thr
        mem.on_write = self.jit.invalidate
        self.compile_seconds = coresel.ensure_compiled(self)
        #: the hypervisor extension (misa.H): off unless the machine asks (--cpu rv64,h=on)
        self.h = h
        if h:
            self.csr[:, core.VIRT_CSR] = 1
            self.csr[:, core.MIDELEG] = core.MIDELEG_H  # the VS-level interrupts go to HS, read-only
            self.csr[:, core.HSTATUS] = core.HSTATUS_FIXED
            self.csr[:, core.VSSTATUS] = 2 << 32  # UXL = 64-bit
        self.sbi = sbi
        if sbi:
            self._sbi_reset()
        #: trap and emulate (--mode trap): the guest kernel runs in U-mode under the monitor (trapmon.py)
        self.trap = trap
        if trap:
            self._trap_reset(mem.size - nharts * core.TM_POOL_PAGES * 4096 if guest_ram is None else guest_ram)

    def _sbi_reset(self) -> None:
        """The VMM is the SBI (``--bios builtin``): every hart starts in S-mode with the machine level set up as
        an SBI implementation leaves it (OpenSBI's choices): exceptions a supervisor handles and the S-level
        interrupts delegated, the cycle, time and instret counters readable in S- and U-mode (Linux 6.1 does
        not set scounteren itself), one PMP entry granting all memory; only hart 0 runs, the
        others are STOPPED until the SBI's HSM starts them. An S-mode ECALL is then a hypercall."""
        self.cfg[core.CF_SBI] = 1
        for h in range(self.nharts):
            self.hs[h, core.HS_PRIV] = 1
            medeleg = 0xB1FF | (core.MEDELEG_H if self.h else 0)  # with H: what a hypervisor in HS handles too
            for num, value in ((core.MEDELEG, medeleg), (core.MIDELEG, 0x222), (core.MCOUNTEREN, 7),
                               (core.SCOUNTEREN, 7), (core.PMPADDR0, (1 << 54) - 1), (core.PMPCFG0, 0x1F)):
                self.write_csr(h, num, value)
            self.hs[h, core.HS_WFI] = core.HART_STOPPED if h else 0

    def _trap_reset(self, guest_ram: int) -> None:
        """Trap and emulate: the harts really run in U-mode (the guest's kernel in vS, the start of the builtin
        SBI's S-mode), each with a pool of shadow page tables above the guest's RAM (which needs the SBI in the
        VMM: there is no M-mode firmware under a monitor)."""
        pool = core.TM_POOL_PAGES * 4096
        if not self.sbi:
            raise ConfigError("trap and emulate needs the VMM's SBI (--bios builtin)")
        if guest_ram <= 0 or guest_ram % 4096 or guest_ram + self.nharts * pool > self.mem.size:
            raise ConfigError(f"trap and emulate: {self.mem.size} bytes of RAM hold no {guest_ram}-byte guest and "
                              f"{self.nharts} shadow pools of {pool} bytes")
        self.cfg[core.CF_TRAP] = 1
        self.cfg[core.CF_GUEST_RAM] = guest_ram
        for h in range(self.nharts):
            self.csr[h, core.TM_POOL] = guest_ram + h * pool
            self.csr[h, core.TM_NEXT] = guest_ram + h * pool + 3 * 4096
            self.csr[h, core.TM_SATP] = 0
            self.csr[h, core.TM_ZAP] = 1
            self.hs[h, core.HS_VPRIV] = 1
            self.hs[h, core.HS_PRIV] = 0

    # ---- configuration -----------------------------------------------------------------
    def add_mmio_region(self, base: int, size: int) -> None:
        """Make guest accesses to ``[base, base+size)`` exit to Python as MMIO_READ/MMIO_WRITE."""
        n = int(self.cfg[core.CF_NMMIO])
        if size <= 0 or base < 0:
            raise ConfigError(f"bad MMIO region {base:#x}+{size:#x}")
        if n >= MAX_MMIO:
            raise ConfigError(f"too many MMIO regions (max {MAX_MMIO})")
        if base < self.mem.end and self.mem.base < base + size:
            raise ConfigError(f"MMIO region {base:#x}+{size:#x} overlaps RAM")
        self.mmio[n, :2] = (base, size)
        self.cfg[core.CF_NMMIO] = n + 1

    def add_fast_mmio(self, addr: int, size: int, sink: Callable[[int], None] | None = None,
                      bulk: Callable[[bytes], None] | None = None) -> int:
        """A device register the core serves without an exit (coalesced MMIO, as KVM's); returns its cell.

        With ``sink``, stores of exactly ``size`` bytes at ``addr`` are buffered and handed to ``sink(value)``
        in order before the next exit of any kind (so before any other device access); without, loads of
        it return the value last given to :meth:`set_fast_mmio`. A cell starts disabled (accesses exit as
        usual): the device enables it while the register has no side effects beyond those. ``bulk`` (byte
        registers only) takes a run of consecutive buffered stores to this cell as one ``bytes`` (a UART's
        transmit register: one call per run instead of one per byte).
        """
        n = len(self._fast_sinks)
        if n >= core.MAX_FAST:
            raise ConfigError(f"too many fast MMIO registers (max {core.MAX_FAST})")
        if size not in (1, 2, 4, 8) or addr < 0:
            raise ConfigError(f"bad fast MMIO register {addr:#x}+{size}")
        if not any(b <= addr and addr + size <= b + sz for b, sz in self.mmio[: int(self.cfg[core.CF_NMMIO]), :2]):
            raise ConfigError(f"fast MMIO register {addr:#x} is not inside an MMIO region")
        self._drain_fast()
        self.mmio[core.FAST0 + n] = (addr, size, core.FAST_OFF, 0)
        self._fast_sinks.append(sink)
        self._fast_bulk.append(bulk if size == 1 else None)
        self.cfg[core.CF_NFAST] = n + 1
        return n

    def set_fast_mmio(self, cell: int, enabled: bool, value: int = 0) -> None:
        """Enable or disable a fast cell; a read shadow's loads return ``value``.

        Devices call it while handling an access (the ring is empty then: it is drained before every
        exit), a read shadow also from the I/O thread (one 64-bit store the core reads whole).
        """
        if not 0 <= cell < len(self._fast_sinks):
            raise ValueError(f"no fast MMIO cell {cell}")
        row = self.mmio[core.FAST0 + cell]
        if not enabled:
            row[2] = core.FAST_OFF
        row[3] = _s64(value)
        if enabled:
            row[2] = core.FAST_SHADOW if self._fast_sinks[cell] is None else core.FAST_BUFFER

    def _drain_fast(self) -> None:
        """Hand the buffered writes to their devices, oldest first (before the caller sees the exit)."""
        n = int(self.cfg[core.CF_FCOUNT])
        if not n:
            return
        ring = self.mmio[core.FRING0 : core.FRING0 + n, :2]
        self.cfg[core.CF_FCOUNT] = 0
        self.fast_writes += n
        cells = ring[:, 0]
        first = int(cells[0])
        bulk = self._fast_bulk[first]
        if bulk is not None and (cells == first).all():  # the usual case: one register's run (console output)
            bulk((ring[:, 1] & 0xFF).astype(np.uint8).tobytes())
            return
        sinks = self._fast_sinks
        for cell, value in ring.tolist():
            sinks[cell](value)  # type: ignore[misc]

    @property
    def tohost(self) -> int | None:
        """Physical address of the HTIF ``tohost`` word (stores to it exit with HTIF), or None."""
        v = int(self.cfg[core.CF_TOHOST])
        return None if v < 0 else v

    @tohost.setter
    def tohost(self, addr: int | None) -> None:
        if addr is not None and not self.mem.contains(addr, 8):
            raise ConfigError(f"tohost {addr:#x} is not in RAM")
        self.cfg[core.CF_TOHOST] = -1 if addr is None else addr
        self.tlbt[:] = 0

    # ---- state -----------------------------------------------------------------------
    def save(self) -> dict:
        """Every hart's registers, CSRs, privilege, reservation, WFI and timer, and the time base.

        Call between runs (never with an MMIO load waiting for its value). Not saved: the TLBs and the
        translated code, which :meth:`restore` drops.
        """
        if self._pending_read is not None:
            raise StateError("the engine is in the middle of an MMIO read: save between runs")
        self._drain_fast()
        self._sync_time()
        harts = []
        for h in range(self.nharts):
            nz = np.flatnonzero(self.csr[h])
            harts.append({
                "x": [int(v) for v in self.x[h]], "f": [int(v) for v in self.f[h]],
                "csr": [[int(i), int(self.csr[h, i])] for i in nz],
                **{k: int(self.hs[h, i]) for k, i in _HS_SAVED.items()},
                **{k: int(self.hs[h, i]) for k, i in _HS_OPTIONAL.items() if self.hs[h, i]},
                "irq": int(self.irq[h]), "msip": int(self.msip[h]), "mtimecmp": int(self.mtimecmp[h]),
            })
        return record(self, nharts=self.nharts, ram_base=self.mem.base, ram_size=self.mem.size,
                      mtime=_u64(self.ctime[core.CT_MTIME]), mtime_frac=int(self.ctime[core.CT_FRAC]),
                      rate=int(self.cfg[core.CF_RATE]), tohost=int(self.cfg[core.CF_TOHOST]),
                      fromhost=self.fromhost, sbi=int(self.sbi), harts=harts,
                      **({"trap": 1} if self.trap else {}))

    def restore(self, state: dict) -> None:
        """Take a saved state (same harts and RAM layout). Guest time goes on from the saved ``mtime``;
        TLBs and translated code are dropped and rebuilt as the guest runs."""
        f = fields(self, state)
        trap = f.int("trap", 0, 1) if "trap" in state else 0
        if trap != int(self.trap):
            raise StateError("riscv-engine state: saved " + ("under" if trap else "without") + " trap and emulate, "
                             "restored into a machine " + ("with" if self.trap else "without") + " --mode trap")
        f.int("nharts", self.nharts, self.nharts)
        f.int("ram_base", self.mem.base, self.mem.base)
        f.int("ram_size", self.mem.size, self.mem.size)
        mtime = f.int("mtime", 0, (1 << 64) - 1)
        frac, rate = f.int("mtime_frac", *_I64), f.int("rate", 1, 1 << 40)
        tohost, fromhost = f.int("tohost", -1, (1 << 64) - 1), f.opt_int("fromhost")
        sbi = f.opt_int("sbi") or 0
        if sbi != int(self.sbi):
            raise StateError("riscv-engine state: saved with the SBI " + ("in the VMM (--bios builtin)" if sbi else
                             "in guest firmware") + ", restored into a machine " + ("with" if self.sbi else
                             "without") + " --bios builtin")
        harts = f.list("harts", self.nharts)
        x = np.zeros_like(self.x)
        fr = np.zeros_like(self.f)
        csr = np.zeros_like(self.csr)
        hs = self.hs.copy()
        irq, msip, mtimecmp = self.irq.copy(), self.msip.copy(), self.mtimecmp.copy()
        for h, hst in enumerate(harts):
            if not isinstance(hst, dict):
                raise StateError(f"riscv-engine state: hart {h} must be an object")
            hf = fields(self, {"kind": self.STATE_KIND, "version": self.STATE_VERSION, **hst})
            x[h] = hf.ints("x", 32, *_I64)
            if x[h, 0]:
                raise StateError(f"riscv-engine state: hart {h} has x0 = {int(x[h, 0])}")
            fr[h] = hf.ints("f", 32, *_I64)
            for pair in hf.list("csr"):
                if (not isinstance(pair, list) or len(pair) != 2 or not all(type(v) is int for v in pair)
                        or not 0 <= pair[0] < 4096 or not _I64[0] <= pair[1] <= _I64[1]):
                    raise StateError(f"riscv-engine state: hart {h}: bad CSR entry {pair!r}")
                csr[h, pair[0]] = pair[1]
            for k, i in _HS_SAVED.items():
                hs[h, i] = hf.int(k, *_I64)
            for k, i in _HS_OPTIONAL.items():  # (saved only when 1)
                hs[h, i] = hf.int(k, 0, 1) if k in hst else 0
            if self.trap:
                csr[h, core.TM_ZAP] = 1  # the shadows are rebuilt from the guest's tables
            if hs[h, core.HS_V] and (not csr[h, core.VIRT_CSR] or hs[h, core.HS_PRIV] == 3):
                raise StateError(f"riscv-engine state: hart {h} has V = {int(hs[h, core.HS_V])} (H extension "
                                 f"{'on' if csr[h, core.VIRT_CSR] else 'off'}, privilege {int(hs[h, core.HS_PRIV])})")
            if bool(csr[h, core.VIRT_CSR]) != self.h:
                raise StateError("riscv-engine state: saved " + ("with" if csr[h, core.VIRT_CSR] else "without")
                                 + " the H extension, restored into a CPU " + ("with" if self.h else "without")
                                 + " it (--cpu rv64,h=on)")
            if hs[h, core.HS_WFI] not in (0, 1, core.HART_STOPPED):
                raise StateError(f"riscv-engine state: hart {h} has wait state {int(hs[h, core.HS_WFI])}")
            if hs[h, core.HS_PRIV] not in (0, 1, 3):
                raise StateError(f"riscv-engine state: hart {h} in privilege mode {int(hs[h, core.HS_PRIV])}")
            if not -1 <= hs[h, core.HS_RESV] < self.mem.size:
                raise StateError(f"riscv-engine state: hart {h} reserves {int(hs[h, core.HS_RESV])} outside RAM")
            irq[h], msip[h] = hf.int("irq", *_I64), hf.int("msip", 0, 1)
            mtimecmp[h] = hf.int("mtimecmp", *_I64)
        if tohost >= 0 and not self.mem.contains(tohost, 8):
            raise StateError(f"riscv-engine state: tohost {tohost:#x} is not in RAM")
        self._drain_fast()
        self.x[:], self.f[:], self.csr[:], self.hs[:] = x, fr, csr, hs
        self.irq[:], self.msip[:], self.mtimecmp[:] = irq, msip, mtimecmp
        for h in range(self.nharts):
            self.hs[h, core.HS_MMIO_RD] = 0
            self.hs[h, core.HS_MMIO_KIND] = 0
        self.cfg[core.CF_NRESV] = int((self.hs[:, core.HS_RESV] >= 0).sum())
        self.cfg[core.CF_RATE] = rate
        self.cfg[core.CF_TOHOST] = tohost
        self.fromhost = fromhost
        self.ctime[core.CT_MTIME] = _s64(mtime)
        self.ctime[core.CT_FRAC] = frac
        self._time_base = _s64(mtime)  # the host clock takes over from the saved guest time
        self._t0 = time.monotonic()
        if self._paused_at is not None:
            self._paused_at = self._t0
        self._pending_read = None
        self.tlbt[:] = 0
        self.jit.drop_all()

    # ---- dirty log (live migration) ----------------------------------------------------
    def dirty_log_clear(self) -> None:
        """Start a new dirty log: every page clean, every hart's store TLB empty, so the first store to any
        page takes the slow path that logs it (the write-protection trick of hardware dirty logging, with
        the software TLB). Call between runs, with the guest's I/O held."""
        self.mem.dirty[:] = 0
        self.tlbt[:, 2, :] = 0

    def dirty_log_fetch(self) -> np.ndarray:
        """The pages written since the last clear (bool per page), and a clear."""
        d = self.mem.dirty != 0
        self.dirty_log_clear()
        return d

    # ---- running ---------------------------------------------------------------------
    def _host_mtime(self) -> int:
        """mtime as the host clock says it is now (ticks since the engine was created)."""
        return self._time_base + int((time.monotonic() - self._t0) * TIMEBASE_HZ)

    def _sync_time(self) -> None:
        if self.deterministic:
            return
        host = self._host_mtime()
        if host > self.ctime[core.CT_MTIME]:
            self.ctime[core.CT_MTIME] = host

    def run(self, budget: int, vcpu: int = 0) -> Exit:
        """Execute up to ``budget`` instructions across all harts; return why it stopped (``vcpu`` is ignored:
        this engine runs every hart in one call, and the exit names the hart)."""
        ex = self.run_raw(budget)
        return Exit(ex.reason, ex.vcpu, ex.addr, ex.size, ex.value)

    def _execute(self, run_harts: Callable, budget: int, t: float) -> None:
        """The core calls of :meth:`run` and :meth:`run_raw`: start the JIT's translator, run, translate
        queued regions at once when the JIT is synchronous, and adapt the instruction-to-time rate."""
        self.jit.start()
        n = run_harts(*self.core_args(budget))
        while not self.jit.background and self.jit.pending():
            self.jit.service()
            if self.out[0] != core.EXIT_BUDGET or n >= budget:
                break
            n += run_harts(*self.core_args(budget - n))
        if not self.deterministic and n > 10000:
            rate = int((time.monotonic() - t) * TIMEBASE_HZ * 65536 / n)
            self.cfg[core.CF_RATE] = max(1, (int(self.cfg[core.CF_RATE]) * 3 + rate) // 4)
        if self.cfg[core.CF_FCOUNT]:
            self._drain_fast()

    def core_args(self, budget: int) -> tuple:
        """The arguments of ``core.run_harts`` for this engine (the one place that lists them)."""
        return (
            int(budget), self.x, self.f, self.csr, self.hs, self.irq, self._R, self.cfg, self.mmio, self.msip,
            self.mtimecmp, self.ctime, self.tlbt, self.tlbo, self._ctab, self.out, self._jt,
        )

    def complete_read(self, vcpu: int, value: int) -> None:
        """Deliver the value of the pending MMIO load of ``vcpu`` (sign/zero extended as the instruction says)."""
        ex = self._pending_read
        if ex is None:
            raise RuntimeError("no MMIO read is pending")
        self._pending_read = None
        h = ex.vcpu
        rd = int(self.hs[h, core.HS_MMIO_RD])
        kind = int(self.hs[h, core.HS_MMIO_KIND])
        bits = ex.size * 8
        v = int(value) & ((1 << bits) - 1)
        if kind >= 8:  # FLW / FLD
            if kind == 10:
                v |= 0xFFFF_FFFF_0000_0000
            self.f[h, rd] = _s64(v)
            return
        if kind in (0, 1, 2, 3) and v >> (bits - 1):
            v -= 1 << bits
        if rd:
            self.x[h, rd] = _s64(v)

    def complete_mmio_read(self, value: int) -> None:
        """:meth:`complete_read` for the hart whose read is pending (engine-level tests and tools)."""
        self.complete_read(self._pending_read.vcpu if self._pending_read is not None else 0, value)

    def progress(self) -> int:
        """Instructions retired plus traps taken, over all harts (what an instruction limit counts: a trap
        storm retires nothing yet must end)."""
        hs = self.hs
        return int(hs[:, core.HS_INSTRET].sum() + hs[:, core.HS_TRAPS].sum())

    def is_htif(self, ex: Exit | RawExit) -> bool:
        """Whether ``ex`` is a store to the HTIF ``tohost`` word."""
        return ex.reason is ExitReason.MMIO_WRITE and ex.addr == self.cfg[core.CF_TOHOST] and ex.size == 8

    def pause_clock(self) -> None:
        """The VM is paused: guest time stops (the host clock keeps going without it)."""
        if self._paused_at is None:
            self._sync_time()
            self._paused_at = time.monotonic()

    def resume_clock(self, catch_up: bool = False) -> None:
        """Guest time goes on from where it stopped; with ``catch_up`` it jumps by the time spent paused."""
        if self._paused_at is None:
            return
        if not catch_up:
            self._t0 += time.monotonic() - self._paused_at
        self._paused_at = None

    def close(self) -> None:
        """Stop the JIT translator (nothing else is held outside the process)."""
        close = getattr(self.jit, "close", None)
        if close is not None:
            close()

    def request_exit(self) -> None:
        """Ask a running ``run()`` (in another thread) to return at the next slice boundary."""
        self.cfg[core.CF_STOP] = 1

    def set_irq(self, hart: int, bit: int, level: bool) -> None:
        """Drive an external interrupt line of ``hart``: MEIP (11) or SEIP (9)."""
        if bit not in (9, 11):
            raise ValueError("only MEIP (11) and SEIP (9) are external lines")
        if level:
            self.irq[hart] |= 1 << bit
        else:
            self.irq[hart] &= ~(1 << bit)
        if level and self.hs[hart, core.HS_WFI]:
            self.request_exit()

    def idle(self, seconds: float) -> None:
        """Every hart waited ``seconds`` for an interrupt: guest time moves on by at least that much.

        mtime runs on the host clock and, between syncs, on an instructions-to-time rate that can run
        ahead of it; without this, an idle guest would wait for the host clock to catch up first.
        """
        if self.deterministic or seconds <= 0:
            return
        self.ctime[core.CT_MTIME] = max(int(self.ctime[core.CT_MTIME]) + int(seconds * TIMEBASE_HZ), self._host_mtime())

    def next_timer_deadline(self) -> float | None:
        """Seconds from now until the earliest timer compare of a running hart with its timer interrupt enabled
        (MTIE; STIE when the VMM is the SBI), or None."""
        best = None
        mt = _u64(self.ctime[core.CT_MTIME])
        bit = 5 if self.sbi else 7
        for h in range(self.nharts):
            if ((int(self.csr[h, core.MIE]) >> bit) & 1 and self.mtimecmp[h] != -1
                    and self.hs[h, core.HS_WFI] != core.HART_STOPPED):
                d = max(0, _u64(self.mtimecmp[h]) - mt)
                best = d if best is None else min(best, d)
        return None if best is None else best / TIMEBASE_HZ

    # ---- state access ----------------------------------------------------------------
    def get_reg(self, hart: int, i: int) -> int:
        """Integer register ``x<i>`` of ``hart`` as an unsigned 64-bit value."""
        return _u64(self.x[hart, i])

    def set_reg(self, hart: int, i: int, value: int) -> None:
        """Set ``x<i>`` (writes to x0 are ignored)."""
        if i:
            self.x[hart, i] = _s64(value)

    def get_freg(self, hart: int, i: int) -> int:
        """Raw 64-bit pattern of ``f<i>``."""
        return _u64(self.f[hart, i])

    def set_freg(self, hart: int, i: int, value: int) -> None:
        self.f[hart, i] = _s64(value)

    def pc(self, hart: int = 0) -> int:
        """Program counter of ``hart``."""
        return _u64(self.hs[hart, core.HS_PC])

    def set_pc(self, hart: int, value: int) -> None:
        self.hs[hart, core.HS_PC] = _s64(value)

    def priv(self, hart: int = 0) -> int:
        """Current privilege level of ``hart`` (0 U, 1 S, 3 M) as the guest sees it (under trap and emulate the
        hart is really in U-mode; this is the guest's virtual privilege)."""
        return int(self.hs[hart, core.HS_VPRIV if self.trap else core.HS_PRIV])

    def read_csr(self, hart: int, num: int) -> int:
        """Read a CSR as M-mode would (raises ValueError for a CSR that does not exist)."""
        exc, v = core.csr_read(hart, num, 3, self.csr[hart], self.hs, self.irq, self.ctime,
                               int(self.hs[hart, core.HS_INSTRET]))
        if exc >= 0:
            raise ValueError(f"no such CSR {num:#x}")
        return _u64(v)

    def write_csr(self, hart: int, num: int, value: int) -> None:
        """Write a CSR as M-mode would (WARL masks apply)."""
        self.read_csr(hart, num)
        core.csr_write(hart, num, _s64(value), 3, self.csr[hart], self.hs, self.ctime,
                       int(self.hs[hart, core.HS_INSTRET]))
        self.tlbt[hart] = 0

    # ---- the SBI in the VMM: hypercalls and hart states ------------------------------
    def hypercall_args(self, vcpu: int) -> tuple[int, ...]:
        """The SBI call ``vcpu`` made: (a0, ..., a5, FID in a6, extension ID in a7), unsigned."""
        return tuple(_u64(v) for v in self.x[vcpu, 10:18])

    def complete_hypercall(self, vcpu: int, result: tuple[int, ...]) -> None:
        """Return from the SBI call: ``(error, value)`` into a0/a1, ``(value,)`` into a0 only (legacy calls),
        ``()`` leaves the registers alone (the call moved the hart elsewhere: hart_stop, a non-retentive suspend)."""
        for i, v in enumerate(result[:2]):
            self.x[vcpu, 10 + i] = _s64(v)

    def hart_state(self, hart: int) -> str:
        """``running``, ``waiting`` (WFI or a retentive suspend) or ``stopped`` (SBI HSM)."""
        w = int(self.hs[hart, core.HS_WFI])
        return "stopped" if w == core.HART_STOPPED else "waiting" if w else "running"

    def start_hart(self, hart: int, pc: int, a0: int, a1: int) -> None:
        """Start a hart in S-mode at ``pc`` as SBI hart_start (and a non-retentive resume) leave it: a0, a1 set,
        ``satp`` = 0, ``sstatus.SIE`` = 0, its TLB empty."""
        self.hs[hart, core.HS_PC] = _s64(pc)
        self.hs[hart, core.HS_PRIV] = 0 if self.trap else 1
        if self.trap:
            self.hs[hart, core.HS_VPRIV] = 1
            self.csr[hart, core.TM_SATP] = 0
            self.csr[hart, core.TM_ZAP] = 1
        self.x[hart, 10] = _s64(a0)
        self.x[hart, 11] = _s64(a1)
        self.csr[hart, core.SATP] = 0
        self.csr[hart, core.MSTATUS] &= ~2
        self.tlbt[hart] = 0
        self.hs[hart, core.HS_WFI] = 0

    def flush_tlb(self, hart: int) -> None:
        """Empty a hart's software TLB (a remote sfence.vma), and its shadow page tables under trap and
        emulate (dropped before it runs again)."""
        self.tlbt[hart] = 0
        if self.trap:
            self.csr[hart, core.TM_ZAP] = 1

    def stop_hart(self, hart: int) -> None:
        """Stop a hart until :meth:`start_hart` (no interrupt wakes it)."""
        self.hs[hart, core.HS_WFI] = core.HART_STOPPED

    def suspend_hart(self, hart: int) -> None:
        """Let a hart wait until an enabled interrupt is pending (as WFI; SBI's retentive suspend)."""
        self.hs[hart, core.HS_WFI] = 1

    def translate(self, hart: int, va: int) -> int | None:
        """The physical address of ``va`` through ``hart``'s current ``satp`` (Sv39/Sv48; identity in M-mode or
        with translation off), or None when no valid leaf maps it. For the VMM and debuggers: it walks the
        guest's tables in RAM, sets no A/D bits and checks no permissions."""
        satp = _u64(self.csr[hart, core.TM_SATP if self.trap else core.SATP])
        mode = satp >> 60
        if self.priv(hart) == 3 or mode == 0:
            return va & _M64
        levels = {8: 3, 9: 4}.get(mode)
        if levels is None:
            return None
        table = (satp & ((1 << 44) - 1)) << 12
        for i in range(levels - 1, -1, -1):
            a = table + ((va >> (12 + 9 * i)) & 0x1FF) * 8
            if not self.mem.contains(a, 8):
                return None
            pte = self.mem.read_u64(a)
            if not pte & 1 or (pte & 6) == 4:
                return None
            ppn = (pte >> 10) & ((1 << 44) - 1)
            if pte & 0xA:  # R or X: a leaf (a superpage above level 0)
                shift = 12 + 9 * i
                return ((ppn << 12) & ~((1 << shift) - 1)) | (va & ((1 << shift) - 1))
            table = ppn << 12
        return None

    # ---- debugging (the GDB stub) -----------------------------------------------------
    def gdb_target(self) -> object:
        """Registers, memory and breakpoint instructions as the GDB stub sees them."""
        from virtkit.engines.riscv.gdb import RiscvGdbTarget

        return RiscvGdbTarget(self)

    def set_guest_debug(self, enabled: bool) -> None:
        """Guest debug mode (KVM_GUESTDBG_USE_SW_BP): an ``ebreak`` exits as DEBUG, at the ebreak, instead of
        raising the breakpoint exception."""
        self.cfg[core.CF_DEBUG] = int(enabled)

    def step(self, hart: int) -> RawExit:
        """Run exactly one instruction of ``hart`` (or take the interrupt pending there) with the JIT off; the
        other harts do not run. A hart waiting for an interrupt runs nothing (HALT)."""
        cfg = self.cfg
        thr = int(cfg[core.CF_JIT])
        cfg[core.CF_JIT] = 0
        cfg[core.CF_STEP_HART] = hart + 1
        try:
            return self.run_raw(1)
        finally:
            cfg[core.CF_JIT] = thr
            cfg[core.CF_STEP_HART] = 0

    #: what a debugger's watchpoint watches -> the trigger's load/store/execute bits
    WATCH_KINDS = {"read": 1, "write": 2, "access": 3, "exec": 4}

    def set_watchpoint(self, slot: int, addr: int, length: int, kind: str) -> None:
        """Arm debug trigger ``slot`` on every hart for a debugger (dmode set, action "enter Debug Mode": the
        access exits as DEBUG before it happens, the guest cannot change the trigger): ``length`` bytes at
        ``addr`` (a NAPOT range when it is a power of two and aligned, else the first byte)."""
        from virtkit.engines.riscv import trigger as tr

        if not 0 <= slot < tr.NTRIG:
            raise ValueError(f"no trigger {slot} (there are {tr.NTRIG})")
        bits = self.WATCH_KINDS[kind]
        match, t2 = 0, addr
        if length > 1 and length & (length - 1) == 0 and addr % length == 0:
            match, t2 = 1, addr | (length // 2 - 1)
        t1 = tr.MC6 | tr.DMODE | (1 << 12) | (match << 7) | (1 << 6) | (1 << 4) | (1 << 3) | bits
        self.csr[:, tr.T1 + slot] = t1
        self.csr[:, tr.T2 + slot] = _s64(t2)
        self._trigger_summary()

    def clear_watchpoint(self, slot: int) -> None:
        """Disarm a trigger :meth:`set_watchpoint` armed."""
        from virtkit.engines.riscv import trigger as tr

        self.csr[:, tr.T1 + slot] = tr.DISABLED
        self.csr[:, tr.T2 + slot] = 0
        self._trigger_summary()

    def watchpoint_slots(self) -> list[int]:
        """The triggers a debugger may take (the highest first; the guest tends to use the low ones)."""
        from virtkit.engines.riscv import trigger as tr

        return list(range(tr.NTRIG - 1, -1, -1))

    def set_triggers_enabled(self, enabled: bool) -> None:
        """Triggers off lets a debugger step over the access its watchpoint stopped."""
        self.cfg[core.CF_TRIG_OFF] = 0 if enabled else 1

    def _trigger_summary(self) -> None:
        from virtkit.engines.riscv import trigger as tr

        t1 = self.csr[:, tr.T1 : tr.T1 + tr.NTRIG]
        on = ((t1 >> 60) & 0xF) == 6
        self.csr[:, tr.TARMED] = np.bitwise_or.reduce(np.where(on, t1 & 7, 0), axis=1)
        self.tlbt[:] = 0  # watched pages are never cached

    def set_priv(self, hart: int, priv: int) -> None:
        """Move ``hart`` to privilege ``priv`` (0, 1, 3) as a debugger may; its TLB is dropped."""
        if priv not in (0, 1, 3):
            raise ValueError(f"no privilege mode {priv}")
        self.hs[hart, core.HS_PRIV] = priv
        self.tlbt[hart] = 0

    def sbi_counts(self) -> dict[str, int]:
        """SBI calls served inside the core, by extension."""
        return {"TIME": int(self.cfg[core.CF_SBI_TIME]), "IPI": int(self.cfg[core.CF_SBI_IPI]),
                "RFENCE": int(self.cfg[core.CF_SBI_RFENCE]), "legacy": int(self.cfg[core.CF_SBI_PUTCHAR])}

    def sbi_console(self, cell: int | None) -> None:
        """The fast MMIO cell (:meth:`add_fast_mmio`) of the console's transmit register: SBI legacy putchar
        stores its byte there, inside the core, whenever the device has the cell enabled."""
        if cell is not None and not 0 <= cell < len(self._fast_sinks):
            raise ValueError(f"no fast MMIO cell {cell}")
        self.cfg[core.CF_SBI_CONSOLE] = 0 if cell is None else cell + 1

    @property
    def mtime(self) -> int:
        """The CLINT mtime (10 MHz ticks)."""
        return _u64(self.ctime[core.CT_MTIME])

    def _core_calls(self) -> dict[str, tuple]:
        """Sample arguments of every function in CORE_FUNCTIONS, as this engine passes them (AOT signatures)."""
        return {
            "run_harts": self.core_args(0),
            "csr_read": (0, core.MSCRATCH, 3, self.csr[0], self.hs, self.irq, self.ctime, 0),
            "csr_write": (0, core.MSCRATCH, 0, 3, self.csr[0], self.hs, self.ctime, 0),
            "build_ctab": (),
        }

    def traps_by_cause(self) -> dict[str, int]:
        """Traps the harts took (into the guest's own handlers), by cause, over all harts."""
        out = {}
        exc = self.csr[:, core.TRAPS_EXC:core.TRAPS_EXC + 16].sum(axis=0)
        intr = self.csr[:, core.TRAPS_INT:core.TRAPS_INT + 16].sum(axis=0)
        for code, n in enumerate(exc):
            if n:
                out[EXCEPTIONS.get(code, f"exception {code}")] = int(n)
        for code, n in enumerate(self.csr[:, core.TRAPS_H:core.TRAPS_H + 4].sum(axis=0)):
            if n:
                out[EXCEPTIONS[20 + code]] = int(n)
        for code, n in enumerate(intr):
            if n:
                out[INTERRUPTS.get(code, f"interrupt {code}")] = int(n)
        return out

    def stats(self) -> dict:
        """Instructions retired (total, per hart), traps taken (and by cause) and exits by reason."""
        per = [int(v) for v in self.hs[:, core.HS_INSTRET]]
        return {
            "instructions": sum(per),
            "per_hart": per,
            "traps": int(self.hs[:, core.HS_TRAPS].sum()),
            "traps_by_cause": self.traps_by_cause(),
            "jit_instructions": int(self.hs[:, core.HS_JIT].sum()),
            "jit_calls": int(self.hs[:, core.HS_JIT_CALLS].sum()),
            "jit": self.jit.stats(),
            "exits": dict(self._exits),
            "fast_mmio_reads": int(self.cfg[core.CF_FREADS]),
            "fast_mmio_writes": self.fast_writes,
            "guest_time": _u64(self.ctime[core.CT_MTIME]) / TIMEBASE_HZ,
            **({"sbi_in_core": self.sbi_counts()} if self.sbi else {}),
            **({"monitor": self.monitor_counts()} if self.trap else {}),
        }

    def monitor_counts(self) -> dict[str, int]:
        """Trap and emulate: what the monitor did, over all harts (privileged instructions it emulated, SBI
        calls, shadow page-table entries filled, the guest's own page faults it handed back, shadow drops)."""
        cols = {"privileged_instructions": core.TM_PRIV_TRAPS, "sbi_calls": core.TM_SBI,
                "shadow_fills": core.TM_FILLS, "guest_page_faults": core.TM_GUEST_FAULTS,
                "shadow_drops": core.TM_ZAPS}
        return {k: int(self.csr[:, i].sum()) for k, i in cols.items()}

    # ---- the run loop's fast path (machine/vm.py) -----------------------------------------------
    _raw_synced = float("-inf")  # time.monotonic() of run_raw's last host-clock sync
    _raw_call: Callable | None = None  # run_harts as run_raw calls it (see _direct_entry)

    def run_raw(self, budget: int, vcpu: int = 0) -> RawExit:
        """:meth:`run` for the vCPU loop's hot path: the same exit, cheaper (a slotted :class:`RawExit`, no enum
        call, the host clock sampled at most every ``SYNC_INTERVAL`` s); the core calls are :meth:`_execute`."""
        if self._pending_read is not None:
            raise RuntimeError("complete_read() must be called after an MMIO_READ exit")
        t = time.monotonic()
        if t - self._raw_synced >= SYNC_INTERVAL:
            self._sync_time()
            self._raw_synced = t
        run_harts = self._raw_call
        if run_harts is None:
            run_harts = self._raw_call = _direct_entry(core.run_harts, self.core_args(budget))
        self._execute(run_harts, budget, t)
        code, hart, addr, size, value = self.out.tolist()[:5]
        if code == _HTIF:  # a store to tohost: the HTIF device's register
            addr, size = int(self.cfg[core.CF_TOHOST]), 8
        ex = RawExit(_REASONS[code], hart, addr & _M64, size, value & _M64)
        self._exits[ex.reason._name_] += 1
        if code == _MMIO_READ:
            self._pending_read = ex  # complete_read() reads its hart and size
        return ex


def _direct_entry(fn: Callable, args: tuple) -> Callable:
    """The compiled entry point of the Numba dispatcher ``fn`` for exactly the types of ``args`` (what the
    dispatcher calls after resolving the types on every call: ~3 us for run_harts' 17 arguments), or ``fn``
    itself (the AOT core, or no overload compiled yet). The engine's arrays keep their types for its lifetime."""
    overloads = getattr(fn, "overloads", None)
    typeof = getattr(fn, "typeof_pyval", None)
    if overloads is None or typeof is None:
        return fn
    cres = overloads.get(tuple(typeof(a) for a in args))
    return fn if cres is None else cres.entry_point


#: run_raw() samples the host clock at most this often (s): mtime lags it by at most that much in between.
SYNC_INTERVAL = 0.0005
_M64 = (1 << 64) - 1
_MMIO_READ = int(ExitReason.MMIO_READ)
_HTIF = core.EXIT_HTIF


def aot_exports() -> dict[str, tuple[Callable, tuple]]:
    """(AOT build) Each core function the engine calls, with live sample arguments from a small engine."""
    from virtkit.engines.riscv.corecache import load_core

    jit = load_core()
    coresel.set_warm_up(False)
    try:
        eng = RiscvEngine(GuestMemory(1 << 16, 0x8000_0000))
    finally:
        coresel.set_warm_up(True)
    return {name: (getattr(jit, name), args) for name, args in eng._core_calls().items()}
