"""The ahead-of-time compiled RISC-V core: built once with ``numba.pycc``, loaded without importing Numba.

Importing Numba and refreshing its typing registry costs ~1 s per process before the first guest
instruction; a pycc extension module needs neither. :func:`build` compiles the core functions the
engine calls (:func:`virtkit.engines.riscv.engine.aot_exports`: names and live sample arguments, so
the exported signatures follow whatever the engine passes) into
``~/.cache/virtkit/aot/<key>/_virtkit_core<EXT_SUFFIX>`` (``$VIRTKIT_AOT_CACHE`` overrides the root),
where ``<key>`` hashes the engine sources, the Numba and Python versions and the host CPU.
:func:`load` imports it when the key and the argument types still match, else says why not.

This module imports neither Numba nor the core; the build runs in a subprocess
(``python -m virtkit.engines.riscv.aotbuild BUILD_DIR``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

from virtkit.engines.riscv.corecache import compiled_sources, numba_version
from virtkit.errors import VirtkitError

MODULE_NAME = "_virtkit_core"
META = "meta.json"
#: Bump when the build recipe changes in a way the key cannot see (flags, exported set...).
FORMAT = 1
#: How many AOT builds (source versions) the cache keeps.
KEEP_BUILDS = 4


class EngineBuildError(VirtkitError):
    """The AOT core could not be built (no C compiler, a compile error...)."""


def aot_root() -> Path:
    """Root of the AOT core cache (``$VIRTKIT_AOT_CACHE`` or ``~/.cache/virtkit/aot``)."""
    root = os.environ.get("VIRTKIT_AOT_CACHE") or os.path.join(Path.home(), ".cache", "virtkit", "aot")
    return Path(root)


def _host_cpu() -> str:
    """What the generated code depends on: the machine and its CPU feature flags (code is built for this CPU)."""
    flags = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features", "isa")):
                flags = line.split(":", 1)[-1].strip()
                break
    return f"{platform.machine()} {flags}"


def aot_key() -> str:
    """Hash of everything the AOT module depends on: engine sources, Numba, Python, host CPU, build format."""
    h = hashlib.sha256()
    for p in compiled_sources():
        h.update(p.name.encode())
        h.update(p.read_bytes())
    for part in (numba_version(), sys.version, sys.implementation.cache_tag, sysconfig.get_config_var("EXT_SUFFIX"),
                 _host_cpu(), str(FORMAT)):
        h.update(str(part).encode() + b"\0")
    return h.hexdigest()[:16]


def aot_dir() -> Path:
    """Directory of the AOT core for the current sources."""
    return aot_root() / aot_key()


def module_file(d: Path | None = None) -> Path:
    """Path of the extension module inside an AOT directory."""
    return (d or aot_dir()) / (MODULE_NAME + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))


def describe(value: object) -> str:
    """A Numba-free description of an argument's type, as the compiled signature sees it."""
    if isinstance(value, bool | np.bool_):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, np.ndarray):
        layout = "C" if value.flags.c_contiguous else "F" if value.flags.f_contiguous else "A"
        return f"array({value.dtype.str},{value.ndim},{layout},{'rw' if value.flags.writeable else 'ro'})"
    if isinstance(value, np.generic):
        return value.dtype.str
    if isinstance(value, tuple):
        return "(" + ",".join(describe(v) for v in value) + ")"
    return type(value).__name__


def describe_calls(calls: dict[str, tuple]) -> dict[str, str]:
    """``{name: args}`` -> ``{name: signature description}``."""
    return {name: describe(tuple(args)) for name, args in calls.items()}


def read_meta(d: Path | None = None) -> dict | None:
    """The build record of an AOT directory, or None when missing or unreadable."""
    try:
        meta = json.loads(((d or aot_dir()) / META).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def check(expected: dict[str, str] | None = None) -> str:
    """Why the AOT core cannot be used ("" when it can, as far as files and signatures tell)."""
    d = aot_dir()
    so = module_file(d)
    if not so.is_file():
        return f"no AOT core built for these sources ({d})"
    meta = read_meta(d)
    if meta is None:
        return f"AOT core in {d} has no readable {META}"
    if meta.get("key") != d.name:
        return f"AOT core in {d} was built for other sources (key {meta.get('key')!r})"
    if meta.get("size") != so.stat().st_size or meta.get("sha256") != _file_sha256(so):
        return f"AOT core {so} is damaged (size or checksum differs from the build record)"
    exports = meta.get("exports") or {}
    for name, sig in (expected or {}).items():
        if name not in exports:
            return f"AOT core lacks {name}()"
        if exports[name] != sig:
            return f"AOT core's {name}() was built for {exports[name]}, the engine passes {sig}"
    return ""


def _file_sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load(expected: dict[str, str] | None = None) -> tuple[ModuleType | None, str]:
    """Import the AOT core: ``(module, "")``, or ``(None, reason)`` when it is missing, stale or broken."""
    reason = check(expected)
    if reason:
        return None, reason
    so = module_file()
    try:
        spec = importlib.util.spec_from_file_location(MODULE_NAME, so)
        if spec is None or spec.loader is None:
            return None, f"cannot load the AOT core {so}"
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    except (ImportError, OSError) as err:
        return None, f"cannot load the AOT core {so}: {err}"
    missing = [n for n in (expected or {}) if not callable(getattr(mod, n, None))]
    if missing:
        return None, f"AOT core {so} lacks {', '.join(missing)}"
    return mod, ""


def status() -> dict:
    """What ``virtkit engine status`` reports: key, directory, whether a usable AOT core exists and why not."""
    d = aot_dir()
    reason = check()
    meta = read_meta(d) or {}
    return {
        "core": "jit" if reason or os.environ.get("VIRTKIT_CORE") == "jit" else "aot",
        "aot_ready": not reason,
        "reason": reason,
        "key": d.name,
        "dir": str(d),
        "module": str(module_file(d)),
        "numba": numba_version(),
        "python": platform.python_version(),
        "built_at": meta.get("built_at"),
        "build_seconds": meta.get("build_seconds"),
        "exports": sorted((meta.get("exports") or {}).keys()),
    }


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build(*, force: bool = False, progress: Callable[[float], None] | None = None) -> dict:
    """Build the AOT core for the current sources (minutes; cached), return :func:`status` plus ``built``.

    The compile runs in a subprocess (fresh Numba state, its own scratch JIT cache); ``progress``
    is called with the elapsed seconds about once a second. A failure raises EngineBuildError
    naming the log; nothing half-built is left in the cache.
    """
    d = aot_dir()
    try:
        with _lock(d.parent / f".lock-{d.name}"):
            return _build_locked(d, force, progress)
    except OSError as err:
        raise EngineBuildError(f"cannot build the AOT core in {d.parent}: {err}") from err


def _build_locked(d: Path, force: bool, progress: Callable[[float], None] | None) -> dict:
    root = d.parent
    if not force and not check():
        return {**status(), "built": False}
    tmp = root / f".build-{d.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log = root / f"build-{d.name}.log"
    env = dict(os.environ, VIRTKIT_NUMBA_CACHE=str(tmp / "numba-scratch"))
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "virtkit.engines.riscv.aotbuild", str(tmp)], stdout=out,
                                stderr=subprocess.STDOUT, env=env)
        try:
            while proc.poll() is None:
                if progress:
                    progress(time.monotonic() - t0)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(1.0)
        except BaseException:
            proc.kill()
            proc.wait()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    seconds = time.monotonic() - t0
    if proc.returncode != 0 or not module_file(tmp).is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise EngineBuildError(f"building the AOT core failed: {last[:300]} (full log: {log})")
    shutil.rmtree(tmp / "numba-scratch", ignore_errors=True)
    if aot_key() != d.name:  # the module would not match the key it is filed under
        shutil.rmtree(tmp, ignore_errors=True)
        raise EngineBuildError("the engine sources changed during the AOT build; run `virtkit engine build` again")
    meta = read_meta(tmp) or {}
    so = module_file(tmp)
    meta.update(key=d.name, built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                build_seconds=round(seconds, 1), size=so.stat().st_size, sha256=_file_sha256(so))
    (tmp / META).write_text(json.dumps(meta, indent=1))
    if d.exists():
        shutil.rmtree(d)
    os.replace(tmp, d)
    _prune(root, keep=d.name)
    return {**status(), "built": True}


def _prune(root: Path, keep: str, n: int = KEEP_BUILDS) -> None:
    """Drop all but the ``n`` most recent AOT builds (other checkouts may use the older keys; ~1 MB each)."""
    builds = sorted((p for p in root.iterdir() if p.is_dir() and len(p.name) == 16 and p.name != keep),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in builds[n - 1:]:
        shutil.rmtree(old, ignore_errors=True)
        for f in (root / f"build-{old.name}.log", root / f".lock-{old.name}"):
            f.unlink(missing_ok=True)
