"""Run a bare-metal RISC-V ELF (riscv-tests style) and get its HTIF exit code: the library call behind
``virtkit run --bios none --kernel prog.elf``, the ISA suite and the CPU benchmarks.

It builds a ``riscv64-spike`` machine (:mod:`virtkit.boards.riscv_spike`) through the one builder and runs
it on the shared run loop: RAM at 0x8000_0000, every hart starts at the ELF entry with a0 = mhartid, and
the program ends by writing an exit code to ``tohost``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from virtkit.errors import ConfigError, VirtkitError


class GuestStuck(VirtkitError):
    """Every hart waits for an interrupt that can never arrive."""


@dataclass
class BareMetalResult:
    """How a bare-metal run ended: exit code (None when it did not finish), output and counters.

    ``reason``: ``exit`` (the program reported through HTIF), ``wfi`` (every hart waits for an interrupt
    that cannot come) or ``budget`` (the instruction limit was reached).
    """

    exit_code: int | None
    reason: str
    instructions: int
    seconds: float
    output: bytes
    stats: dict = field(default_factory=dict)

    @property
    def mips(self) -> float:
        return self.instructions / self.seconds / 1e6 if self.seconds > 0 else 0.0


def run_elf(path: str | Path, *, mem_size: int = 128 << 20, nharts: int = 1, max_instructions: int | None = None,
            deterministic: bool = False, console: Callable[[bytes], None] | None = None,
            jit: int | None = None, cpu: str = "rv64") -> BareMetalResult:
    """Load ``path`` into fresh RAM, run it until it reports through HTIF (or the budget ends).

    ``jit``: the JIT's hotness threshold (0 = interpreter only; None = the default or $VIRTKIT_JIT); ``cpu``:
    the CPU model and options (``rv64,h=on``).
    """
    from virtkit.machine.builder import build
    from virtkit.machine.config import MachineConfig

    if mem_size <= 0 or mem_size % 4096:
        raise ConfigError(f"memory size must be a positive multiple of 4 KiB: {mem_size}")
    cfg = MachineConfig(board="riscv64-spike", kernel=str(path), memory=mem_size, cpu=cpu, cpus=nharts,
                        max_insns=max_instructions, deterministic=deterministic, jit=jit, rng=False)
    out = bytearray()

    def sink(data: bytes) -> None:
        out.extend(data)
        if console is not None:
            console(data)
        else:
            import sys

            sys.stdout.buffer.write(data)
            sys.stdout.flush()

    machine = build(cfg, sink)
    res = machine.run()
    if res.reason == "error":
        raise VirtkitError(f"bare-metal run failed: {res.message}")
    st = res.stats
    reason = {"exit": "exit", "stuck": "wfi"}.get(res.reason, "budget")
    return BareMetalResult(res.code if res.reason == "exit" else None, reason, int(st.get("instructions", 0)),
                           res.seconds, bytes(out), st)
