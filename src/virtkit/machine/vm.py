"""The run loop: engine exits -> devices, in a vCPU thread, with host I/O in an event-loop thread.

The vCPU thread calls ``engine.run(budget)`` (which releases the GIL), dispatches each MMIO exit
on the :class:`~virtkit.machine.bus.Bus` and resumes; when every hart waits for an interrupt
(WFI) it sleeps until a device raises a line or the next timer deadline. The I/O thread
(``selectors``) serves host file descriptors (the terminal, TAP devices...) so a guest that
computes never starves its devices. Interrupt lines may be driven from either thread:
:meth:`Vm.set_irq` serialises them and wakes a sleeping vCPU.

Engine interface used (``virtkit.engines.riscv.engine.RiscvEngine``, later the KVM engine):
``run(budget) -> Exit(reason, hart, addr, size, value)`` (or ``run_raw(budget)``, the same for less, when
the engine has it), ``complete_mmio_read(v)``,
``set_irq(hart, bit, level)``, ``next_timer_deadline()``, ``request_exit()``, ``stats()``; optionally
``idle(seconds)`` (told how long every hart slept in WFI) and ``add_fast_mmio``/``set_fast_mmio``
(coalesced MMIO: device registers the engine serves without an exit).
"""

from __future__ import annotations

import os
import selectors
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from virtkit.machine.bus import Bus

BUDGET = 500_000  # instructions per run() call: bounds the latency of host-side events
MAX_IDLE_SLEEP = 0.05  # seconds: a WFI sleep re-checks at least this often
#: The flushers also run every this many MMIO exits: a guest that prints, then busy-polls a device
#: (a prompt, then LSR until a key arrives) never spends its budget nor idles, yet its output must show.
FLUSH_EVERY = 512


@dataclass
class RunResult:
    """How a VM run ended: ``poweroff``, ``reset``, ``fail`` (with ``code``), ``stopped`` or ``error``."""

    reason: str
    code: int = 0
    message: str = ""
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_status(self) -> int:
        """The process exit status a front end should return."""
        return {"poweroff": 0, "reset": 0, "stopped": 0}.get(self.reason, self.code or 1)


class IoLoop:
    """A ``selectors`` event loop in its own thread; callbacks run in that thread."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._rd, self._wr = os.pipe()
        os.set_blocking(self._rd, False)
        self._sel.register(self._rd, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.errors: list[str] = []

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (in the I/O thread) whenever ``fd`` is readable."""
        with self._lock:
            self._sel.register(fd, selectors.EVENT_READ, callback)
        self._poke()

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd``."""
        with self._lock:
            try:
                self._sel.unregister(fd)
            except (KeyError, ValueError):
                pass
        self._poke()

    def _poke(self) -> None:
        try:
            os.write(self._wr, b"x")
        except (BlockingIOError, OSError):
            pass

    def start(self) -> None:
        """Start the I/O thread."""
        self._thread = threading.Thread(target=self._loop, name="virtkit-io", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop:
            events = self._sel.select(timeout=0.5)
            for key, _ in events:
                if key.data is None:
                    try:
                        os.read(self._rd, 4096)
                    except BlockingIOError:
                        pass
                    continue
                try:
                    key.data()
                except Exception as err:  # a device callback failing must not kill the loop
                    self.errors.append(f"{key.data!r}: {err!r}")
                    self.remove_reader(key.fd)

    def stop(self) -> None:
        """Stop the thread and close the loop."""
        self._stop = True
        self._poke()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sel.close()
        os.close(self._rd)
        os.close(self._wr)


class Vm:
    """A running machine: ``engine`` + ``bus`` + host I/O. Board code builds it and wires the devices."""

    def __init__(self, engine: Any, bus: Bus, budget: int = BUDGET) -> None:
        self.engine = engine
        self.bus = bus
        self.budget = budget
        self.io = IoLoop()
        self._irq_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._result: RunResult | None = None
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self.mmio_counts: Counter[str] = Counter()
        self.wfi_sleeps = 0
        self.wfi_seconds = 0.0
        self.vcpu_cpu_seconds = 0.0  # CPU time of the vCPU thread (known when the run has ended)
        self._idle: Callable[[float], None] | None = getattr(engine, "idle", None)  # guest time moves while idle
        self.irq_changes = 0
        #: Called on the vCPU thread between runs (e.g. RTC alarm polling).
        self.periodic: list[Callable[[], None]] = []
        #: Called on the vCPU thread whenever the guest stops running for a while (budget spent, every
        #: hart waiting for an interrupt, poweroff) and when the loop ends: hand batched output on.
        self.flushers: list[Callable[[], None]] = []
        self.closers: list[Callable[[], None]] = []

    # -- interrupts (any thread) --------------------------------------------------------------------
    def set_irq(self, hart: int, bit: int, level: int) -> None:
        """Drive an external interrupt line of ``hart`` (the PLIC's output) and wake the vCPU."""
        with self._irq_lock:
            self.engine.set_irq(hart, bit, bool(level))
            self.irq_changes += 1
        if level:
            self._wake.set()

    # -- power (from devices, on the vCPU thread) -----------------------------------------------------
    def power_event(self, kind: str, code: int = 0) -> None:
        """The guest asked to power off / reset / fail: stop the vCPU loop with that result."""
        if self._result is None:
            self._result = RunResult(kind, code)
        self._stop.set()

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the I/O thread and the vCPU thread."""
        self._t0 = time.monotonic()
        self.io.start()
        self._thread = threading.Thread(target=self._vcpu, name="virtkit-vcpu", daemon=True)
        self._thread.start()

    def stop(self, reason: str = "stopped") -> None:
        """Ask the vCPU to stop at the next exit (any thread)."""
        if self._result is None:
            self._result = RunResult(reason)
        self._stop.set()
        self._wake.set()
        self.engine.request_exit()

    def wait(self, timeout: float | None = None) -> RunResult | None:
        """Wait for the run to end; the result, or None on timeout."""
        if not self._done.wait(timeout):
            return None
        return self._result

    def run(self, timeout: float | None = None) -> RunResult:
        """Start, wait until the guest powers off (or ``timeout`` seconds), clean up; the result."""
        self.start()
        try:
            res = self.wait(timeout)
            if res is None:
                self.stop("timeout")
                res = self.wait(30)
        except KeyboardInterrupt:
            self.stop("stopped")
            res = self.wait(30)
        finally:
            self.close()
        assert res is not None
        return res

    def close(self) -> None:
        """Stop everything and release host resources (idempotent)."""
        if self._thread is not None and not self._done.is_set():
            self.stop()
            self._done.wait(30)
        if self.io is not None:
            self.io.stop()
            self.io = None  # type: ignore[assignment]
        for c in self.closers:
            try:
                c()
            except Exception:
                pass
        self.closers.clear()

    # -- the vCPU loop ------------------------------------------------------------------------------
    def _flush(self) -> None:
        for f in self.flushers:
            f()

    def _vcpu(self) -> None:
        eng, bus = self.engine, self.bus
        counts = self.mmio_counts
        stop = self._stop
        # an engine's run_raw() is run() returning a cheaper exit object (same fields), when it has one
        run, complete, budget = getattr(eng, "run_raw", None) or eng.run, eng.complete_mmio_read, self.budget
        # Engines name their exit reasons with their own enum: the loop learns the MMIO members by
        # name on first sight and then compares by identity (the per-exit fast path).
        mmio_read = mmio_write = None
        # the region of the last MMIO exit: consecutive exits nearly always hit the same device
        lo = hi = 0
        dev_read: Callable[[int, int], int] = bus.read
        dev_write: Callable[[int, int, int], None] = bus.write
        name = ""
        until_flush = FLUSH_EVERY
        cpu0 = time.thread_time()
        try:
            while not stop.is_set():
                ex = run(budget)
                r = ex.reason
                if r is not mmio_read and r is not mmio_write:
                    kind = r.name
                    if kind == "MMIO_READ":
                        mmio_read = r
                    elif kind == "MMIO_WRITE":
                        mmio_write = r
                    else:
                        self._other_exit(kind)
                        continue
                until_flush -= 1
                if not until_flush:
                    until_flush = FLUSH_EVERY
                    self._flush()
                addr = ex.addr
                if not lo <= addr < hi:
                    reg = bus.find(addr)
                    if reg is None:
                        bus.unhandled += 1
                        if r is mmio_read:
                            complete(0)
                        continue
                    lo, hi, name = reg.base, reg.base + reg.size, reg.name
                    dev_read, dev_write = reg.device.read, reg.device.write
                counts[name] += 1
                if r is mmio_read:
                    complete(dev_read(addr - lo, ex.size))
                else:
                    dev_write(addr - lo, ex.size, ex.value)
        except Exception as err:  # an engine or device bug: stop the VM with a message, keep the host alive
            if self._result is None:
                self._result = RunResult("error", 1, f"{type(err).__name__}: {err}")
        finally:
            try:
                self._flush()
            except Exception as err:
                if self._result is None:
                    self._result = RunResult("error", 1, f"{type(err).__name__}: {err}")
            if self._result is None:
                self._result = RunResult("stopped")
            self._result.seconds = time.monotonic() - self._t0
            self.vcpu_cpu_seconds = time.thread_time() - cpu0
            self._result.stats = self.stats()
            self._done.set()

    def _other_exit(self, kind: str) -> None:
        """Every exit but MMIO: WFI sleeps until an interrupt line or the next timer deadline."""
        self._flush()  # the guest stops producing output for now: let it out
        if kind == "WFI":
            deadline = self.engine.next_timer_deadline()
            t = MAX_IDLE_SLEEP if deadline is None else min(deadline, MAX_IDLE_SLEEP)
            if t > 0:
                self.wfi_sleeps += 1
                t0 = time.monotonic()
                self._wake.wait(t)
                slept = time.monotonic() - t0
                self.wfi_seconds += slept
                if self._idle is not None:
                    self._idle(slept)
            self._wake.clear()
        elif kind == "SHUTDOWN":
            self.power_event("poweroff")
            return
        # BUDGET, WFI, HTIF (not used on this board)
        for p in self.periodic:
            p()

    def stats(self) -> dict[str, Any]:
        """Engine statistics plus MMIO accesses by device, WFI sleeps and interrupt-line changes."""
        try:
            s = dict(self.engine.stats())
        except Exception:
            s = {}
        s["mmio"] = dict(self.mmio_counts)
        end = self._result.seconds if self._result is not None and self._done.is_set() else None
        s["run_seconds"] = round(end if end is not None else time.monotonic() - self._t0, 3) if self._t0 else 0.0
        s["mmio_unhandled"] = self.bus.unhandled
        s["wfi_sleeps"] = self.wfi_sleeps
        s["wfi_seconds"] = round(self.wfi_seconds, 3)
        s["vcpu_cpu_seconds"] = round(self.vcpu_cpu_seconds, 3)
        s["irq_changes"] = self.irq_changes
        return s
