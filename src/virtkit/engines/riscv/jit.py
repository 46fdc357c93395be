"""The JIT tier of the RISC-V engine: hot guest code regions translated to host code with LLVM (the runtime).

Split by concern: :mod:`~virtkit.engines.riscv.jitcodegen` (decoding and LLVM code generation),
:mod:`~virtkit.engines.riscv.jitcache` (the translation cache on disk), :mod:`~virtkit.engines.riscv.jitworker`
(the translator process), and this module (the tables shared with the core, requests, linking, preloading).

The Numba interpreter (``core.run_slice``) counts how often each block entry (the target of a
taken branch or jump, a trap vector, a return) is reached, keyed by the guest-physical RAM offset.
When a count reaches the threshold it queues the offset in a ring (``jreq``). A translator
thread (:meth:`Jit.service`) takes the hottest waiting entry and has the translator *process*
(``jitworker.py``; :func:`translate`) build a *region* from there: every instruction reachable
inside the same 4 KiB page through fall-through, branches and direct jumps, up to
``MAX_REGION`` instructions. Each region becomes one LLVM function (IR text -> llvmlite -> object
code, the same LLVM Numba uses) with the guest registers cached in SSA values inside a block,
intra-region branches as native jumps, the software TLB probed inline for loads and stores, and
the instruction limit checked on every backward branch. The engine links the object code (MCJIT)
and publishes its entry points in ``jtab``; the interpreter calls them through
``core.call_native``. Object code is also kept on disk (:func:`cache_root`) for later runs.
Deterministic engines translate in-process at once (``background=False``).

Only the common integer instructions are translated (RV64IM loads, stores, ALU, branches, jumps,
FENCE); anything else, and any access the inline TLB probe cannot serve (a TLB miss, a
misaligned access, MMIO, a store while another hart holds an LR reservation), makes the native
code stop *before* that instruction and hand it back to the interpreter ("bail"; after CSR, FP
and AMO instructions the region goes on and the core re-enters it at the next one). Traps,
CSRs, FP, AMOs, interrupts and timers therefore keep exactly one implementation: the
interpreter's. The translation is per physical page and independent of the virtual mapping
(pc-relative values are computed from the entry pc passed in).

Self-modifying code and DMA: ``cmap`` has one byte per 256-byte chunk of RAM; bit 0 says some
live region was translated from it. Every store (interpreter, native code, device DMA through
:class:`~virtkit.machine.memory.GuestMemory`) that hits such a chunk invalidates the regions
covering it before the next instruction runs; bits 1..7 count invalidations, and a chunk
invalidated ``MAX_INVALIDATIONS`` times is not translated again (code and data sharing a chunk).

The persistent cache and the warm start: a region file is keyed by its page's bytes and place, its
entry and the hart count; a per-page index (keyed by the page's bytes and place) maps every entry
of every region translated from that page to its file, with the guest instruction count at which a
run first wanted it. Before the first instruction the engine installs the cached regions of the
pages the images were loaded into, earliest wanted first (:meth:`Jit.plan_preload`,
:meth:`Jit.preload_some`; a saved plan per set of loads makes that one file read), each checked
against the page bytes it was compiled from. Requests that miss the cache wait until that is done.
A region cut by the instruction cap or the page end asks for its continuation at once; the core
asks again every ``REQ_AGAIN`` entries for a block that still runs interpreted.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import pickle
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np

from virtkit.engines.riscv import jitcodegen, jitworker
from virtkit.engines.riscv.consts import (
    CSHIFT,
    J_CFG,
    J_CMAP,
    J_RAM,
    J_SELF,
    J_TLBO,
    J_TLBT,
    J_X,
    JC_N,
    JMASK,
    JR_INVAL,
    JR_RING,
    JSIZE,
    JSTRIDE,
    JT_FN,
    JT_HI,
    JT_KEY,
    JT_LO,
    PAGE_SLOTS,
    REQ_N,
    jslot,
)
from virtkit.engines.riscv.jitcache import (
    MISS,
    _write_atomic,
    cache_root,
    load_region,
    page_key,
    prune_cache,
    read_page_index,
    region_key,
    translate,
    write_page_index,
)
from virtkit.engines.riscv.jitcodegen import Job, Result, _llvm_engine
from virtkit.errors import ConfigError
from virtkit.machine.memory import nonzero_pages

MAX_INVALIDATIONS = 4
DEFAULT_THRESHOLD = 64
BACKLOG = 256  # requests kept waiting for the translator (the coldest are dropped, and asked for again if hot)
BATCH = 1  # regions per translator round trip: the first one is installed as soon as it is ready
PRELOAD_MAX = 8192  # cached regions installed at most before the guest asks (the table has JSIZE slots)
PRELOAD_FIRST = 48  # of them installed before the guest's first instruction
PRELOAD_SYNC_PAGES = 64  # up to this many loaded pages and no saved plan: planned before the first instruction too
PRELOAD_SCAN_MAX = 256 << 20  # RAM scanned for loaded pages when no load was seen (bytes)


def parse_threshold(text: str, what: str = "VIRTKIT_JIT") -> int:
    """``off`` (0: no JIT) or a hotness threshold >= 0; :class:`ConfigError` naming ``what`` otherwise."""
    v = text.strip().lower()
    if v in ("off", "no", "false", "none"):
        return 0
    try:
        n = int(v)
    except ValueError:
        n = -1
    if n < 0:
        raise ConfigError(f"{what} must be 'off' or a threshold (a number >= 0): {v!r}")
    return n


def threshold_from_env(default: int = DEFAULT_THRESHOLD) -> int:
    """``$VIRTKIT_JIT``: ``0``/``off`` disables the JIT, a number sets the hotness threshold."""
    v = os.environ.get("VIRTKIT_JIT", "").strip()
    return parse_threshold(v) if v else default


_shutdown = False
_threads: list[threading.Thread] = []
_linked: dict[str, int] = {}  # region function name -> address in this process
_pruned = False


@atexit.register
def _stop_translators() -> None:
    """At exit, let running translations finish before LLVM's globals are torn down."""
    global _shutdown
    _shutdown = True
    if jitworker.the_worker is not None:  # nothing to save there (cache files are written atomically): stop it
        jitworker.the_worker.proc.kill()
    for t in _threads:  # a thread linking a region finishes it (LLVM must not be torn down under it)
        t.join(timeout=1.0)
    # The compiled code must outlive every thread that may still run it, and llvmlite's finalizers fail
    # once the interpreter is half torn down ("Exception ignored ... ObjectRef.__del__"): leave the
    # execution engines to the process exit.
    if jitcodegen._llvm is not None:
        for obj in jitcodegen._llvm[1:]:
            obj._closed = True


def _link(res: Result) -> int:
    """Link a region's object code into this process (once per region) and return its entry address."""
    llvm, _, eng = _llvm_engine()
    with jitcodegen._llvm_lock:
        fn = _linked.get(res.name)
        if fn is None:  # the same region (same code, same place) is linked once per process
            eng.add_object_file(llvm.ObjectFileRef.from_data(res.obj))
            eng.finalize_object()
            fn = _linked[res.name] = eng.get_function_address(res.name)
        return fn


def preload_from_env() -> bool:
    """``$VIRTKIT_JIT_PRELOAD``: ``off`` starts every run with no native code, even with a warm cache."""
    v = os.environ.get("VIRTKIT_JIT_PRELOAD", "on").strip().lower()
    if v in ("on", "yes", "1", ""):
        return True
    if v in ("off", "no", "0"):
        return False
    raise ConfigError(f"VIRTKIT_JIT_PRELOAD must be 'on' or 'off': {v!r}")


class Jit:
    """Tables shared with the core, the translator, and the statistics of one engine.

    ``background=True``: a daemon thread drains the request ring and has a translator *process*
    compile the regions to object code (so neither the compiler nor the Python decoder competes
    with the vCPU for the GIL), then links and installs them. ``background=False``: the engine calls
    :meth:`service` between core calls and regions are compiled in-process at once (the core
    returns as soon as one is queued: deterministic runs).
    """

    def __init__(self, ram: np.ndarray, nharts: int, ctab: np.ndarray, threshold: int,
                 background: bool = True) -> None:
        self.threshold = threshold
        self.nharts = nharts
        self.background = background
        self._ram = ram
        self._ctab = ctab
        # one row per column (JT_KEY...): the keys the interpreter probes at every block entry are contiguous,
        # and a page's entries share cache lines
        self.jtab = np.full((4, JSIZE), -1, dtype=np.int64)
        self.jhot = np.zeros(JSIZE, dtype=np.int64)
        self.jreq = np.zeros(JR_RING + REQ_N, dtype=np.int64)
        self.cmap = np.zeros((ram.size >> CSHIFT) + 1, dtype=np.uint8)
        self.jctx = np.zeros((nharts, JC_N), dtype=np.int64)
        self.regions = 0
        self.entries = 0
        self.compile_seconds = 0.0
        self.refused = 0
        self.stale = 0
        self.cache_hits = 0  # regions (or "not worth it" answers) read from the persistent cache
        self.translated = 0  # regions sent to the translator
        self.preloaded = 0  # regions installed before the guest asked for them (:meth:`preload_some`)
        self._pages: dict[str, dict[int, tuple[str | None, int]]] = {}  # page key -> page index
        #: Guest instructions retired so far (the engine sets it): when a region was first wanted, in
        #: a unit that is the same from run to run (the page indexes keep the earliest; preload follows it).
        self.clock: Callable[[], int] = lambda: 0
        self._preload: list[tuple[int, int, str, str]] | None = None  # (order, page, page key, region key)
        self._plan_file: Path | None = None
        # (page, page key) -> the page's bytes when they had that key, None when they did not
        self._plan_checked: dict[tuple[int, str], bytes | None] = {}
        self._loaded: list[int] | None = None
        self._plan_refreshed = False
        self._installed_plan: list[tuple[int, int, str, str]] = []  # plan items already taken
        self._deferred: list[int] = []  # entries to translate once the preload is done
        self._written: list[tuple[int, int]] = []  # RAM written from outside before the first run (images)
        #: which RAM pages the guest has touched (GuestMemory.resident_pages; None: unknown): the warm start's
        #: scan of RAM filled before the engine existed reads only those
        self.resident: Callable[[], np.ndarray | None] = lambda: None
        self.preload_enabled = preload_from_env()
        self._thread: threading.Thread | None = None
        self._backlog: list[int] = []  # requested entries not translated yet
        self._lock = threading.Lock()

    def bind(self, x: np.ndarray, ram: np.ndarray, tlbt: np.ndarray, tlbo: np.ndarray, cfg: np.ndarray) -> None:
        """Fill each hart's context row with the addresses the native code uses."""
        for h in range(self.nharts):
            row = self.jctx[h]
            row[J_SELF] = self.jctx.ctypes.data + h * JC_N * 8
            row[J_X] = x.ctypes.data + h * x.strides[0]
            row[J_RAM] = ram.ctypes.data
            row[J_TLBT] = tlbt.ctypes.data + h * tlbt.strides[0]
            row[J_TLBO] = tlbo.ctypes.data + h * tlbo.strides[0]
            row[J_CMAP] = self.cmap.ctypes.data
            row[J_CFG] = cfg.ctypes.data

    def pending(self) -> bool:
        """Block entries are queued for translation."""
        return int(self.jreq[0]) != int(self.jreq[1]) or bool(self._backlog)

    def start(self) -> None:
        """Start the background translator (once; the engine calls it on its first run)."""
        if self._thread is not None or not self.background or self.threshold <= 0:
            return
        # warm start: the earliest cached regions of the loaded images are installed before the first
        # instruction (the firmware's first loops), the rest by the translator thread as the guest runs
        # (a saved plan is one file; planning from the page indexes hashes every loaded page: the thread does that)
        self.plan_preload(from_indexes=len(self._loaded_pages()) <= PRELOAD_SYNC_PAGES)
        if self._preload:
            self.preload_some(PRELOAD_FIRST)
        global _pruned
        if not _pruned:
            _pruned = True
            threading.Thread(target=prune_cache, name="virtkit-jit-prune", daemon=True).start()
        ref = weakref.ref(self)
        self._thread = threading.Thread(target=_translator, args=(ref,), name="virtkit-jit", daemon=True)
        _threads[:] = [t for t in _threads if t.is_alive()] + [self._thread]
        self._thread.start()

    def service(self, rounds: int = 1 << 30) -> None:
        """Translate and install the regions queued since the last call (the caller's thread), at most
        ``rounds`` batches."""
        with self._lock:
            while not _shutdown and rounds > 0:
                rounds -= 1
                head = int(self.jreq[0])
                tail = int(self.jreq[1])
                if head != tail:  # newest first: what was hot last is most likely still hot
                    tail = max(tail, head - REQ_N)
                    fresh = [int(self.jreq[JR_RING + (i & (REQ_N - 1))]) for i in range(head - 1, tail - 1, -1)]
                    self.jreq[1] = head
                    self._backlog = fresh + self._backlog
                    self._trim_backlog()
                if not self._backlog:
                    return
                # hottest first: the core keeps counting entries into untranslated code, so jhot says
                # which waiting entry the guest runs most right now
                self._backlog.sort(key=lambda o: -int(self.jhot[jslot(o)]))
                offs, self._backlog = self._backlog[:BATCH], self._backlog[BATCH:]
                jobs = []
                for off in dict.fromkeys(offs):
                    if self.jtab[JT_KEY, jslot(off)] != off:  # not already an entry of a region
                        jobs.append(self._job(off))
                if jobs:
                    self._run(jobs)

    def release_deferred(self) -> None:
        """Once the preload is done, the translations that waited for it join the backlog."""
        if self._deferred and not self.preloading():
            with self._lock:
                self._backlog = list(dict.fromkeys(self._deferred + self._backlog))
                self._deferred.clear()
                self._trim_backlog()

    def _trim_backlog(self) -> None:
        """Keep the BACKLOG hottest waiting entries; the others count from 0 again (asked for again if still hot)."""
        if len(self._backlog) > BACKLOG:
            self._backlog.sort(key=lambda o: -int(self.jhot[jslot(o)]))
            for o in self._backlog[BACKLOG:]:
                self.jhot[jslot(o)] = 0
            del self._backlog[BACKLOG:]

    def _job(self, entry: int) -> Job:
        page = entry & ~0xFFF
        return Job(page, entry, bytes(self._ram[page : page + 4096]))

    def _run(self, jobs: list[Job]) -> None:
        """Translate ``jobs`` (in the worker process when there is one), link and install the results."""
        t = time.monotonic()
        # translations kept from earlier runs are read here; only the others are translated
        results: list[Result | None | object] = [self._cached(j) for j in jobs]
        misses = [j for j, r in zip(jobs, results, strict=True) if r is MISS]
        self.cache_hits += len(jobs) - len(misses)
        if misses and self.preloading():
            # the translator process waits until the preload is done: the cached code the guest needs
            # first goes in sooner, and the process's start-up does not compete with it for the CPU
            self._deferred.extend(j.entry for j in misses)
            jobs = [j for j, r in zip(jobs, results, strict=True) if r is not MISS]
            results = [r for r in results if r is not MISS]
            misses = []
        self.translated += len(misses)
        if misses:
            if self.background:
                fresh = jitworker.worker(self._ctab).translate(misses, self.nharts)
            else:
                fresh = [translate(j, self._ctab, self.nharts) for j in misses]
            for j, r in zip(misses, fresh, strict=True):
                self._remember(j, r)
            done = iter(fresh)
            results = [next(done) if r is MISS else r for r in results]
        for job, res in zip(jobs, results, strict=True):
            if res is None:
                self.refused += 1
                continue
            if (self.cmap[res.lo : res.hi + 1] >> 1).max() >= MAX_INVALIDATIONS:
                self.refused += 1  # code and data share these chunks: translating again would only thrash
                continue
            self._install(job, res, _link(res))  # type: ignore[arg-type]
            for o in res.succ:  # type: ignore[union-attr]
                # the code after a capped region, or in the next page: wanted next, not after 64 more trips
                if o < self._ram.size and self.jtab[JT_KEY, jslot(o)] != o and o not in self._backlog:
                    self._backlog.insert(0, o)
        self.compile_seconds += time.monotonic() - t

    def _page_index(self, job: Job) -> tuple[str, dict[int, tuple[str | None, int]]]:
        pkey = page_key(job.code, job.page, self.nharts)
        idx = self._pages.get(pkey)
        if idx is None:
            idx = self._pages[pkey] = read_page_index(pkey)
        return pkey, idx

    def _cached(self, job: Job) -> Result | None | object:
        """The translation of ``job`` kept by an earlier run (any region of the page with this entry), or MISS."""
        if cache_root() is None:
            return MISS
        pkey, idx = self._page_index(job)
        known = idx.get(job.entry)
        if known is None:
            return MISS
        now = self.clock()
        if now < known[1]:  # wanted earlier in this run than ever before: preload it earlier next time
            self._pages[pkey] = write_page_index(pkey, {job.entry: (known[0], now)})
        if known[0] is None:
            return None
        res = load_region(known[0])
        return res if res is None or (isinstance(res, Result) and job.entry in res.entries) else MISS

    def _remember(self, job: Job, res: Result | None) -> None:
        """Record a fresh translation in its page's index (every entry of the region points to it)."""
        if cache_root() is None:
            return
        now = self.clock()
        key = region_key(job, self.nharts)
        new = {job.entry: (None, now)} if res is None else {e: (key, now) for e in res.entries}
        pkey, _ = self._page_index(job)
        self._pages[pkey] = write_page_index(pkey, new)

    # ---- warm start -----------------------------------------------------------------------------
    def preloading(self) -> bool:
        """The background translator is still installing cached regions (translations wait)."""
        return self.background and (self._preload is None or bool(self._preload) or not self._plan_refreshed)

    def _loaded_pages(self) -> list[int]:
        """Pages written from outside before the first run (the images), or RAM's non-zero pages."""
        if self._loaded is None:
            pages = sorted({p for off, n in self._written for p in range(off >> 12, ((off + n - 1) >> 12) + 1)})
            ram = self._ram
            if not pages and ram.size <= PRELOAD_SCAN_MAX:  # RAM filled before the engine existed: look at it
                # (touched pages only: a post-copy target's missing pages must not be read here, with the GIL
                # held, while only a Python thread can notice that they will never come)
                npages = ram.size >> 12
                pages = np.flatnonzero(nonzero_pages(ram[: npages << 12], self.resident())).tolist()
            self._loaded = pages
        return self._loaded

    def _plan_path(self) -> Path | None:
        """The saved preload plan for what was loaded where (validated page by page when used)."""
        root = cache_root()
        if root is None:
            return None
        h = hashlib.sha256(f"{self.nharts}:{self._ram.size}:{sorted(self._written)}".encode())
        return root / "plans" / h.hexdigest()[:32]

    def plan_preload(self, from_indexes: bool = True) -> None:
        """List the cached regions of the pages loaded before the first run (firmware, kernel...).

        Fast path: the plan an earlier run saved for the same loads (one file). Otherwise (and, in the
        translator thread, after a saved plan has been installed) from the page indexes: hash every
        loaded page, read its index. :meth:`preload_some` installs them, earliest wanted first.
        """
        self._preload = []
        if not self.preload_enabled or cache_root() is None or self.threshold <= 0:
            self._plan_refreshed = True  # nothing to plan, now or later
            return
        self._plan_file = self._plan_path()
        try:
            saved = pickle.loads(self._plan_file.read_bytes()) if self._plan_file is not None else None
        except Exception:  # missing or damaged: planned from the indexes
            saved = None
        if isinstance(saved, list):
            self._preload = saved[-PRELOAD_MAX:]
            return
        if from_indexes:
            self._preload = self._plan_from_indexes(set())
            self._plan_refreshed = True
            self._save_plan(self._preload)
        else:
            self._preload = None  # not planned yet: the translator thread plans from the indexes

    def _plan_from_indexes(self, skip: set[str]) -> list[tuple[int, int, str, str]]:
        ram = self._ram
        plan: dict[str, tuple[int, int, str, str]] = {}
        for p in self._loaded_pages():
            code = bytes(ram[p << 12 : (p + 1) << 12])
            pkey = page_key(code, p << 12, self.nharts)
            idx = read_page_index(pkey)
            if not idx:
                continue
            self._plan_checked[(p << 12, pkey)] = code
            self._pages[pkey] = idx
            for key, order in idx.values():
                if key is not None and key not in skip and (key not in plan or order < plan[key][0]):
                    plan[key] = (order, p << 12, pkey, key)
        return sorted(plan.values(), reverse=True)[-PRELOAD_MAX:]  # popped from the end

    def _save_plan(self, plan: list[tuple[int, int, str, str]]) -> None:
        if self._plan_file is not None:
            _write_atomic(self._plan_file, pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL))

    def preload_some(self, n: int = 8) -> bool:
        """Install up to ``n`` planned regions; False when nothing is left to preload.

        When a saved plan runs out, the translator thread plans again from the page indexes (what the
        last runs added) and saves that plan for the next run.
        """
        if self._preload is None:
            self.plan_preload()
        plan = self._preload
        assert plan is not None
        if not plan and not self._plan_refreshed:  # a saved plan is done: add what the last runs translated
            self._plan_refreshed = True
            fresh = self._plan_from_indexes({key for _, _, _, key in self._installed_plan})
            self._save_plan(sorted(self._installed_plan + fresh, reverse=True))
            self._preload = plan = fresh
        t = time.monotonic()
        with self._lock:
            for _ in range(min(n, len(plan))):
                if _shutdown:
                    break
                item = plan.pop()
                self._installed_plan.append(item)
                _, page, pkey, key = item
                # the page must hold the bytes this region was compiled from: plans are shared by every
                # guest loaded the same way, so one page may have items of several programs
                if (page, pkey) in self._plan_checked:
                    code = self._plan_checked[(page, pkey)]
                else:
                    code = bytes(self._ram[page : page + 4096])
                    if page_key(code, page, self.nharts) != pkey:
                        code = None
                    self._plan_checked[(page, pkey)] = code
                if code is None:
                    continue
                res = load_region(key)
                if not isinstance(res, Result) or not res.entries:
                    continue
                if all(self.jtab[JT_KEY, jslot(e)] == e for e in res.entries):
                    continue
                # the bytes the page key was checked on: a store since then makes _install() refuse it
                job = Job(page, res.entries[0], code)
                before = self.regions
                self._install(job, res, _link(res))
                self.preloaded += self.regions - before
        self.compile_seconds += time.monotonic() - t
        return bool(plan) or not self._plan_refreshed

    def _install(self, job: Job, res: Result, fn: int) -> None:
        """Publish ``fn`` for the region's entries unless its code changed since the job was made."""
        # mark the chunks first: any store from now on drops the region (or the checks below see it)
        self.cmap[res.lo : res.hi + 1] |= 1
        span = slice(res.lo << CSHIFT, (res.hi + 1) << CSHIFT)
        snap = job.code[span.start - job.page : span.stop - job.page]
        if bytes(self._ram[span]) != snap:
            self.stale += 1
            return
        slots = [jslot(e) for e in res.entries]
        for e, ji in zip(res.entries, slots, strict=True):
            self.jtab[JT_KEY, ji] = -1
            self.jtab[JT_FN, ji] = fn
            self.jtab[JT_LO, ji] = res.lo
            self.jtab[JT_HI, ji] = res.hi
            self.jtab[JT_KEY, ji] = e
        if bytes(self._ram[span]) != snap:  # a store raced with the installation: take it back
            for e, ji in zip(res.entries, slots, strict=True):
                if self.jtab[JT_KEY, ji] == e and self.jtab[JT_FN, ji] == fn:
                    self.jtab[JT_KEY, ji] = -1
            self.stale += 1
            return
        self.regions += 1
        self.entries += len(res.entries)

    def drop_all(self) -> None:
        """Forget every translation and hotness count (RAM was replaced: a restored snapshot)."""
        self.jtab[JT_KEY, :] = -1
        self.jhot[:] = 0
        self.cmap[:] = 0
        self._backlog.clear()
        self.jreq[JR_INVAL] += 1

    def invalidate(self, off: int, n: int) -> None:
        """Drop the regions translated from RAM ``[off, off+n)`` (device DMA, image loading)."""
        if n <= 0:
            return
        if self._loaded is None and len(self._written) < 64:
            # firmware, kernel, initrd...: where the preload looks, frozen when the engine starts (device DMA
            # after that must not change the key of the saved plan the next run looks up)
            self._written.append((off, n))
        lo = off >> CSHIFT
        hi = (off + n - 1) >> CSHIFT
        seg = self.cmap[lo : hi + 1]
        if not (seg & 1).any():
            return
        first, last = off >> 12, (off + n - 1) >> 12
        if (last - first + 1) * PAGE_SLOTS < JSIZE:  # a region lies in one page: only its slots can hold it
            slots = ((np.arange(first, last + 1)[:, None] * JSTRIDE + np.arange(PAGE_SLOTS)) & JMASK).ravel()
        else:
            slots = np.arange(JSIZE)
        cols = self.jtab[:, slots]
        kill = slots[(cols[JT_KEY] >= 0) & (cols[JT_LO] <= hi) & (cols[JT_HI] >= lo)]
        self.jtab[JT_KEY, kill] = -1
        self.jhot[kill] = 0
        hit = (seg & 1) != 0
        cnt = np.minimum((seg >> 1) + 1, 127).astype(np.uint8)
        seg[hit] = (cnt[hit] << 1).astype(np.uint8)
        self.jreq[JR_INVAL] += 1

    def stats(self) -> dict:
        """Regions compiled, their entry points, time spent compiling, invalidations."""
        return {
            "threshold": self.threshold,
            "background": self.background,
            "regions": self.regions,
            "entries": self.entries,
            "compile_seconds": round(self.compile_seconds, 3),
            "invalidations": int(self.jreq[JR_INVAL]),
            "refused": self.refused,
            "stale": self.stale,
            "cache_hits": self.cache_hits,
            "translated": self.translated,
            "preloaded": self.preloaded,
        }


def _translator(ref: weakref.ref) -> None:
    """The background translator: preloads cached regions, then polls the request ring while its engine lives."""
    idle = 0.001
    while not _shutdown:
        j = ref()
        if j is None:
            return
        busy = False
        if j.preloading():  # interleaved with the requests (cache hits; translations wait for the end)
            busy = True
            try:
                j.preload_some()
            except Exception as err:  # a damaged cache must not kill the VM: the guest's requests go on
                print(f"virtkit: JIT preload stopped: {err!r}", file=sys.stderr)
                j._preload = []
                j._plan_refreshed = True
            j.release_deferred()
        if j.pending():
            busy = True
            try:
                j.service(rounds=1)
            except Exception as err:  # a translator bug must not kill the VM: the interpreter runs on
                if not _shutdown:  # (at exit the translator process is stopped under it: not news)
                    print(f"virtkit: JIT translator stopped: {err!r}", file=sys.stderr)
                return
        del j
        if busy:
            idle = 0.001
            continue
        idle = min(idle * 2, 0.005)
        time.sleep(idle)
