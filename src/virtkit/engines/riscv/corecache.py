"""Where the Numba-compiled core is cached, keyed by every source it is built from.

Numba cache pitfall: ``@njit(cache=True)`` keys a function's cache on its own source file only, so a
change in ``fpu.py`` would not invalidate the cached ``core.run_slice`` that calls ``fpu.fp_exec``.
Whenever one of this package's modules with ``@njit`` code is imported (by the engine, a test or a
benchmark), a meta-path hook points ``numba.config.CACHE_DIR`` at
``~/.cache/virtkit/numba/<hash of every engines/riscv/*.py with @njit code and what they import>``
(``$VIRTKIT_NUMBA_CACHE`` overrides the root) while the module executes, so any source change gets a fresh
cache. The previous ``CACHE_DIR`` is restored afterwards (the locator is fixed at decoration). The package's
``__init__`` imports this module, so the hook is in place before any core module is imported.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import re
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
PACKAGE = "virtkit.engines.riscv"
_FROM_SUB = re.compile(rb"^\s*from virtkit\.engines\.riscv\.(\w+) import", re.M)
_FROM_PKG = re.compile(rb"^\s*from virtkit\.engines\.riscv import \(?([\w, ]+)", re.M)
_NJIT = re.compile(rb"^@njit", re.M)


@cache
def numba_version() -> str:
    """The installed Numba's version, read without importing Numba (nor importlib.metadata: ~30 ms)."""
    spec = importlib.util.find_spec("numba")
    if spec is None or not spec.origin:
        return "none"
    site = Path(spec.origin).parent.parent
    for d in site.glob("numba-*.dist-info"):
        return d.name[len("numba-"):-len(".dist-info")]
    from importlib import metadata

    return metadata.version("numba")


def compiled_sources() -> list[Path]:
    """The sources the compiled core is built from: every module with ``@njit`` code and the package modules
    they import (consts.py, jit.py's shared layout...), transitively."""
    srcs = {p.name: p.read_bytes() for p in HERE.glob("*.py")}
    todo = [n for n, b in srcs.items() if _NJIT.search(b)]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in srcs:
            continue
        seen.add(name)
        todo += [m.decode() + ".py" for m in _FROM_SUB.findall(srcs[name])]
        for names in _FROM_PKG.findall(srcs[name]):
            todo += [n.strip().decode() + ".py" for n in names.split(b",") if n.strip()]
    return [HERE / n for n in sorted(seen)]


def _source_hash() -> str:
    h = hashlib.sha256()
    for p in compiled_sources():
        h.update(p.name.encode())
        h.update(p.read_bytes())
    h.update(numba_version().encode())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    """Directory holding the Numba JIT cache of the core for the current sources."""
    root = os.environ.get("VIRTKIT_NUMBA_CACHE") or os.path.join(Path.home(), ".cache", "virtkit", "numba")
    return Path(root) / _source_hash()


class _KeyedCacheLoader(importlib.machinery.SourceFileLoader):
    """Executes an ``@njit`` module with ``numba.config.CACHE_DIR`` set to :func:`cache_dir`."""

    def exec_module(self, module: ModuleType) -> None:
        import numba

        saved = numba.config.CACHE_DIR
        numba.config.CACHE_DIR = str(cache_dir())
        try:
            super().exec_module(module)
        finally:
            numba.config.CACHE_DIR = saved


class _KeyedCacheFinder:
    """Gives this package's ``@njit`` modules the keyed-cache loader, whoever imports them first."""

    def find_spec(self, fullname: str, path, target=None):  # importlib's MetaPathFinder protocol
        if not fullname.startswith(PACKAGE + ".") or fullname.count(".") != PACKAGE.count(".") + 1:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            return spec
        origin = Path(spec.origin)
        if origin.parent == HERE and _NJIT.search(origin.read_bytes()):
            spec.loader = _KeyedCacheLoader(fullname, spec.origin)
        return spec


if not any(isinstance(f, _KeyedCacheFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _KeyedCacheFinder())


def load_core() -> ModuleType:
    """Import the Numba JIT core (imports Numba; compiles or loads from cache on first call of each function)."""
    from virtkit.engines.riscv import core

    return core
