"""The run loop (machine/vm.py) driven by a scripted fake engine: every exit kind, independently of any CPU core."""

from __future__ import annotations

import threading
import time

import pytest

from virtkit.machine.bus import Bus
from virtkit.machine.engine import Engine, Exit, ExitReason
from virtkit.machine.vm import RunResult, Vm


class ScriptedEngine:
    """An engine that returns the exits of ``script`` in order (then BUDGET, or HALT forever)."""

    name = "fake"

    def __init__(self, script: list[Exit], nvcpus: int = 1, threads: int = 1, then: ExitReason = ExitReason.BUDGET):
        self.script = list(script)
        self.nvcpus, self.threads = nvcpus, threads
        self.then = then
        self.completed: list[tuple[int, int]] = []
        self.hypercall_results: list[tuple[int, tuple[int, ...]]] = []
        self.irqs: list[tuple[int, int, bool]] = []
        self.regions: list[tuple[int, int]] = []
        self.runs = 0
        self.clock: list[str] = []
        self._lock = threading.Lock()
        self.exit_requested = threading.Event()

    def add_mmio_region(self, base: int, size: int) -> None:
        self.regions.append((base, size))

    def run(self, budget: int, vcpu: int = 0) -> Exit:
        with self._lock:
            self.runs += 1
            if self.script:
                return self.script.pop(0)
        time.sleep(0.001)
        return Exit(self.then, vcpu)

    def complete_read(self, vcpu: int, value: int) -> None:
        self.completed.append((vcpu, value))

    def request_exit(self) -> None:
        self.exit_requested.set()

    def set_irq(self, vcpu: int, line: int, level: bool) -> None:
        self.irqs.append((vcpu, line, level))

    def next_timer_deadline(self) -> float | None:
        return None

    def pause_clock(self) -> None:
        self.clock.append("pause")

    def resume_clock(self, catch_up: bool = False) -> None:
        self.clock.append(f"resume catch_up={catch_up}")

    def hypercall_args(self, vcpu: int) -> tuple[int, ...]:
        return (0x10, vcpu, 7)

    def complete_hypercall(self, vcpu: int, result: tuple[int, ...]) -> None:
        self.hypercall_results.append((vcpu, result))

    def stats(self) -> dict:
        return {"instructions": self.runs}

    def close(self) -> None:
        pass


class Regs:
    """A device that remembers writes and answers reads with ``offset + size``."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, int, int]] = []
        self.reads: list[tuple[int, int]] = []

    def read(self, offset: int, size: int) -> int:
        self.reads.append((offset, size))
        return 0x100 + offset + size

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


def make(script, **kw) -> tuple[Vm, ScriptedEngine, Regs, Regs]:
    eng = ScriptedEngine(script, **kw)
    assert isinstance(eng, Engine)  # the fake satisfies the written contract
    mmio, pio = Regs(), Regs()
    vm = Vm(eng, Bus(), budget=1000)
    vm.bus.register(0x1000, 0x100, mmio, "regs")
    vm.pio.register(0x3F8, 8, pio, "com1")
    return vm, eng, mmio, pio


def test_mmio_and_port_io_exits_reach_their_buses_and_reads_complete():
    vm, eng, mmio, pio = make([
        Exit(ExitReason.MMIO_WRITE, 0, 0x1010, 4, 0xAB),
        Exit(ExitReason.MMIO_READ, 0, 0x1020, 2),
        Exit(ExitReason.PIO_WRITE, 0, 0x3F8, 1, 0x41),
        Exit(ExitReason.PIO_READ, 0, 0x3FD, 1),
        Exit(ExitReason.PIO_READ, 0, 0x80, 2),       # no device: an empty ISA bus reads all ones
        Exit(ExitReason.MMIO_READ, 0, 0x9000, 4),    # no device: zero, counted
        Exit(ExitReason.SHUTDOWN),
    ])
    res = vm.run(30)
    assert res.reason == "poweroff" and res.exit_status == 0
    assert mmio.writes == [(0x10, 4, 0xAB)] and mmio.reads == [(0x20, 2)]
    assert pio.writes == [(0, 1, 0x41)] and pio.reads == [(5, 1)]
    assert eng.completed == [(0, 0x122), (0, 0x106), (0, 0xFFFF), (0, 0)]
    assert res.stats["mmio"] == {"regs": 2} and res.stats["pio"] == {"com1": 2}
    assert res.stats["mmio_unhandled"] == 1


def test_hypercall_goes_to_the_handler_and_back():
    vm, eng, _, _ = make([Exit(ExitReason.HYPERCALL, 0), Exit(ExitReason.RESET)])
    seen = []

    def handler(vcpu, args):
        seen.append((vcpu, args))
        return (0, args[2] * 6)

    vm.hypercall = handler
    res = vm.run(30)
    assert res.reason == "reset" and res.exit_status == 0
    assert seen == [(0, (0x10, 0, 7))] and eng.hypercall_results == [(0, (0, 42))]


def test_hypercall_without_an_interface_and_internal_errors_stop_the_vm():
    vm, _, _, _ = make([Exit(ExitReason.HYPERCALL, 0)])
    res = vm.run(30)
    assert res.reason == "error" and "hypercall" in res.message
    vm, _, _, _ = make([Exit(ExitReason.INTERNAL_ERROR, 0, message="triple fault at rip=0x1000")])
    res = vm.run(30)
    assert res.reason == "error" and "triple fault" in res.message


def test_halt_sleeps_until_an_interrupt_and_a_stuck_machine_ends():
    vm, eng, _, _ = make([], then=ExitReason.HALT)
    vm.start()
    try:
        time.sleep(0.2)
        assert vm.wfi_sleeps > 0 and vm.wait(0) is None
        vm.set_irq(0, 11, 1)
        assert eng.irqs == [(0, 11, True)]
    finally:
        vm.stop()
        vm.wait(30)
        vm.close()
    vm, _, _, _ = make([], then=ExitReason.HALT)
    vm.halt_is_stuck = True
    assert vm.run(30).reason == "stuck"


def test_pause_stops_running_and_holds_the_clock_then_resumes():
    vm, eng, _, _ = make([])
    vm.start()
    try:
        assert vm.pause("test")
        assert vm.paused and vm.state == "paused" and vm.state_reason == "test"
        n = eng.runs
        time.sleep(0.2)
        assert eng.runs == n  # no vCPU runs while paused
        assert eng.clock == ["pause"]
        assert vm.resume()
        deadline = time.monotonic() + 10
        while eng.runs == n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert eng.runs > n and vm.state == "running"
        assert eng.clock == ["pause", "resume catch_up=False"]
        vm.pause()
        vm.resume(catch_up=True)
        time.sleep(0.05)
        assert eng.clock[-1] == "resume catch_up=True"
        assert not vm.resume()  # not paused
    finally:
        vm.stop()
        res = vm.wait(30)
        vm.close()
    assert res.reason == "stopped"


def test_stop_while_paused_ends_the_run():
    vm, _, _, _ = make([])
    vm.start()
    assert vm.pause()
    vm.stop("killed", "by the test")
    res = vm.wait(10)
    vm.close()
    assert res is not None and res.reason == "killed" and res.exit_status == 1


def test_engines_with_a_thread_per_vcpu_get_one():
    vm, eng, _, _ = make([Exit(ExitReason.BUDGET, 1), Exit(ExitReason.BUDGET, 0)], nvcpus=2, threads=2)
    vm.start()
    time.sleep(0.1)
    assert len(vm._threads) == 2 and all(t.is_alive() for t in vm._threads)
    vm.stop()
    assert vm.wait(30).reason == "stopped"
    vm.close()
    assert not any(t.is_alive() for t in vm._threads)


def test_io_callback_and_closer_failures_reach_the_result():
    import os

    vm, _, _, _ = make([], then=ExitReason.BUDGET)
    r, w = os.pipe()

    def broken():
        os.read(r, 10)
        raise RuntimeError("NIC backend failed")

    def bad_close():
        raise OSError("flush failed")

    vm.io.add_reader(r, broken)
    vm.closers.append(("disk vda", bad_close))
    vm.start()
    os.write(w, b"x")
    deadline = time.monotonic() + 10
    while not vm.errors and time.monotonic() < deadline:
        time.sleep(0.01)
    vm.stop()
    res = vm.wait(30)
    vm.close()
    os.close(r)
    os.close(w)
    assert any("NIC backend failed" in e for e in res.errors)
    assert any("disk vda" in e and "flush failed" in e for e in res.errors)


def test_instruction_limit():
    class Counting(ScriptedEngine):
        def progress(self) -> int:
            return self.runs * 1000

    eng = Counting([])
    vm = Vm(eng, Bus(), budget=1000)
    vm.max_insns = 5000
    res = vm.run(30)
    assert res.reason == "budget" and eng.runs == 5


@pytest.mark.parametrize("reason,code,status", [("poweroff", 0, 0), ("fail", 7, 7), ("exit", 0, 0), ("exit", 3, 3),
                                                ("error", 1, 1), ("panic", 1, 1), ("stopped", 0, 0)])
def test_run_result_exit_status(reason, code, status):
    assert RunResult(reason, code).exit_status == status
