"""The software RISC-V CPU engine (RV64IMAFDC, M/S/U, Sv39/Sv48, PMP, CLINT), compiled with Numba.

Numba cache pitfall: ``@njit(cache=True)`` keys a function's cache on its own source file
only, so a change in ``fpu.py`` would not invalidate the cached ``core.run_slice`` that
calls ``fpu.fp_exec``. Before any of this package's jitted functions are created we point
``numba.config.CACHE_DIR`` at ``~/.cache/virtkit/numba/<hash of every engines/riscv/*.py with @njit code>``
(``$VIRTKIT_NUMBA_CACHE`` overrides the root), so any source change gets a fresh cache.
The previous ``CACHE_DIR`` is restored afterwards (the locator is fixed at decoration).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numba


def _source_hash() -> str:
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for p in sorted(here.glob("*.py")):
        src = p.read_bytes()
        if b"@njit" in src:  # only the compiled modules matter
            h.update(p.name.encode())
            h.update(src)
    h.update(numba.__version__.encode())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    """Directory holding the compiled core for the current sources."""
    root = os.environ.get("VIRTKIT_NUMBA_CACHE") or os.path.join(Path.home(), ".cache", "virtkit", "numba")
    return Path(root) / _source_hash()


CACHE_DIR = cache_dir()
_saved = numba.config.CACHE_DIR
numba.config.CACHE_DIR = str(CACHE_DIR)
try:
    from virtkit.engines.riscv import core, fpu  # noqa: F401  (decorated with the keyed cache dir)
finally:
    numba.config.CACHE_DIR = _saved
