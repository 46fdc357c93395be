"""The engine contract: what executes guest instructions, and how it hands control back to the machine.

An *engine* runs a guest's virtual CPUs over a :class:`~virtkit.machine.memory.GuestMemory`: the
software RISC-V core (``engines/riscv``) or, later, the host's KVM (``engines/kvm``). The machine
(:class:`~virtkit.machine.vm.Vm`) drives every engine the same way, as kvmtool's ``kvm_cpu__start``
and QEMU's accelerators do::

    while running:
        ex = engine.run(budget, vcpu)        # returns an Exit: why the guest stopped running
        match ex.reason:
            MMIO_READ:  engine.complete_read(vcpu, bus.read(ex.addr, ex.size))
            MMIO_WRITE: bus.write(ex.addr, ex.size, ex.value)        # the store has retired
            PIO_READ / PIO_WRITE: the same on the port-I/O bus (x86)
            HALT:       sleep until an interrupt line rises or engine.next_timer_deadline()
            HYPERCALL:  engine.complete_hypercall(vcpu, handler(engine.hypercall_args(vcpu)))
            SHUTDOWN / RESET: the guest asked for power off / reset
            BUDGET:     the budget is spent or request_exit() was called: service the host, run again
            INTERNAL_ERROR: the engine cannot go on (ex.message says why); the VM stops

``budget`` is in the engine's unit of work (instructions for the software core); an engine that cannot
count (KVM) treats it as a hint and returns BUDGET when :meth:`Engine.request_exit` is called.
Interrupts: the board decides what a device's interrupt line is. A line into a CPU (RISC-V MEIP/SEIP,
an x86 LINT) is ``set_irq(vcpu, line, level)``; an engine with its own interrupt controller (KVM's
in-kernel irqchip) also takes global lines as ``set_gsi(gsi, level)``. Devices never see either: they
get a callable ``irq(level)`` from the board.

Adding an engine: a package ``virtkit/engines/<name>/`` whose ``__init__`` defines
``create_engine(mem, config, **board_args) -> Engine`` (and ``describe() -> dict`` for ``virtkit engine
status``). :func:`create_engine` finds it by name; nothing else changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from virtkit.errors import ConfigError

if TYPE_CHECKING:
    from virtkit.machine.config import MachineConfig
    from virtkit.machine.memory import GuestMemory


class ExitReason(IntEnum):
    """Why :meth:`Engine.run` returned. The values are shared with the software core's exit codes."""

    BUDGET = 0
    MMIO_READ = 1
    MMIO_WRITE = 2
    HALT = 3
    SHUTDOWN = 5
    RESET = 6
    PIO_READ = 7
    PIO_WRITE = 8
    HYPERCALL = 9
    INTERNAL_ERROR = 10
    DEBUG = 11  # a debugger's stop: size 0 = a breakpoint instruction at addr, 1 = a watched access to addr


@dataclass(frozen=True)
class Exit:
    """One exit: the reason, the vCPU, and for accesses the address, size (1, 2, 4, 8) and written value."""

    reason: ExitReason
    vcpu: int = 0
    addr: int = 0
    size: int = 0
    value: int = 0
    message: str = ""


class RawExit:
    """An :class:`Exit` as a plain slotted object: what hot run loops return (no dataclass machinery)."""

    __slots__ = ("reason", "vcpu", "addr", "size", "value", "message")

    def __init__(self, reason: ExitReason, vcpu: int, addr: int, size: int, value: int, message: str = "") -> None:
        self.reason, self.vcpu, self.addr, self.size, self.value = reason, vcpu, addr, size, value
        self.message = message

    def __repr__(self) -> str:
        return (f"RawExit({self.reason.name}, vcpu={self.vcpu}, addr={self.addr:#x}, size={self.size}, "
                f"value={self.value:#x})")


@runtime_checkable
class Engine(Protocol):
    """What every engine provides (see the module docstring for the loop that drives it)."""

    #: the engine's name (``riscv``, ``kvm``)
    name: str
    #: number of vCPUs
    nvcpus: int
    #: host threads the machine runs :meth:`run` on: 1 when the engine multiplexes every vCPU in one call
    #: (the software core), ``nvcpus`` when each vCPU needs its own thread (KVM); ``run``'s ``vcpu``
    #: argument is then the thread's vCPU
    threads: int

    def add_mmio_region(self, base: int, size: int) -> None:
        """Guest accesses to ``[base, base+size)`` exit as MMIO_READ/MMIO_WRITE."""

    def run(self, budget: int, vcpu: int = 0) -> Exit | RawExit:
        """Run until an exit; releases the GIL while guest code runs."""

    def complete_read(self, vcpu: int, value: int) -> None:
        """The value of the pending MMIO or port read of ``vcpu`` (must come before its next ``run``)."""

    def request_exit(self) -> None:
        """Make a ``run`` in another thread return BUDGET soon (any thread)."""

    def set_irq(self, vcpu: int, line: int, level: bool) -> None:
        """Drive an interrupt input of a vCPU (the board knows which lines its CPUs have)."""

    def next_timer_deadline(self) -> float | None:
        """Seconds until a vCPU timer fires (a halted machine sleeps at most that long), or None."""

    def pause_clock(self) -> None:
        """The VM is paused: guest time stops."""

    def resume_clock(self, catch_up: bool = False) -> None:
        """The VM resumes: guest time goes on from where it stopped (or jumps by the paused time)."""

    def stats(self) -> dict[str, Any]:
        """Counters: instructions, exits by reason, ...; ``instructions`` when the engine counts them."""

    def close(self) -> None:
        """Release host resources."""


class HypercallEngine(Protocol):
    """Optional: engines whose guests call the VMM directly (SBI in the VMM, KVM hypercalls)."""

    def hypercall_args(self, vcpu: int) -> tuple[int, ...]: ...

    def complete_hypercall(self, vcpu: int, result: tuple[int, ...]) -> None: ...


def engine_names() -> list[str]:
    """Every engine package under ``virtkit.engines`` that defines ``create_engine``."""
    import virtkit.engines as pkg

    names = []
    for m in pkgutil.iter_modules(pkg.__path__):
        if m.ispkg:
            names.append(m.name)
    return sorted(names)


def engine_module(name: str) -> Any:
    """The engine package ``virtkit.engines.<name>`` (ConfigError naming the known engines otherwise)."""
    if not name.isidentifier() or name not in engine_names():
        raise ConfigError(f"engine: unknown engine {name!r} (known: {', '.join(engine_names())})")
    mod = importlib.import_module(f"virtkit.engines.{name}")
    if not callable(getattr(mod, "create_engine", None)):
        raise ConfigError(f"engine: {name!r} does not provide create_engine()")
    return mod


def create_engine(cfg: MachineConfig, mem: GuestMemory, **board_args: Any) -> Engine:
    """Create the engine the config names, with what the board adds (reset address, CLINT base...)."""
    return engine_module(cfg.engine).create_engine(mem, cfg, **board_args)


#: A device's interrupt output as the board wires it: ``irq(level)``.
IrqLine = Callable[[bool], None]
