"""The run loop: engine exits -> devices, in vCPU threads, with host I/O in an event-loop thread.

A vCPU thread calls ``engine.run(budget)`` (which releases the GIL), dispatches each exit on its
:class:`~virtkit.machine.engine.ExitReason` (MMIO on :attr:`Vm.bus`, port I/O on :attr:`Vm.pio`, HALT,
HYPERCALL, SHUTDOWN/RESET, BUDGET) and resumes; when every vCPU waits for an interrupt (HALT) it sleeps
until a device raises a line or the next timer deadline. The I/O thread (``selectors``) serves host file
descriptors (the terminal, TAP devices...) so a guest that computes never starves its devices.
Interrupt lines may be driven from either thread: :meth:`Vm.set_irq` serialises them and wakes a
sleeping vCPU.

A VM can be paused and resumed from any thread (:meth:`Vm.pause`): every vCPU stops at an instruction
boundary, the I/O thread stops the callbacks that touch guest memory, and guest time stands still (unless
the resume asks to catch up). Errors never vanish: a failing I/O callback, flush or closer is recorded in
:attr:`Vm.errors` and reaches the :class:`RunResult`.
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
from virtkit.machine.engine import ExitReason

BUDGET = 500_000  # instructions per run() call: bounds the latency of host-side events
MAX_IDLE_SLEEP = 0.05  # seconds: a halted machine re-checks at least this often
#: The flushers also run every this many MMIO exits: a guest that prints, then busy-polls a device
#: (a prompt, then LSR until a key arrives) never spends its budget nor idles, yet its output must show.
FLUSH_EVERY = 512
_MMIO_READ, _MMIO_WRITE = ExitReason.MMIO_READ, ExitReason.MMIO_WRITE
_PIO_READ, _PIO_WRITE = ExitReason.PIO_READ, ExitReason.PIO_WRITE

#: RunResult reasons and the process exit status a front end returns for each (others: ``code or 1``)
CLEAN_REASONS = {"poweroff": 0, "reset": 0, "stopped": 0}


@dataclass
class RunResult:
    """How a VM run ended.

    ``reason``: ``poweroff``, ``reset``, ``fail`` (the guest reported ``code``), ``exit`` (a bare-metal program's
    exit ``code``), ``stopped`` (by the user), ``killed``, ``timeout``, ``boot-timeout``, ``panic``, ``budget`` (the
    instruction limit), ``stuck`` (every vCPU waits for an interrupt that cannot come) or ``error``.
    ``errors`` lists what failed on the way (I/O callbacks, flushes, closers), even when the run ended cleanly.
    """

    reason: str
    code: int = 0
    message: str = ""
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        """The process exit status a front end should return."""
        if self.reason == "exit":
            return self.code
        return CLEAN_REASONS.get(self.reason, self.code or 1)


class IoLoop:
    """A ``selectors`` event loop in its own thread; callbacks run in that thread.

    Callbacks registered with ``guest=True`` (the default: they may write guest memory, e.g. a NIC's receive
    path) are held while the VM is paused (:meth:`pause_guest`); the others (the terminal, control
    connections) keep running.
    """

    def __init__(self, errors: list[str] | None = None) -> None:
        self._sel = selectors.DefaultSelector()
        self._rd, self._wr = os.pipe()
        os.set_blocking(self._rd, False)
        self._sel.register(self._rd, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._busy = threading.Lock()  # held while a guest-touching callback runs
        self._thread: threading.Thread | None = None
        self._stop = False
        self._paused = False
        self._held: dict[int, Callable[[], None]] = {}  # guest fds set aside while paused
        self._guest_fds: set[int] = set()
        self.errors: list[str] = errors if errors is not None else []

    def add_reader(self, fd: int, callback: Callable[[], None], guest: bool = True) -> None:
        """Call ``callback()`` (in the I/O thread) whenever ``fd`` is readable."""
        with self._lock:
            if guest:
                self._guest_fds.add(fd)
            if guest and self._paused:
                self._held[fd] = callback
            else:
                self._sel.register(fd, selectors.EVENT_READ, callback)
        self._poke()

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd``."""
        with self._lock:
            self._guest_fds.discard(fd)
            self._held.pop(fd, None)
            try:
                self._sel.unregister(fd)
            except (KeyError, ValueError):
                pass
        self._poke()

    def pause_guest(self) -> None:
        """Hold every guest-touching callback; returns once none is running."""
        with self._lock:
            if self._paused:
                return
            self._paused = True
            for fd in list(self._guest_fds):
                try:
                    key = self._sel.unregister(fd)
                except (KeyError, ValueError):
                    continue
                self._held[fd] = key.data
        self._poke()
        if threading.current_thread() is not self._thread:
            with self._busy:  # a callback that was already running has finished
                pass

    def resume_guest(self) -> None:
        """Serve the held callbacks again."""
        with self._lock:
            self._paused = False
            for fd, cb in self._held.items():
                try:
                    self._sel.register(fd, selectors.EVENT_READ, cb)
                except (KeyError, ValueError, OSError):
                    pass
            self._held.clear()
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
            try:
                events = self._sel.select(timeout=0.5)
            except (OSError, ValueError):  # a descriptor closed under us: drop it at the next turn
                self._drop_closed()
                continue
            for key, _ in events:
                if key.data is None:
                    try:
                        os.read(self._rd, 4096)
                    except BlockingIOError:
                        pass
                    continue
                guest = key.fd in self._guest_fds
                try:
                    if guest:
                        with self._busy:
                            if key.fd not in self._held and not self._paused:
                                key.data()
                    else:
                        key.data()
                except Exception as err:  # a device callback failing must not kill the loop: report it
                    self.errors.append(f"I/O callback {getattr(key.data, '__qualname__', key.data)!s}: "
                                       f"{type(err).__name__}: {err}")
                    self.remove_reader(key.fd)

    def _drop_closed(self) -> None:
        with self._lock:
            for key in list(self._sel.get_map().values()):
                try:
                    os.fstat(key.fd)
                except OSError:
                    self._sel.unregister(key.fd)

    def stop(self) -> None:
        """Stop the thread and close the loop."""
        self._stop = True
        self._poke()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._sel.close()
        os.close(self._rd)
        os.close(self._wr)


class Vm:
    """A machine: ``engine`` + ``bus`` (MMIO) + ``pio`` (port I/O) + host I/O. The builder wires the devices."""

    def __init__(self, engine: Any, bus: Bus, budget: int = BUDGET, pio: Bus | None = None, name: str = "") -> None:
        self.engine = engine
        self.bus = bus
        self.pio = pio if pio is not None else Bus()
        self.budget = budget
        self.name = name
        self.errors: list[str] = []
        self.io = IoLoop(self.errors)
        self._irq_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._result: RunResult | None = None
        self._threads: list[threading.Thread] = []
        self._running = 0
        self._t0 = 0.0
        self.started_at = 0.0  # time.time() of start()
        self.mmio_counts: Counter[str] = Counter()
        self.pio_counts: Counter[str] = Counter()
        self.wfi_sleeps = 0
        self.wfi_seconds = 0.0
        self.vcpu_cpu_seconds = 0.0  # CPU time of the vCPU threads (known when the run has ended)
        self._idle: Callable[[float], None] | None = getattr(engine, "idle", None)  # guest time moves while idle
        self._progress: Callable[[], int] | None = getattr(engine, "progress", None)
        self.irq_changes = 0
        #: nanoseconds the VMM spent per exit reason (handling it until the next run; HALT includes the sleep)
        self.exit_ns: Counter[Any] = Counter()
        #: instruction limit (bare-metal runs): stop with reason "budget" once the engine has done this much
        self.max_insns: int | None = None
        #: a HALT with no timer armed ends the run as "stuck" (boards without interrupt sources set it)
        self.halt_is_stuck = False
        #: ``handler(vcpu, args) -> result`` for HYPERCALL exits (a board or a paravirtual interface sets it)
        self.hypercall: Callable[[int, tuple[int, ...]], tuple[int, ...]] | None = None
        #: ``on_debug(exit)`` for DEBUG exits (a debugger's breakpoint or watchpoint; the GDB stub sets it)
        self.on_debug: Callable[[Any], None] | None = None
        #: Called on the vCPU thread between runs (e.g. RTC alarm polling, console input delivery).
        self.periodic: list[Callable[[], None]] = []
        #: Called on the vCPU thread whenever the guest stops running for a while (budget spent, every
        #: vCPU waiting for an interrupt, poweroff) and when the loop ends: hand batched output on.
        self.flushers: list[Callable[[], None]] = []
        #: ``(name, fn)`` called once by :meth:`close`, in order; failures are reported, not swallowed.
        self.closers: list[Callable[[], None] | tuple[str, Callable[[], None]]] = []
        #: ``listener(state, reason)`` on every state change (control sockets, the daemon)
        self.listeners: list[Callable[[str, str], None]] = []
        # pause
        self._pause_req = False
        self._paused = threading.Event()
        self._resume = threading.Event()
        self._catch_up = False
        self.state = "created"
        self.state_reason = ""
        self.pauses = 0
        #: share of time the vCPUs sleep (auto-converge during a migration), 0 = never
        self.throttle = 0.0

    # -- interrupts (any thread) --------------------------------------------------------------------
    def set_irq(self, vcpu: int, line: int, level: int) -> None:
        """Drive an interrupt input of ``vcpu`` (e.g. the PLIC's outputs) and wake a halted vCPU."""
        with self._irq_lock:
            self.engine.set_irq(vcpu, line, bool(level))
            self.irq_changes += 1
        if level:
            self._wake.set()

    def set_gsi(self, gsi: int, level: int) -> None:
        """Drive a global interrupt line of an engine that has its own interrupt controller."""
        with self._irq_lock:
            self.engine.set_gsi(gsi, bool(level))
            self.irq_changes += 1
        if level:
            self._wake.set()

    def kick(self) -> None:
        """Wake a halted vCPU so the periodic work runs soon (new console input, say)."""
        self._wake.set()

    # -- power (from devices, on the vCPU thread) -----------------------------------------------------
    def power_event(self, kind: str, code: int = 0, message: str = "") -> None:
        """The guest asked to power off / reset / fail (or a watchdog ended the run): stop with that result."""
        if self._result is None:
            self._result = RunResult(kind, code, message)
        self._stop.set()
        self._wake.set()
        self._resume.set()
        self.engine.request_exit()

    # -- lifecycle ---------------------------------------------------------------------------------
    def _set_state(self, state: str, reason: str = "") -> None:
        self.state, self.state_reason = state, reason
        for f in list(self.listeners):
            try:
                f(state, reason)
            except Exception as err:
                self.errors.append(f"state listener: {type(err).__name__}: {err}")

    def start(self) -> None:
        """Start the I/O thread and the vCPU threads."""
        self._t0 = time.monotonic()
        self.started_at = time.time()
        self.io.start()
        n = int(getattr(self.engine, "threads", 1) or 1)
        self._running = n
        self._cpu_lock = threading.Lock()
        self._threads = [threading.Thread(target=self._vcpu, args=(i,), name=f"virtkit-vcpu{i}", daemon=True)
                         for i in range(n)]
        self._set_state("running")
        for t in self._threads:
            t.start()

    def stop(self, reason: str = "stopped", message: str = "") -> None:
        """Ask the vCPUs to stop at the next exit (any thread)."""
        self.power_event(reason, 0 if reason == "stopped" else 1, message)

    def pause(self, reason: str = "", wait: float = 10.0) -> bool:
        """Stop every vCPU at an instruction boundary and hold the guest's I/O; True once paused.

        From the vCPU thread itself (a device asking for it) the pause takes effect after the current exit.
        """
        if self._done.is_set() or self._stop.is_set():
            return False
        if self._paused.is_set():
            return True
        self._pending_reason = reason
        self._resume.clear()
        self._pause_req = True
        self.engine.request_exit()
        self._wake.set()
        if threading.current_thread() in self._threads:
            return True
        return self._paused.wait(wait)

    def hold_at_start(self, reason: str = "") -> None:
        """Before :meth:`start`: the vCPUs pause before the first instruction (QEMU's ``-S``) until :meth:`resume`."""
        self._pending_reason = reason
        self._resume.clear()
        self._pause_req = True

    def debug_step(self, vcpu: int) -> str:
        """Run one instruction of ``vcpu`` while the VM is paused (a debugger's single step) and service the exit
        it makes; returns ``stepped``, ``breakpoint`` (it stopped at an ``ebreak``), ``watchpoint`` (a watched
        access stopped it before it happened), ``waiting`` (the vCPU waits for an interrupt: nothing ran) or
        ``ended`` (the guest powered off)."""
        if not self._paused.is_set():
            raise RuntimeError("debug_step needs the VM paused")
        return self.step_vcpu(vcpu)

    def step_vcpu(self, vcpu: int) -> str:
        """:meth:`debug_step` without the pause check: for a debugger's handler on the vCPU thread itself."""
        ex = self.engine.step(vcpu)
        r = ex.reason
        if r is _MMIO_READ or r is _MMIO_WRITE:
            reg = self.bus.find(ex.addr)
            if r is _MMIO_READ:
                self.engine.complete_read(ex.vcpu, reg.device.read(ex.addr - reg.base, ex.size) if reg else 0)
            elif reg is not None:
                reg.device.write(ex.addr - reg.base, ex.size, ex.value)
        elif r is ExitReason.HYPERCALL and self.hypercall is not None:
            self._answer_hypercall(ex)
        elif r is ExitReason.SHUTDOWN or r is ExitReason.RESET:
            self.power_event("poweroff" if r is ExitReason.SHUTDOWN else "reset")
        elif r is ExitReason.DEBUG:
            return "watchpoint" if ex.size == 1 else "breakpoint"
        elif r is ExitReason.HALT:
            return "waiting"
        self._flush()
        return "ended" if self._stop.is_set() else "stepped"

    def resume(self, catch_up: bool = False) -> bool:
        """Let a paused VM run again; guest time goes on from where it stopped (``catch_up``: it jumps)."""
        if not self._pause_req and not self._paused.is_set():
            return False
        self._catch_up = catch_up
        self._pause_req = False
        self._resume.set()
        if threading.current_thread() not in self._threads:
            # wait until the vCPU has left the pause (state "running"): a pause() right after this one
            # must not find the old pause still standing
            deadline = time.monotonic() + 10
            while self._paused.is_set() and not self._done.is_set() and time.monotonic() < deadline:
                time.sleep(0.0002)
        return True

    def set_throttle(self, share: float) -> None:
        """Make the vCPUs sleep ``share`` (0..0.99) of the time: a migration's auto-converge."""
        self.throttle = min(max(float(share), 0.0), 0.99)

    @property
    def paused(self) -> bool:
        """Whether the VM is paused right now."""
        return self._paused.is_set()

    def _park(self) -> None:
        """On the vCPU thread: stay paused until resumed or stopped."""
        self._flush()
        self.engine.pause_clock()
        self.io.pause_guest()
        self.pauses += 1
        self._set_state("paused", getattr(self, "_pending_reason", ""))
        self._paused.set()  # after the state: a caller woken by pause() sees "paused"
        while not self._resume.wait(0.5):
            if self._stop.is_set():
                break
        self.io.resume_guest()
        self.engine.resume_clock(self._catch_up)
        if not self._stop.is_set():
            self._set_state("running")
        self._paused.clear()  # last: resume() returns once the VM runs again

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
                self.stop("timeout", f"still running after {timeout} s")
                res = self.wait(30)
        except KeyboardInterrupt:
            self.stop("stopped")
            res = self.wait(30)
        finally:
            self.close()
        assert res is not None
        return res

    def close(self) -> None:
        """Stop everything and release host resources (idempotent); failures go to :attr:`errors`."""
        if self._threads and not self._done.is_set():
            self.stop()
            self._done.wait(30)
        if self.io is not None:
            self.io.stop()
            self.io = None  # type: ignore[assignment]
        for c in self.closers:
            name, fn = c if isinstance(c, tuple) else (getattr(c, "__qualname__", str(c)), c)
            try:
                fn()
            except Exception as err:
                self.errors.append(f"closing {name}: {type(err).__name__}: {err}")
        self.closers.clear()
        close = getattr(self.engine, "close", None)
        if close is not None:
            try:
                close()
            except Exception as err:
                self.errors.append(f"closing the engine: {type(err).__name__}: {err}")
        if self._result is not None:
            self._result.errors = list(self.errors)

    # -- the vCPU loop ------------------------------------------------------------------------------
    def _flush(self) -> None:
        for f in self.flushers:
            f()

    def _vcpu(self, index: int) -> None:
        eng, bus = self.engine, self.bus
        counts = self.mmio_counts
        stop = self._stop
        # an engine's run_raw() is run() returning a cheaper exit object (same fields), when it has one
        run, complete = getattr(eng, "run_raw", None) or eng.run, eng.complete_read
        budget = self.budget
        limit = self.max_insns
        # the region of the last MMIO exit: consecutive exits nearly always hit the same device
        lo = hi = 0
        dev_read: Callable[[int, int], int] = bus.read
        dev_write: Callable[[int, int, int], None] = bus.write
        name = ""
        until_flush = FLUSH_EVERY
        cpu0 = time.thread_time()
        # the VMM's time per exit reason (from the exit to the next run): what an exit costs on this side
        clock = time.perf_counter_ns
        exit_ns = self.exit_ns
        last: Any = None
        t_exit = 0
        try:
            while not stop.is_set():
                if last is not None:
                    exit_ns[last] += clock() - t_exit
                    last = None
                if self._pause_req:
                    self._park()
                    limit = self.max_insns  # may have been changed while paused
                    continue
                th = self.throttle  # read once: the migration thread changes it
                if th:
                    t_run = time.monotonic()
                if limit is not None:
                    left = limit - self._progress()  # type: ignore[misc]
                    if left <= 0:
                        self.power_event("budget", 2, f"instruction limit of {limit:,} reached")
                        break
                    ex = run(min(budget, left), index)
                else:
                    ex = run(budget, index)
                t_exit = clock()
                if th:
                    time.sleep((time.monotonic() - t_run) * th / (1 - th))
                r = ex.reason
                last = r
                if r is not _MMIO_READ and r is not _MMIO_WRITE:
                    self._other_exit(ex, index)
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
                        if r is _MMIO_READ:
                            complete(index, 0)
                        continue
                    lo, hi, name = reg.base, reg.base + reg.size, reg.name
                    dev_read, dev_write = reg.device.read, reg.device.write
                counts[name] += 1
                if r is _MMIO_READ:
                    complete(index, dev_read(addr - lo, ex.size))
                else:
                    dev_write(addr - lo, ex.size, ex.value)
        except Exception as err:  # an engine or device bug: stop the VM with a message, keep the host alive
            if self._result is None:
                self._result = RunResult("error", 1, f"{type(err).__name__}: {err}")
            self._stop.set()
        finally:
            try:
                self._flush()
            except Exception as err:
                self.errors.append(f"flushing output: {type(err).__name__}: {err}")
            with self._cpu_lock:
                self.vcpu_cpu_seconds += time.thread_time() - cpu0
                self._running -= 1
                last = self._running == 0
            if last:
                if self._result is None:
                    self._result = RunResult("stopped")
                self._result.seconds = time.monotonic() - self._t0
                self._result.stats = self.stats()
                self._result.errors = list(self.errors)
                self._set_state("stopped", self._result.reason)
                self._done.set()
            else:  # make the other vCPUs leave too
                self._stop.set()
                eng.request_exit()

    def _other_exit(self, ex: Any, index: int) -> None:
        """Every exit but MMIO: port I/O, HALT sleeps, hypercalls, power events, budget."""
        r = ex.reason
        if r is _PIO_READ or r is _PIO_WRITE:
            reg = self.pio.find(ex.addr)
            if reg is None:
                self.pio.unhandled += 1
                if r is _PIO_READ:
                    self.engine.complete_read(index, (1 << (8 * ex.size)) - 1)  # an empty ISA bus reads all ones
                return
            self.pio_counts[reg.name] += 1
            if r is _PIO_READ:
                self.engine.complete_read(index, reg.device.read(ex.addr - reg.base, ex.size))
            else:
                reg.device.write(ex.addr - reg.base, ex.size, ex.value)
            return
        self._flush()  # the guest stops producing output for now: let it out
        if r is ExitReason.HALT:
            deadline = self.engine.next_timer_deadline()
            if deadline is None and self.halt_is_stuck:
                self.power_event("stuck", 3, "every vCPU waits for an interrupt that cannot come")
                return
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
        elif r is ExitReason.SHUTDOWN:
            self.power_event("poweroff")
            return
        elif r is ExitReason.RESET:
            self.power_event("reset", 0, getattr(ex, "message", "") or "")
            return
        elif r is ExitReason.HYPERCALL:
            if self.hypercall is None:
                self.power_event("error", 1, "the guest made a hypercall and this machine has no hypercall interface")
                return
            self._answer_hypercall(ex)
            return
        elif r is ExitReason.INTERNAL_ERROR:
            self.power_event("error", 1, ex.message or "internal engine error")
            return
        elif r is ExitReason.DEBUG and self.on_debug is not None:
            self.on_debug(ex)
            return
        # BUDGET (and DEBUG until a debugger is attached)
        for p in self.periodic:
            p()

    def _answer_hypercall(self, ex: Any) -> None:
        """Hand a HYPERCALL exit to :attr:`hypercall` and its answer back to the vCPU that called (the exit names
        it: an engine running every vCPU on one thread does not call from the thread's own)."""
        v = ex.vcpu
        self.engine.complete_hypercall(v, self.hypercall(v, self.engine.hypercall_args(v)))  # type: ignore[misc]

    def stats(self) -> dict[str, Any]:
        """Engine statistics plus device accesses, HALT sleeps and interrupt-line changes."""
        try:
            s = dict(self.engine.stats())
        except Exception:
            s = {}
        s["mmio"] = dict(self.mmio_counts)
        if self.pio_counts:
            s["pio"] = dict(self.pio_counts)
        end = self._result.seconds if self._result is not None and self._done.is_set() else None
        s["run_seconds"] = round(end if end is not None else time.monotonic() - self._t0, 3) if self._t0 else 0.0
        s["mmio_unhandled"] = self.bus.unhandled
        s["wfi_sleeps"] = self.wfi_sleeps
        s["wfi_seconds"] = round(self.wfi_seconds, 3)
        s["vcpu_cpu_seconds"] = round(self.vcpu_cpu_seconds, 3)
        s["irq_changes"] = self.irq_changes
        s["exit_seconds"] = {getattr(r, "name", str(r)): round(ns / 1e9, 6) for r, ns in self.exit_ns.items()}
        return s
