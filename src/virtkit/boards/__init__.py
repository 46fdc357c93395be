"""Machine definitions: memory map, platform devices, device tree or tables, image placement.

Each module here defines ``BOARD``, a class following :class:`virtkit.machine.builder.Board`, whose ``name``
is what ``--board`` and the config's ``board`` key say (``riscv64-virt``, ``riscv64-spike``...).
Adding a board is adding a module: :func:`find_board` finds it by that name.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from virtkit.errors import ConfigError

#: the module to try first for a board name (saves importing the others on every run)
_HINTS = {"riscv64-virt": "riscv_virt", "riscv64-spike": "riscv_spike", "x86_64-microvm": "x86_64"}


def _modules() -> list[str]:
    return [m.name for m in pkgutil.iter_modules(__path__) if not m.ispkg]


def _board_of(module: str) -> Any:
    mod = importlib.import_module(f"{__name__}.{module}")
    return getattr(mod, "BOARD", None)


def find_board(name: str) -> Any:
    """The board class named ``name``; ConfigError listing the known boards otherwise."""
    hint = _HINTS.get(name)
    if hint is not None:
        b = _board_of(hint)
        if b is not None and b.name == name:
            return b
    for m in _modules():
        b = _board_of(m)
        if b is not None and (b.name == name or name in getattr(b, "aliases", ())):
            return b
    raise ConfigError(f"board: unknown board {name!r} (known: {', '.join(board_names())})")


def board_names() -> list[str]:
    """Every board's name."""
    names = []
    for m in _modules():
        b = _board_of(m)
        if b is not None:
            names.append(b.name)
    return sorted(names)
