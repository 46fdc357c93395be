"""Building machines in tests the way ``virtkit run`` does (MachineConfig -> the one builder)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from virtkit.machine.builder import Machine, build
from virtkit.machine.config import MachineConfig

MiB = 1 << 20


def virt(console: Callable[[bytes], None] | None = None, *, mem_mib: int = 256, firmware: str | None = "default",
         **kw: Any) -> Machine:
    """A riscv64-virt machine (not started): ``kw`` are MachineConfig fields; ``firmware=None`` boots the kernel
    from reset in M-mode."""
    cfg = MachineConfig(memory=mem_mib * MiB, firmware="none" if firmware is None else firmware, **kw)
    return build(cfg, console)
