"""The JIT's translation cache on disk: object code kept between runs, found again by page and entry.

A region file is keyed by its page's bytes and place, its entry and the hart count (:func:`region_key`); a
per-page index (:func:`page_key`) maps every entry of every region translated from that page to its file and the
guest instruction count at which a run first wanted it. The version directory (:func:`cache_root`) hashes
everything a translation depends on: the code generator, the table layout and LLVM.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import threading
from pathlib import Path

import numpy as np

from virtkit.engines.riscv.jitcodegen import Job, Result, compile_region

_NOT_WORTH = b"-"  # a cache file saying "decoded, not worth translating"


def cache_root() -> Path | None:
    """Where translated regions are kept between runs (``$VIRTKIT_JIT_CACHE``; ``off`` disables it)."""
    v = os.environ.get("VIRTKIT_JIT_CACHE", "")
    if v.lower() in ("off", "no", "none", "0"):
        return None
    root = Path(v) if v else Path.home() / ".cache" / "virtkit" / "jit"
    return root / _jit_version()


_version: str | None = None


def _jit_version() -> str:
    """Hash of everything a translation depends on: the code generator, the cache format, the table layout, LLVM."""
    global _version
    if _version is None:
        import llvmlite

        h = hashlib.sha256()
        here = Path(__file__).resolve().parent
        for name in ("jitcodegen.py", "jitcache.py", "consts.py"):
            h.update((here / name).read_bytes())
        h.update(llvmlite.__version__.encode())
        _version = h.hexdigest()[:16]
    return _version


def region_key(job: Job, nharts: int) -> str:
    """The persistent-cache key of a job: the page's bytes and RAM offset, the entry, the hart count."""
    h = hashlib.sha256(job.code)
    h.update(f"{job.page}:{job.entry}:{nharts}".encode())
    return h.hexdigest()[:32]


def translate(job: Job, ctab: np.ndarray, nharts: int) -> Result | None:
    """Decode and compile one region to object code (runs in the translator process); None if not worth it.

    Results are kept on disk (:func:`cache_root`) keyed by :func:`region_key`: the same guest code at
    the same place (the kernel of every boot) is translated once, later runs load the object code.
    """
    key, path = _cache_file(job, nharts)
    hit = _load(path, key)
    if hit is not MISS:
        return hit  # type: ignore[return-value]
    res = compile_region(job, ctab, nharts, f"vk_{key}")
    if path is not None:
        _write_atomic(path, _NOT_WORTH if res is None else pickle.dumps(res, protocol=pickle.HIGHEST_PROTOCOL))
    return res


def _write_atomic(path: Path, data: bytes) -> None:
    """Write a cache file whole or not at all (a temporary file renamed; other VMs may read it meanwhile).
    A read-only or full cache only costs later runs the work again."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        pass


MISS = object()
CACHE_MAX_FILES = 50_000  # a version directory past this is cleared (guest user code lands anywhere in RAM)


def prune_cache() -> None:
    """Drop translations of other translator versions, and this version's when it grew past the cap."""
    root = cache_root()
    if root is None or not root.parent.is_dir():
        return
    for d in root.parent.iterdir():
        if d.is_dir() and d.name != root.name:
            shutil.rmtree(d, ignore_errors=True)
    if root.is_dir():
        with os.scandir(root) as subdirs:  # 256 two-hex-digit directories at most
            count = sum(len(os.listdir(d.path)) for d in subdirs if d.is_dir())
        if count > CACHE_MAX_FILES:
            shutil.rmtree(root, ignore_errors=True)


def _cache_file(job: Job, nharts: int) -> tuple[str, Path | None]:
    """The job's cache key and file (None when the cache is off)."""
    key = region_key(job, nharts)
    return key, _region_path(key)


def _region_path(key: str) -> Path | None:
    root = cache_root()
    return None if root is None else root / key[:2] / key


def _load(path: Path | None, key: str) -> Result | None | object:
    if path is None:
        return MISS
    try:
        data = path.read_bytes()
    except OSError:
        return MISS
    if data == _NOT_WORTH:
        return None
    try:
        res = pickle.loads(data)
    except Exception:  # a damaged cache file: translate again (and replace it)
        return MISS
    return res if isinstance(res, Result) and res.name == f"vk_{key}" else MISS


def page_key(code: bytes, page: int, nharts: int) -> str:
    """The persistent-cache key of a page: its bytes, its RAM offset and the hart count."""
    h = hashlib.sha256(code)
    h.update(f"{page}:{nharts}".encode())
    return h.hexdigest()[:32]


def _index_file(pkey: str) -> Path | None:
    root = cache_root()
    return None if root is None else root / "pages" / pkey[:2] / pkey


def read_page_index(pkey: str) -> dict[int, tuple[str | None, int]]:
    """What earlier runs translated in a page: entry -> (region key, or None for "not worth it"; order).

    A region has many entries (branch targets inside it); which one a run asks for first depends on
    timing, so lookups go through the page: any earlier region that has the entry serves it.
    """
    path = _index_file(pkey)
    if path is None:
        return {}
    try:
        idx = pickle.loads(path.read_bytes())
    except Exception:  # missing or damaged: the page is translated again (and the index rewritten)
        return {}
    return idx if isinstance(idx, dict) else {}


def write_page_index(pkey: str, new: dict[int, tuple[str | None, int]]) -> dict[int, tuple[str | None, int]]:
    """Merge ``new`` into the page's index on disk (another VM may have added entries); the merged index."""
    path = _index_file(pkey)
    idx = read_page_index(pkey)
    for e, (key, order) in new.items():
        old = idx.get(e)
        idx[e] = (key, order if old is None else min(order, old[1]))
    if path is not None:
        _write_atomic(path, pickle.dumps(idx, protocol=pickle.HIGHEST_PROTOCOL))
    return idx


def load_region(key: str) -> Result | None | object:
    """The region file ``key`` of the cache (a Result, None for "not worth it"), or MISS."""
    return _load(_region_path(key), key)


