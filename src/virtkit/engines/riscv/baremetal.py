"""Run a bare-metal RISC-V ELF (riscv-tests style) on the software engine, talking HTIF.

This is what ``virtkit run --bios none --kernel prog.elf`` calls: RAM at 0x8000_0000, every
hart starts at the ELF entry with a0 = mhartid, and the program ends by writing an exit code
to ``tohost`` (see :mod:`virtkit.engines.riscv.htif`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from virtkit.engines.riscv.elf import load_elf
from virtkit.engines.riscv.engine import ExitReason, RiscvEngine
from virtkit.engines.riscv.htif import Htif
from virtkit.errors import ConfigError, VirtkitError
from virtkit.machine.memory import GuestMemory

RAM_BASE = 0x8000_0000
CHUNK = 20_000_000


class GuestStuck(VirtkitError):
    """Every hart waits for an interrupt that can never arrive."""


@dataclass
class BareMetalResult:
    """How a bare-metal run ended: exit code (None when it did not finish), output and counters."""

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
            jit: int | None = None) -> BareMetalResult:
    """Load ``path`` into fresh RAM, run it until it reports through HTIF (or the budget ends).

    ``jit``: the JIT's hotness threshold (0 = interpreter only; None = the default or $VIRTKIT_JIT).
    """
    if mem_size <= 0 or mem_size % 4096:
        raise ConfigError(f"memory size must be a positive multiple of 4 KiB: {mem_size}")
    mem = GuestMemory(mem_size, RAM_BASE)
    img = load_elf(path, mem)
    eng = RiscvEngine(mem, nharts, reset_pc=img.entry, deterministic=deterministic, jit=jit)
    tohost = img.symbols.get("tohost")
    htif = None
    if tohost is not None:
        eng.tohost = tohost
        htif = Htif(mem, tohost, img.symbols.get("fromhost"), console)
    t0 = time.monotonic()
    left = max_instructions
    reason = "budget"
    while True:
        budget = CHUNK if left is None else min(CHUNK, left)
        if budget <= 0:
            break
        ex = eng.run(budget)
        if left is not None:
            left = max_instructions - eng.stats()["instructions"] - eng.stats()["traps"]
        if ex.reason is ExitReason.HTIF and htif is not None:
            if htif.handle(ex.value) is not None:
                reason = "exit"
                break
        elif ex.reason is ExitReason.WFI:
            d = eng.next_timer_deadline()
            if d is None:
                reason = "wfi"
                break
            time.sleep(min(d, 0.1))
    dt = time.monotonic() - t0
    st = eng.stats()
    return BareMetalResult(htif.exit_code if htif else None, reason, st["instructions"], dt,
                           bytes(htif.output) if htif else b"", st)
