"""Which compiled core runs the engine: the ahead-of-time module, or the Numba JIT module as the fallback.

``core`` is the engine's view of the core: consts.py's names plus the functions of the core in use. The
choice is made once per process (:func:`_select_core`): the AOT extension module when it is built for the
current sources (no Numba import), else the Numba core, with a one-line note; ``$VIRTKIT_CORE`` = ``aot`` /
``jit`` forces one.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from types import ModuleType
from typing import Any

import numpy as np

from virtkit.engines.riscv import aot, consts
from virtkit.engines.riscv.corecache import cache_dir, load_core
from virtkit.errors import ConfigError


class _Core(ModuleType):
    """What ``core.X`` means in this module: consts.py's names plus the functions of the core in use.

    :func:`_select_core` installs the functions of the AOT extension module (no Numba import) or of
    the Numba JIT module. A name the AOT module lacks is taken from the JIT module (with a note).
    """

    def __getattr__(self, name: str) -> object:
        if name.startswith("__") or not _core_kind:
            raise AttributeError(name)
        if _core_kind == "aot":
            print(f"virtkit: note: core.{name} is not in the AOT core; using the Numba core for it "
                  "(add it to coresel.CORE_FUNCTIONS and RiscvEngine._core_calls)", file=sys.stderr)
        value = getattr(load_core(), name)
        setattr(self, name, value)
        return value


#: The engine's view of the core (see :class:`_Core`); constants are usable before any core is loaded.
core = _Core("virtkit.engines.riscv.core_in_use")
core.__dict__.update({k: v for k, v in vars(consts).items() if k.isupper()})

_compiled = False
_compile_lock = threading.Lock()


def ctab() -> np.ndarray:
    """The compressed-instruction expansion table (built once by the core in use)."""
    global _CTAB
    if _CTAB is None:
        _select_core()
        _CTAB = core.build_ctab()
    return _CTAB


_CTAB: np.ndarray | None = None


#: The core functions the engine calls through ``core.``: what the AOT module exports.
CORE_FUNCTIONS = ("run_harts", "csr_read", "csr_write", "build_ctab")
_core_kind = ""  # "aot" or "jit" once selected
_aot_sigs: dict[str, str] = {}
_warm_up = True  # False while aot.build collects sample arguments (no JIT compile needed there)


def _install(mod: ModuleType, kind: str) -> None:
    global _core_kind
    for name in CORE_FUNCTIONS:
        setattr(core, name, getattr(mod, name))
    _core_kind = kind


def _use_jit(reason: str) -> None:
    if reason:
        print(f"virtkit: note: {reason}; using the Numba JIT core (slower start-up; "
              "`virtkit engine build` builds the AOT core)", file=sys.stderr)
    _install(load_core(), "jit")


def _select_core() -> str:
    """Pick the core once per process: the AOT module when it is built and current, else Numba
    (``$VIRTKIT_CORE`` = ``aot`` / ``jit`` forces one; ``aot`` fails when it cannot be loaded)."""
    global _aot_sigs
    with _compile_lock:
        if _core_kind:
            return _core_kind
        mode = os.environ.get("VIRTKIT_CORE", "auto").strip().lower() or "auto"
        if mode not in ("auto", "aot", "jit"):
            raise ConfigError(f"VIRTKIT_CORE must be auto, aot or jit: {mode!r}")
        if mode == "jit":
            _use_jit("")
            return _core_kind
        mod, reason = aot.load()
        lacks = [n for n in CORE_FUNCTIONS if mod is not None and not callable(getattr(mod, n, None))]
        if lacks:  # CORE_FUNCTIONS grew since the build (engine.py is not part of the AOT key)
            mod, reason = None, f"the AOT core lacks {', '.join(lacks)} (rebuild it)"
        if mod is None:
            if mode == "aot":
                raise ConfigError(f"VIRTKIT_CORE=aot: {reason}")
            _use_jit(reason)
        else:
            _aot_sigs = dict((aot.read_meta() or {}).get("exports") or {})
            _install(mod, "aot")
        return _core_kind


def selected_core() -> str:
    """Which core this process runs: "aot", "jit", or "" before the first engine was created."""
    return _core_kind


def ensure_compiled(eng: Any) -> float:
    """Make sure a core can run ``eng``: check the AOT core's signatures, or compile (or load from the
    Numba cache) the JIT core once per process; say so when it takes long."""
    global _compiled
    _select_core()
    if _core_kind == "aot":
        have = aot.describe_calls(eng._core_calls())
        bad = [n for n in have if _aot_sigs.get(n) != have[n]]
        if not bad:
            eng.core_kind = "aot"
            return 0.0
        with _compile_lock:
            _use_jit(f"the AOT core was built for other arguments of {', '.join(bad)}")
    eng.core_kind = "jit"
    with _compile_lock:
        if _compiled or not _warm_up:
            return 0.0
        t = time.monotonic()
        core.run_harts(*eng.core_args(0))
        dt = time.monotonic() - t
        _compiled = True
        if dt > 2.0:
            print(f"virtkit: compiled the RISC-V core in {dt:.1f} s (cached in {cache_dir()})", file=sys.stderr)
        return dt




def set_warm_up(on: bool) -> None:
    """(AOT build) Whether creating an engine compiles the Numba core (not while collecting sample arguments)."""
    global _warm_up
    _warm_up = on
