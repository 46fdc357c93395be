"""Storage pools: physical devices cut into extents, handed out as logical volumes.

A :class:`Pool` groups several devices (files or block devices). Each device carries a label
and is divided into physical extents (PEs, default 4 MiB). A volume is a list of *chunks*; a
chunk is ``width`` PEs on distinct devices laid out linear, striped, mirror or parity (see
:mod:`virtkit.storage.raid`). Chunks are reference counted, which gives thin provisioning
(a chunk is allocated on first write), copy-on-write snapshots (a snapshot shares its origin's
chunks) and rollback. Volumes grow while open, extents move between devices online, and a
failed device is rebuilt onto a replacement. Each volume is a
:class:`~virtkit.storage.backend.BlockBackend`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import math
import mmap
import os
import re
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virtkit.errors import VirtkitError
from virtkit.storage import lock as imglock
from virtkit.storage.backend import BlockError, check_range
from virtkit.storage.pool_meta import (
    DATA_START,
    LABEL_SIZE,
    META_VERSION,
    Label,
    MetadataError,
    PoolError,
    load_slots,
    read_label,
    write_slot,
)
from virtkit.storage.raid import Geometry, xor_into

__all__ = [
    "Pool", "PoolError", "MetadataError", "VolumeBackend", "parse_size", "format_size", "pools_root",
    "open_volume_spec", "is_volume_spec", "shared_pool",
]

DEFAULT_EXTENT = 4 << 20
DEFAULT_STRIPE = 64 << 10
DEFAULT_WARN_PERCENT = 80
MAX_CHUNKS = 1 << 24  # chunks per volume: 64 TiB with 4 MiB extents (the chunk map is held in memory)
POOLS_ENV = "VIRTKIT_POOLS_DIR"
#: the files beside the metadata slots: transaction lock, sessions, volume and chunk locks, published sequence
POOL_FILES = ("lock", "sessions", "volumes.lock", "chunks.lock", "seq")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


# --------------------------------------------------------------------------- helpers


def pools_root() -> Path:
    """Directory holding pools by name: $VIRTKIT_POOLS_DIR or ~/.local/share/virtkit/pools."""
    env = os.environ.get(POOLS_ENV)
    return Path(env) if env else Path.home() / ".local" / "share" / "virtkit" / "pools"


def parse_size(text: str | int) -> int:
    """``1G``, ``512M``, ``1.5G``, ``4096`` -> bytes (:func:`virtkit.units.parse_size`: the one size parser);
    PoolError otherwise."""
    from virtkit.units import parse_size as _parse

    if isinstance(text, int) and text < 0:
        raise PoolError(f"size must not be negative (got {text})")
    try:
        return _parse(text)
    except VirtkitError as err:
        raise PoolError(str(err)) from None


def format_size(n: int) -> str:
    """Human-readable binary size, as everywhere in virtkit (:func:`virtkit.units.format_size`)."""
    from virtkit.units import format_size as _format

    return _format(n)


def check_name(kind: str, name: str) -> str:
    """Validate a pool or volume name (letters, digits, ``_.+-``; at most 64 characters)."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise PoolError(
            f"bad {kind} name {name!r}: use 1-64 letters, digits, '_', '.', '+' or '-', starting with a letter or digit"
        )
    return name


def pool_statuses(root: Path | None = None) -> list[tuple[str, dict[str, Any] | None, str | None]]:
    """(name, status or None, error or None) of every pool under ``root`` (default :func:`pools_root`), by
    name: what ``virtkit pool list`` and the daemon's ``/pools`` show."""
    root = root or pools_root()
    out: list[tuple[str, dict[str, Any] | None, str | None]] = []
    for entry in sorted(os.listdir(root)) if root.is_dir() else []:
        if not any((root / entry / f"metadata.{i}").exists() for i in (0, 1)):
            continue
        try:
            with Pool.open(root / entry, read_only=True) as pool:
                out.append((entry, pool.status(), None))
        except PoolError as err:
            out.append((entry, None, str(err)))
    return out


def resolve_pool_dir(name_or_path: str | os.PathLike[str], root: Path | None = None) -> Path:
    """A pool named ``NAME`` lives in ``<root>/NAME``; anything with a slash is a directory path."""
    text = os.fspath(name_or_path)
    if "/" in text or text.startswith("."):
        return Path(text).absolute()
    check_name("pool", text)
    return (root or pools_root()) / text


def _punch(fd: int, offset: int, length: int) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.fallocate(fd, 0x03, ctypes.c_long(offset), ctypes.c_long(length)) == 0


class _Degraded(Exception):
    """Internal: a column's device is failed or missing; the caller falls back or gives up."""


class _Changed(Exception):
    """Internal: another process changed the metadata under a request; look it up again."""


# --------------------------------------------------------------------------- devices


@dataclass
class Device:
    """One physical device of a pool: its label fields, open fd, state and PE allocation map."""

    id: int
    uuid: str
    path: str
    pe_count: int
    data_start: int
    extent: int
    state: str = "ok"  # ok | failed | missing
    reason: str = ""
    fd: int = -1
    used: bytearray = field(default_factory=bytearray)
    free: int = 0
    draining: bool = False  # being evacuated: no new allocations here

    @property
    def alive(self) -> bool:
        return self.state == "ok" and self.fd >= 0

    def pos(self, pe: int, off: int) -> int:
        return self.data_start + pe * self.extent + off

    def read(self, pe: int, off: int, buf: memoryview) -> None:
        n = os.preadv(self.fd, [buf], self.pos(pe, off))
        if n != len(buf):
            raise OSError(errno.EIO, f"short read on {self.path}")

    def write(self, pe: int, off: int, data: memoryview | bytes) -> None:
        n = os.pwritev(self.fd, [data], self.pos(pe, off))
        if n != len(data):
            raise OSError(errno.EIO, f"short write on {self.path}")

    def zero(self, pe: int) -> None:
        """Make extent ``pe`` read as zeros (punch a hole, else write zeros)."""
        start = self.pos(pe, 0)
        if _punch(self.fd, start, self.extent):
            return
        chunk = bytes(min(self.extent, 1 << 20))
        for o in range(0, self.extent, len(chunk)):
            os.pwrite(self.fd, chunk, start + o)

    def alloc(self) -> int:
        pe = self.used.find(0)
        if pe < 0:
            raise PoolError(f"device {self.path} has no free extents")
        self.used[pe] = 1
        self.free -= 1
        return pe

    def release(self, pe: int) -> None:
        if self.used[pe]:
            self.used[pe] = 0
            self.free += 1

    def to_meta(self) -> dict[str, Any]:
        state = "failed" if self.state != "ok" else "ok"
        return {
            "id": self.id,
            "uuid": self.uuid,
            "path": self.path,
            "pe_count": self.pe_count,
            "data_start": self.data_start,
            "state": state,
            "reason": self.reason,
            "draining": self.draining,
        }


@dataclass
class Volume:
    """A logical volume: size, chunk geometry and the chunk map (None = unallocated, thin)."""

    name: str
    size: int
    geo: Geometry
    thin: bool
    map: list[int | None]
    snapshot_of: str | None = None
    read_only: bool = False
    created: float = 0.0
    opened: int = 0  # opens in this process (other processes: the volume's lock byte)
    writers: int = 0  # of them, read-write
    locks: int = 0  # of them, holding the volume's lock byte
    id: int = 0
    #: an online layout conversion in progress (volume convert)
    convert: Conversion | None = None
    deleted: bool = False  # another process deleted it while this one had it open

    def to_meta(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "size": self.size,
            "layout": self.geo.layout,
            "width": self.geo.width,
            "stripe": self.geo.stripe,
            "thin": self.thin,
            "map": [[ci, cid] for ci, cid in enumerate(self.map) if cid is not None],
            "snapshot_of": self.snapshot_of,
            "read_only": self.read_only,
            "created": self.created,
            "convert": None if self.convert is None else {
                "layout": self.convert.geo.layout, "width": self.convert.geo.width, "stripe": self.convert.geo.stripe,
                "done": self.convert.done,
                "map": [[ci, cid] for ci, cid in enumerate(self.convert.map) if cid is not None]},
        }


@dataclass
class Conversion:
    """A layout change in progress: the new geometry and chunk map; bytes below ``done`` live there already."""

    geo: Geometry
    map: list[int | None]
    done: int


# --------------------------------------------------------------------------- the pool


class Pool:
    """An open storage pool. Open it with :meth:`create` or :meth:`open`; close it when done.

    Many processes use one pool at once (VMs, NBD exports, the CLI), each with its own ``Pool``:

    * **metadata changes** (creating, growing, snapshotting volumes; allocating a thin chunk; moving an
      extent) are transactions (:meth:`_txn`): ``flock`` on ``<pool>/lock``, re-read the metadata if another
      process committed since (its sequence number is published in ``<pool>/seq``, which every user maps and
      compares before each request), change, commit, release;
    * **opening a volume** takes a lock byte of ``<pool>/volumes.lock`` (its id): exclusive for a writer, shared
      for readers, so one VM writes a volume while others use the other volumes;
    * **data requests** hold a shared lock byte of ``<pool>/chunks.lock`` (the chunk id) while they touch a
      chunk; moving or converting a chunk holds it exclusively, so no write lands on a column being copied;
    * ``<pool>/sessions`` is held shared by every process with the pool open for writing: a pool whose
      metadata says "in use" while nobody holds it was not closed cleanly (then redundancy needs a scrub).

    Inside one process every operation takes :attr:`lock`, so volumes are thread-safe.
    """

    def __init__(self, path: Path, read_only: bool) -> None:
        self.path = path
        self.read_only = read_only
        self.lock = threading.RLock()
        self.devices: dict[int, Device] = {}
        self.volumes: dict[str, Volume] = {}
        self.chunks: dict[int, list[tuple[int, int]]] = {}
        self.refs: dict[int, int] = {}
        self.warnings: list[str] = []
        self.closed = False
        self.clean = False  # False while a writer has the pool open: True on disk means a clean shutdown
        self._marked = False  # this session already wrote clean=False to disk
        self.needs_scrub = False  # a session ended without close (crash): redundancy unverified until a scrub
        self.seq = 0
        self.dirty = False
        self._meta_fd = -1  # <pool>/lock: the metadata transaction lock (flock)
        self._sess_fd = -1  # <pool>/sessions: held shared while this process has the pool open for writing
        self._vol_fd = -1  # <pool>/volumes.lock: a byte per volume id (open for write / read)
        self._chunk_fd = -1  # <pool>/chunks.lock: a byte per chunk id (I/O vs moves)
        self._seq_map: mmap.mmap | None = None
        self._txn_depth = 0
        self._disk_clean: bool | None = None
        self._bad_slots: list[str] = []
        self.name = ""
        self.uuid = ""
        self.extent = DEFAULT_EXTENT
        self.warn_percent = DEFAULT_WARN_PERCENT
        self.next_dev = 0
        self.next_chunk = 0
        self.next_volume = 1
        self.created = 0.0

    # ----------------------------------------------------------------- open / create / close

    def _open_files(self) -> None:
        """Open the pool's lock and sequence files (created when missing and the pool is writable)."""
        def opener(name: str, size: int = 0) -> int:
            p = self.path / name
            try:
                fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:
                try:
                    fd = os.open(p, os.O_RDONLY)
                except OSError as err:
                    if self.read_only:
                        return -1
                    raise PoolError(f"cannot open {p}: {err.strerror}") from None
            if size and os.fstat(fd).st_size < size:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
            return fd

        self._meta_fd = opener("lock")
        self._sess_fd = opener("sessions")
        self._vol_fd = opener("volumes.lock")
        self._chunk_fd = opener("chunks.lock")
        fd = opener("seq", 8)
        if fd >= 0:
            try:
                if os.fstat(fd).st_size >= 8:
                    self._seq_map = mmap.mmap(fd, 8, mmap.MAP_SHARED,
                                              mmap.PROT_READ | (0 if self.read_only else mmap.PROT_WRITE))
            except (OSError, ValueError):
                self._seq_map = None
            finally:
                os.close(fd)

    def _start_session(self) -> bool:
        """Hold the sessions lock (shared); True when no other process had the pool open for writing."""
        if self.read_only or self._sess_fd < 0:
            return False
        alone = True
        try:
            fcntl.flock(self._sess_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            alone = False
        fcntl.flock(self._sess_fd, fcntl.LOCK_SH)
        return alone

    def _shared_seq(self) -> int:
        """The sequence number of the newest committed metadata (another process may have committed)."""
        m = self._seq_map
        if m is None:
            return self.seq
        return struct.unpack_from("<q", m, 0)[0]

    @contextlib.contextmanager
    def _txn(self) -> Iterator[None]:
        """A metadata transaction: this process's lock, the pool's lock, the newest metadata; re-entrant."""
        with self.lock:
            if self._txn_depth:
                self._txn_depth += 1
                try:
                    yield
                finally:
                    self._txn_depth -= 1
                return
            self._writable()
            if self.closed:
                raise PoolError(f"pool {self.name!r} is closed")
            if self._meta_fd >= 0:
                fcntl.flock(self._meta_fd, fcntl.LOCK_EX)
            self._txn_depth = 1
            try:
                self._refresh(force=True)
                yield
            finally:
                self._txn_depth = 0
                if self._meta_fd >= 0:
                    fcntl.flock(self._meta_fd, fcntl.LOCK_UN)

    def _refresh(self, force: bool = False) -> bool:
        """Re-read the metadata when another process committed since we last did; True when it changed."""
        if self._shared_seq() <= self.seq and not force:  # (lower: a committer died before publishing)
            return False
        try:
            loaded = load_slots(self.path)
        except MetadataError as err:
            raise PoolError(f"pool {self.name!r}: cannot re-read the metadata: {err}") from None
        if loaded.body.get("seq") == self.seq and self.devices:
            self._repair_seq()
            return False
        self._bad_slots = loaded.bad_slots
        self._load(loaded.body)
        return True

    def _repair_seq(self) -> None:
        """A process killed between writing the metadata and publishing its number leaves the published number
        behind the newest metadata: publish it (under the pool's lock, if it is still the newest)."""
        if self._seq_map is None or self.read_only or self._shared_seq() >= self.seq:
            return
        locked = self._txn_depth == 0 and self._meta_fd >= 0
        if locked:
            fcntl.flock(self._meta_fd, fcntl.LOCK_EX)
        try:
            if self._shared_seq() < self.seq and load_slots(self.path).body.get("seq") == self.seq:
                struct.pack_into("<q", self._seq_map, 0, self.seq)
        except MetadataError:
            pass
        finally:
            if locked:
                fcntl.flock(self._meta_fd, fcntl.LOCK_UN)

    def refresh(self) -> None:
        """See what other processes committed (readers call it before they report)."""
        with self.lock:
            self._refresh()

    @classmethod
    def create(
        cls,
        name_or_path: str | os.PathLike[str],
        devices: list[str],
        extent_size: int | str = DEFAULT_EXTENT,
        *,
        root: Path | None = None,
        force: bool = False,
        warn_percent: int = DEFAULT_WARN_PERCENT,
    ) -> Pool:
        """Create a pool on ``devices`` (existing files or block devices), label them, return it open."""
        path = resolve_pool_dir(name_or_path, root)
        extent = parse_size(extent_size)
        if extent < 4096 or extent > (1 << 30) or extent & (extent - 1):
            raise PoolError(f"extent size {extent} must be a power of two between 4K and 1G")
        if not devices:
            raise PoolError("a pool needs at least one device")
        if not 1 <= warn_percent <= 100:
            raise PoolError(f"warning threshold {warn_percent}% must be between 1 and 100")
        if (path / "metadata.0").exists() or (path / "metadata.1").exists():
            raise PoolError(f"pool {path.name!r} already exists at {path}")
        if path.exists() and any(p.name.startswith("metadata") for p in path.iterdir()):
            raise PoolError(f"{path} holds leftover pool files; remove them first")
        created_dir = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise PoolError(f"cannot create pool directory {path}: {err.strerror}") from None
        pool = cls(path, read_only=False)
        pool._open_files()
        fcntl.flock(pool._meta_fd, fcntl.LOCK_EX)
        pool._start_session()
        try:
            pool.name = path.name
            pool.uuid = str(uuid.uuid4())
            pool.extent = extent
            pool.warn_percent = warn_percent
            pool.created = time.time()
            seen: set[str] = set()
            for dev in devices:
                real = os.path.realpath(dev)
                if real in seen:
                    raise PoolError(f"device {dev} given twice")
                seen.add(real)
                pool._label_device(dev, force)
            pool.seq = 0
            pool._txn_depth = 1
            pool._commit(sync=False)
        except BaseException:
            for dev in pool.devices.values():  # undo: no device keeps the label of a pool that does not exist
                with contextlib.suppress(OSError):
                    os.pwrite(dev.fd, bytes(LABEL_SIZE), 0)
            pool._close_fds()
            with contextlib.suppress(OSError):
                for name in POOL_FILES:
                    (path / name).unlink(missing_ok=True)
                if created_dir:
                    path.rmdir()
            raise
        finally:
            pool._txn_depth = 0
            if pool._meta_fd >= 0:
                fcntl.flock(pool._meta_fd, fcntl.LOCK_UN)
        return pool

    @classmethod
    def open(cls, name_or_path: str | os.PathLike[str], *, read_only: bool = False, root: Path | None = None) -> Pool:
        """Open an existing pool by name (under :func:`pools_root`) or directory path."""
        path = resolve_pool_dir(name_or_path, root)
        if not path.is_dir():
            raise PoolError(
                f"no pool {os.fspath(name_or_path)!r} (looked in {path}); create it with `virtkit pool create`"
            )
        pool = cls(path, read_only=read_only)
        try:
            pool._open_files()
            alone = pool._start_session()
            loaded = load_slots(path)
            pool.warnings += [f"skipped damaged metadata copy: {p}" for p in loaded.problems]
            pool._bad_slots = loaded.bad_slots
            pool._load(loaded.body)
            pool._repair_seq()
            if not read_only:
                crashed = loaded.body.get("clean") is False and alone  # "in use", yet nobody has it open
                pool.needs_scrub = crashed or bool(loaded.body.get("needs_scrub"))
                if pool.needs_scrub:
                    pool.warnings.append(
                        "pool was not closed cleanly: mirror copies or parity may disagree where writes were in "
                        f"flight; check with `virtkit pool scrub {pool.name} --repair`"
                    )
                pool.clean = False  # written with the first change of this session, true again at close
        except BaseException:
            pool._close_fds()
            raise
        return pool

    def _load(self, body: dict[str, Any]) -> None:
        """Build the in-memory pool from a verified metadata body; MetadataError if it is inconsistent.

        On a re-read (another process committed) the objects this process holds are kept and updated in place:
        devices keep their open descriptors, volumes (by id) the backends that use them.
        """
        old_devices = dict(self.devices)
        old_volumes = {v.id: v for v in self.volumes.values()}
        devices: dict[int, Device] = {}
        chunks: dict[int, list[tuple[int, int]]] = {}
        refs: dict[int, int] = {}
        volumes: dict[str, Volume] = {}
        try:
            if body.get("format") != "virtkit-pool":
                raise MetadataError("metadata format is not virtkit-pool")
            seq = int(body["seq"])
            name = str(body["name"])
            pool_uuid = str(uuid.UUID(body["uuid"]))
            extent = int(body["extent_size"])
            if extent < 4096 or extent & (extent - 1):
                raise MetadataError(f"metadata has invalid extent size {extent}")
            next_dev = int(body["next_device_id"])
            next_chunk = int(body["next_chunk_id"])
            for d in body["devices"]:
                did, duuid = int(d["id"]), str(uuid.UUID(d["uuid"]))
                dev = old_devices.get(did)
                if dev is None or dev.uuid != duuid:
                    dev = Device(id=did, uuid=duuid, path=str(d["path"]), pe_count=int(d["pe_count"]),
                                 data_start=int(d["data_start"]), extent=extent)
                dev.path, dev.pe_count, dev.data_start = str(d["path"]), int(d["pe_count"]), int(d["data_start"])
                state, dev.reason = str(d["state"]), str(d.get("reason", ""))
                dev.draining = bool(d.get("draining", False))
                if state not in ("ok", "failed"):
                    raise MetadataError(f"metadata device {did} has unknown state {state!r}")
                if state == "failed" or dev.state != "missing":
                    dev.state = state
                if did in devices or dev.pe_count < 0 or dev.pe_count > (1 << 26) or dev.data_start < LABEL_SIZE:
                    raise MetadataError(f"metadata device entry {did} is invalid")
                dev.used = bytearray(dev.pe_count)
                dev.free = dev.pe_count
                devices[did] = dev
            for cid, pes in body["chunks"]:
                cid = int(cid)
                if cid in chunks or cid >= next_chunk or not pes:
                    raise MetadataError(f"metadata chunk {cid} is invalid")
                cols = []
                for dev_id, pe in pes:
                    dev = devices.get(int(dev_id))
                    pe = int(pe)
                    if dev is None or not 0 <= pe < dev.pe_count or dev.used[pe]:
                        raise MetadataError(f"metadata chunk {cid} maps an invalid or doubly used extent")
                    dev.used[pe] = 1
                    dev.free -= 1
                    cols.append((dev.id, pe))
                if len({c[0] for c in cols}) != len(cols):
                    raise MetadataError(f"metadata chunk {cid} puts two columns on one device")
                chunks[cid] = cols
                refs[cid] = 0
            next_volume = int(body.get("next_volume_id", 1))
            for v in body["volumes"]:
                geo = Geometry(str(v["layout"]), int(v["width"]), int(v["stripe"]), extent)
                problem = geo.check()
                if problem:
                    raise MetadataError(f"metadata volume {v.get('name')!r}: {problem}")
                size = int(v["size"])
                nchunks = -(-size // geo.capacity)
                if size < 0 or nchunks > MAX_CHUNKS:
                    raise MetadataError(f"metadata volume {v.get('name')!r} has an invalid size")
                vmap = self._parse_map(v["map"], nchunks, v.get("name"))
                vid = v.get("id")
                if vid is None:  # written before volumes had ids: numbered in order, the same in every process
                    vid = next_volume
                    next_volume += 1
                vid = int(vid)
                vol = old_volumes.get(vid) or Volume(name="", size=0, geo=geo, thin=False, map=[])
                vol.id = vid
                vol.name = check_name("volume", v["name"])
                vol.size, vol.geo, vol.thin, vol.map = size, geo, bool(v["thin"]), vmap
                vol.snapshot_of = v.get("snapshot_of")
                vol.read_only = bool(v.get("read_only", False))
                vol.created = float(v.get("created", 0))
                conv = v.get("convert")
                vol.convert = None
                if conv is not None:
                    tgeo = Geometry(str(conv["layout"]), int(conv["width"]), int(conv["stripe"]), extent)
                    problem = tgeo.check()
                    if problem:
                        raise MetadataError(f"metadata volume {vol.name!r} conversion: {problem}")
                    tn = -(-size // tgeo.capacity)
                    vol.convert = Conversion(tgeo, self._parse_map(conv["map"], tn, vol.name), int(conv["done"]))
                if vol.name in volumes or any(x.id == vid for x in volumes.values()):
                    raise MetadataError(f"metadata volume {vol.name!r} appears twice")
                for m, g in ((vol.map, geo), (vol.convert.map if vol.convert else [], vol.convert.geo
                                               if vol.convert else geo)):
                    for cid in m:
                        if cid is None:
                            continue
                        if cid not in chunks or len(chunks[cid]) != g.width:
                            raise MetadataError(f"metadata volume {vol.name!r} maps a missing or mis-sized chunk")
                        refs[cid] += 1
                volumes[vol.name] = vol
            next_volume = max([next_volume, *(x.id + 1 for x in volumes.values())])
            warn_percent = int(body.get("warn_percent", DEFAULT_WARN_PERCENT))
            created = float(body.get("created", 0))
            body_needs_scrub = bool(body.get("needs_scrub"))
        except MetadataError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, PoolError) as err:
            raise MetadataError(f"pool metadata is malformed ({type(err).__name__}: {err})") from None
        if next_dev <= max(devices, default=-1):
            raise MetadataError("metadata next_device_id is behind its devices")
        self.seq, self.name, self.uuid, self.extent = seq, name, pool_uuid, extent
        self.warn_percent = warn_percent
        self.next_dev, self.next_chunk, self.next_volume = next_dev, next_chunk, next_volume
        self.created = created
        self.needs_scrub = self.needs_scrub or body_needs_scrub
        self._disk_clean = body.get("clean")
        self.devices, self.chunks, self.refs, self.volumes = devices, chunks, refs, volumes
        for did, dev in old_devices.items():  # removed by another process: let go of it
            if devices.get(did) is not dev and dev.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(dev.fd)
                dev.fd = -1
        for vol in old_volumes.values():
            if vol not in volumes.values():
                vol.deleted = True
        # unreferenced chunks are garbage from an interrupted operation: free them
        for cid in [c for c, r in self.refs.items() if r == 0]:
            self._free_chunk(cid)
        for dev in self.devices.values():
            if dev.fd < 0:
                self._attach(dev)

    @staticmethod
    def _parse_map(entries: Any, nchunks: int, name: object) -> list[int | None]:
        vmap: list[int | None] = [None] * nchunks
        for ci, cid in entries:  # sparse: [chunk index, chunk id] for allocated chunks only
            if not 0 <= int(ci) < nchunks or vmap[int(ci)] is not None:
                raise MetadataError(f"metadata volume {name!r} has an invalid map entry")
            vmap[int(ci)] = int(cid)
        return vmap

    def _attach(self, dev: Device) -> None:
        """Open a device recorded in metadata and check its label; mark it missing when that fails."""
        if dev.state != "ok":
            return
        try:
            fd = os.open(dev.path, os.O_RDONLY if self.read_only else os.O_RDWR)
        except OSError as err:
            dev.state, dev.reason = "missing", f"cannot open: {err.strerror}"
            self.warnings.append(f"device {dev.path} is missing ({err.strerror})")
            return
        try:
            label = read_label(fd)
            size = os.lseek(fd, 0, os.SEEK_END)
        except (OSError, MetadataError) as err:
            label, size = None, 0
            dev.reason = str(err)
        if label is None or label.pool_uuid != self.uuid or label.dev_uuid != dev.uuid:
            os.close(fd)
            dev.state, dev.reason = "missing", dev.reason or "label does not match this pool"
            self.warnings.append(f"device {dev.path} is missing ({dev.reason})")
            return
        if size < dev.data_start + dev.pe_count * self.extent:
            os.close(fd)
            dev.state, dev.reason = "missing", "device is smaller than recorded"
            self.warnings.append(f"device {dev.path} is missing (smaller than recorded)")
            return
        dev.fd = fd

    def _label_device(self, path: str, force: bool) -> Device:
        """Write a pool label on ``path`` and add it as a new device (not yet committed)."""
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise PoolError(f"device {path} does not exist (create a file with `truncate -s 10G {path}`)") from None
        except OSError as err:
            raise PoolError(f"cannot open device {path}: {err.strerror}") from None
        try:
            real = os.path.realpath(path)
            for dev in self.devices.values():
                if os.path.realpath(dev.path) == real:
                    raise PoolError(f"device {path} is already in pool {self.name!r}")
            try:
                old = read_label(fd)
            except MetadataError:
                old = None
                if not force:
                    raise PoolError(f"device {path} has a damaged pool label; use --force to overwrite it") from None
            if old is not None and not force:
                raise PoolError(f"device {path} already belongs to pool {old.pool_name!r}; use --force to overwrite it")
            size = os.lseek(fd, 0, os.SEEK_END)
            pe_count = (size - DATA_START) // self.extent if size > DATA_START else 0
            if pe_count < 1:
                raise PoolError(
                    f"device {path} is too small ({size} bytes): it needs {DATA_START + self.extent} bytes "
                    f"for the label area and one {format_size(self.extent)} extent"
                )
            dev = Device(
                id=self.next_dev,
                uuid=str(uuid.uuid4()),
                path=os.path.abspath(path),
                pe_count=pe_count,
                data_start=DATA_START,
                extent=self.extent,
                fd=fd,
            )
            dev.used = bytearray(pe_count)
            dev.free = pe_count
            label = Label(self.uuid, dev.uuid, self.extent, DATA_START, pe_count, self.name)
            try:
                os.pwrite(fd, label.pack(), 0)
                os.fsync(fd)
            except OSError as err:
                raise PoolError(f"cannot write the label of {path}: {err.strerror}") from None
        except BaseException:
            os.close(fd)
            raise
        self.next_dev += 1
        self.devices[dev.id] = dev
        return dev

    def _body(self) -> dict[str, Any]:
        return {
            "format": "virtkit-pool",
            "version": META_VERSION,
            "seq": self.seq,
            "name": self.name,
            "uuid": self.uuid,
            "extent_size": self.extent,
            "warn_percent": self.warn_percent,
            "created": self.created,
            "clean": self.clean,
            "needs_scrub": self.needs_scrub,
            "next_device_id": self.next_dev,
            "next_chunk_id": self.next_chunk,
            "next_volume_id": self.next_volume,
            "devices": [d.to_meta() for d in self.devices.values()],
            "chunks": [[cid, [list(c) for c in cols]] for cid, cols in self.chunks.items()],
            "volumes": [v.to_meta() for v in self.volumes.values()],
        }

    def _commit(self, sync: bool = True) -> None:
        """Persist metadata (inside a transaction): data written so far becomes durable first, then the new
        metadata copy, then the published sequence number other processes watch."""
        if self.read_only:
            raise PoolError(f"pool {self.name!r} is open read-only")
        if not self._txn_depth:
            raise RuntimeError("pool metadata committed outside a transaction")
        if sync:
            self._sync_devices()
        for bad in self._bad_slots:  # keep damaged copies for inspection instead of overwriting them
            src = self.path / bad
            if src.exists():
                os.replace(src, self.path / f"{bad}.damaged-{int(time.time())}")
        self._bad_slots = []
        self.seq += 1
        try:
            write_slot(self.path, self._body())
        except OSError as err:
            self.seq -= 1
            raise PoolError(f"cannot write metadata of pool {self.name!r}: {err.strerror}") from None
        if self._seq_map is not None:
            struct.pack_into("<q", self._seq_map, 0, self.seq)
        self._marked = not self.clean
        self.dirty = False

    def _sync_devices(self) -> None:
        for dev in self.devices.values():
            if dev.alive:
                try:
                    os.fdatasync(dev.fd)
                except OSError as err:
                    self._mark_failed(dev, err, commit=False)

    def _close_fds(self) -> None:
        for dev in self.devices.values():
            if dev.fd >= 0:
                os.close(dev.fd)
                dev.fd = -1
        for attr in ("_meta_fd", "_sess_fd", "_vol_fd", "_chunk_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)
        if self._seq_map is not None:
            with contextlib.suppress(BufferError, ValueError):
                self._seq_map.close()
            self._seq_map = None

    def close(self) -> None:
        """Flush data and metadata, close every device and release the pool's locks; the last writer to leave
        records a clean shutdown."""
        with self.lock:
            if self.closed:
                return
            try:
                if not self.read_only and self._sess_fd >= 0:
                    self._sync_devices()
                    fcntl.flock(self._sess_fd, fcntl.LOCK_UN)
                    last = True
                    try:
                        fcntl.flock(self._sess_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        last = False  # another process still has the pool open: it is not "clean" yet
                    if last:
                        with self._txn():  # re-reads: another process may have left "in use" on disk
                            if self._marked or self.dirty or self._disk_clean is False:
                                self.clean = True
                                self._commit()
            finally:
                self._close_fds()
                self.closed = True

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- lookups

    def find_device(self, spec: str) -> Device:
        """A device by path (as given or resolved), numeric id, or UUID (prefix of >= 4 characters)."""
        real = os.path.realpath(spec)
        for dev in self.devices.values():
            if dev.path == spec or os.path.realpath(dev.path) == real:
                return dev
        if spec.isdigit() and int(spec) in self.devices:
            return self.devices[int(spec)]
        matches = [d for d in self.devices.values() if len(spec) >= 4 and d.uuid.startswith(spec.lower())]
        if len(matches) == 1:
            return matches[0]
        raise PoolError(f"pool {self.name!r} has no device {spec!r}")

    def volume(self, name: str) -> Volume:
        """The volume called ``name``; PoolError when there is none."""
        vol = self.volumes.get(name)
        if vol is None:
            raise PoolError(f"pool {self.name!r} has no volume {name!r}")
        return vol

    def _writable(self) -> None:
        if self.read_only:
            raise PoolError(f"pool {self.name!r} is open read-only")

    # ----------------------------------------------------------------- allocation

    def _alloc_chunk(self, geo: Geometry, prefer: int | None = None, exclude: set[int] | None = None) -> int:
        """Allocate ``geo.width`` zeroed PEs on distinct healthy devices; return the new chunk id."""
        cands = [
            d
            for d in self.devices.values()
            if d.alive and d.free > 0 and not d.draining and d.id not in (exclude or set())
        ]
        cands.sort(key=lambda d: (d.id != prefer, -d.free, d.id))
        if len(cands) < geo.width:
            need = f"{geo.width} devices with free extents" if geo.width > 1 else "a free extent"
            raise PoolError(f"pool {self.name!r} is out of space: {geo.layout} needs {need}, {len(cands)} available")
        cols = []
        for dev in cands[: geo.width]:
            pe = dev.alloc()
            try:
                dev.zero(pe)
            except OSError as err:  # the device just failed: give back what we took, try the others
                for d, p in [*cols, (dev.id, pe)]:
                    self.devices[d].release(p)
                self._mark_failed(dev, err)
                return self._alloc_chunk(geo, prefer, exclude)
            cols.append((dev.id, pe))
        cid = self.next_chunk
        self.next_chunk += 1
        self.chunks[cid] = cols
        self.refs[cid] = 0
        return cid

    def _free_chunk(self, cid: int) -> None:
        for dev_id, pe in self.chunks.pop(cid):
            self.devices[dev_id].release(pe)
        self.refs.pop(cid, None)

    def _unref(self, cid: int | None) -> bool:
        """Drop one reference; True when the chunk was freed (metadata must be committed)."""
        if cid is None:
            return False
        self.refs[cid] -= 1
        if self.refs[cid] == 0:
            self._free_chunk(cid)
            return True
        return False

    def _space_check(self, geo: Geometry, chunks: int) -> None:
        alive = [d for d in self.devices.values() if d.alive]
        if len(alive) < geo.width:
            raise PoolError(
                f"{geo.layout} with {geo.width} columns needs {geo.width} healthy devices, pool has {len(alive)}"
            )
        # a greedy estimate (exact for linear and when devices are equal): each chunk takes from the freest devices
        free = sorted((d.free for d in alive), reverse=True)
        for _ in range(chunks):
            if free[geo.width - 1] <= 0:
                raise PoolError(f"pool {self.name!r} has not enough free space for {chunks} more {geo.layout} chunks")
            for i in range(geo.width):
                free[i] -= 1
            free.sort(reverse=True)

    def _exclusive(self, vol: Volume, ci: int, vmap: list[int | None] | None = None,
                   geo: Geometry | None = None) -> int:
        """Make chunk ``ci`` of ``vol`` (of ``vmap``, by default its map) allocated and owned by ``vol`` alone
        (allocate or copy on write)."""
        vmap = vol.map if vmap is None else vmap
        geo = vol.geo if geo is None else geo
        cid = vmap[ci]
        if cid is not None and self.refs[cid] == 1:
            return cid
        prev = vmap[ci - 1] if ci > 0 else None
        prefer = self.chunks[prev][0][0] if prev is not None and prev in self.chunks else None
        new = self._alloc_chunk(geo, prefer=prefer)
        if cid is not None:  # shared with a snapshot: copy the whole chunk first
            buf = bytearray(geo.capacity)
            self._read_chunk(geo, cid, 0, memoryview(buf))
            self._write_chunk(geo, new, 0, memoryview(buf))
            self.refs[cid] -= 1
        self.refs[new] = 1
        vmap[ci] = new
        self.dirty = True
        return new

    # ----------------------------------------------------------------- column I/O

    def _mark_failed(self, dev: Device, err: BaseException | str, commit: bool = True) -> None:
        reason = err if isinstance(err, str) else f"I/O error: {getattr(err, 'strerror', None) or err}"

        def apply(d: Device) -> None:
            d.state, d.reason = "failed", reason
            if d.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(d.fd)
                d.fd = -1

        apply(dev)
        self.warnings.append(f"device {dev.path} failed ({reason})")
        if commit and not self.read_only:
            with self._txn():  # every process sees the failure (re-read first: apply it to the newest state)
                d = self.devices.get(dev.id)
                if d is not None:
                    apply(d)
                self._commit(sync=False)

    def _col_read(self, col: tuple[int, int], off: int, buf: memoryview) -> None:
        dev = self.devices[col[0]]
        if not dev.alive:
            raise _Degraded(dev.id)
        try:
            dev.read(col[1], off, buf)
        except OSError as err:
            self._mark_failed(dev, err)
            raise _Degraded(dev.id) from None

    def _col_write(self, col: tuple[int, int], off: int, data: memoryview | bytes) -> None:
        dev = self.devices[col[0]]
        if not dev.alive:
            raise _Degraded(dev.id)
        try:
            dev.write(col[1], off, data)
        except OSError as err:
            self._mark_failed(dev, err)
            raise _Degraded(dev.id) from None

    def _chunk_readable(self, geo: Geometry, cid: int) -> bool:
        """True when the chunk still has enough healthy columns to serve its data."""
        down = sum(1 for d, _ in self.chunks[cid] if not self.devices[d].alive)
        return down <= {"mirror": geo.width - 1, "parity": 1}.get(geo.layout, 0)

    def _lost(self, geo: Geometry, col: tuple[int, int]) -> BlockError:
        dev = self.devices[col[0]]
        what = "a second device of the chunk" if geo.redundant else "a device"
        return BlockError(f"data unavailable: {what} ({dev.path}) is {dev.state}; {geo.layout} cannot serve it")

    def _read_chunk(self, geo: Geometry, cid: int | None, off: int, out: memoryview) -> None:
        if cid is None:
            out[:] = bytes(len(out))
            return
        cols = self.chunks[cid]
        if geo.layout == "linear":
            try:
                self._col_read(cols[0], off, out)
            except _Degraded:
                raise self._lost(geo, cols[0]) from None
        elif geo.layout == "mirror":
            for col in cols:
                try:
                    self._col_read(col, off, out)
                    return
                except _Degraded:
                    continue
            raise BlockError("data unavailable: every copy of a mirror chunk is on a failed device")
        elif geo.layout == "striped":
            for p in geo.striped_pieces(off, len(out)):
                try:
                    self._col_read(cols[p.col], p.pe_off, out[p.buf_off : p.buf_off + p.length])
                except _Degraded:
                    raise self._lost(geo, cols[p.col]) from None
        else:
            for row in geo.parity_rows(off, len(out)):
                for p in row.pieces:
                    piece = out[p.buf_off : p.buf_off + p.length]
                    try:
                        self._col_read(cols[p.col], p.pe_off, piece)
                    except _Degraded:
                        self._reconstruct(geo, cols, p.col, p.pe_off, piece)

    def _reconstruct(
        self, geo: Geometry, cols: list[tuple[int, int]], missing: int, pe_off: int, out: memoryview
    ) -> None:
        """Rebuild a range of column ``missing`` as the XOR of every other column (RAID 5)."""
        acc = bytearray(len(out))
        tmp = bytearray(len(out))
        for c, col in enumerate(cols):
            if c == missing:
                continue
            try:
                self._col_read(col, pe_off, memoryview(tmp))
            except _Degraded:
                raise self._lost(geo, col) from None
            xor_into(acc, tmp)
        out[:] = acc

    def _write_chunk(self, geo: Geometry, cid: int, off: int, data: memoryview) -> None:
        cols = self.chunks[cid]
        if geo.layout == "linear":
            try:
                self._col_write(cols[0], off, data)
            except _Degraded:
                raise self._lost(geo, cols[0]) from None
        elif geo.layout == "mirror":
            done = 0
            for col in cols:
                try:
                    self._col_write(col, off, data)
                    done += 1
                except _Degraded:
                    continue
            if not done:
                raise BlockError("write failed: every copy of a mirror chunk is on a failed device")
        elif geo.layout == "striped":
            for p in geo.striped_pieces(off, len(data)):
                try:
                    self._col_write(cols[p.col], p.pe_off, data[p.buf_off : p.buf_off + p.length])
                except _Degraded:
                    raise self._lost(geo, cols[p.col]) from None
        else:
            for row in geo.parity_rows(off, len(data)):
                for _attempt in range(geo.width + 1):
                    try:
                        self._write_row(geo, cols, row, data)
                        break
                    except _Degraded:
                        continue  # a device failed while reading the row: redo it in degraded mode
                else:
                    raise BlockError("write failed: parity row could not be written")

    def _write_row(self, geo: Geometry, cols: list[tuple[int, int]], row: Any, data: memoryview) -> None:
        """Write one parity row. Every read happens before the first write, and the new parity is
        computed for the whole intended row, so a device failing during the writes still leaves a
        row whose missing column is the XOR of the others."""
        s = geo.stripe
        base = row.row * s
        failed = [c for c, col in enumerate(cols) if not self.devices[col[0]].alive]
        if len(failed) > 1:
            raise self._lost(geo, cols[failed[1]])
        writes: list[tuple[int, int, Any]] = []
        if row.full and not failed:  # full-stripe write: parity from the new data alone
            parity = bytearray(s)
            for p in row.pieces:
                xor_into(parity, data[p.buf_off : p.buf_off + p.length])
                writes.append((p.col, p.pe_off, data[p.buf_off : p.buf_off + p.length]))
            writes.append((row.parity_col, base, parity))
        elif not failed:  # read-modify-write: parity ^= old ^ new over the touched range
            lo = min(p.pe_off for p in row.pieces)
            hi = max(p.pe_off + p.length for p in row.pieces)
            parity = bytearray(hi - lo)
            self._col_read(cols[row.parity_col], lo, memoryview(parity))
            old = bytearray(max(p.length for p in row.pieces))
            for p in row.pieces:
                o = memoryview(old)[: p.length]
                self._col_read(cols[p.col], p.pe_off, o)
                span = memoryview(parity)[p.pe_off - lo : p.pe_off - lo + p.length]
                xor_into(span, o)
                xor_into(span, data[p.buf_off : p.buf_off + p.length])
                writes.append((p.col, p.pe_off, data[p.buf_off : p.buf_off + p.length]))
            writes.append((row.parity_col, lo, parity))
        else:  # degraded: rebuild the whole row in memory, apply the write, rewrite parity
            gone = failed[0]
            bufs = [bytearray(s) for _ in cols]
            for c, col in enumerate(cols):
                if c != gone:
                    self._col_read(col, base, memoryview(bufs[c]))
            for c in range(len(cols)):
                if c != gone:
                    xor_into(bufs[gone], bufs[c])
            touched = set()
            for p in row.pieces:
                rel = p.pe_off - base
                bufs[p.col][rel : rel + p.length] = data[p.buf_off : p.buf_off + p.length]
                touched.add(p.col)
            parity = bytearray(s)
            for c in range(len(cols)):
                if c != row.parity_col:
                    xor_into(parity, bufs[c])
            writes = [(c, base, bufs[c]) for c in sorted(touched) if c != gone]
            if row.parity_col != gone:
                writes.append((row.parity_col, base, parity))
        for c, off, buf in writes:
            try:
                self._col_write(cols[c], off, buf)
            except _Degraded:
                continue  # the row stays consistent: that column is now reconstructed from the others
        failed = [c for c, col in enumerate(cols) if not self.devices[col[0]].alive]
        if len(failed) > 1:
            raise self._lost(geo, cols[failed[1]])

    def _read_column(self, geo: Geometry, cid: int, c: int) -> bytearray:
        """The raw content of column ``c`` of a chunk, reconstructed from the others when its device is gone."""
        cols = self.chunks[cid]
        buf = bytearray(self.extent)
        try:
            self._col_read(cols[c], 0, memoryview(buf))
            return buf
        except _Degraded:
            pass
        if geo.layout == "mirror":
            for i, col in enumerate(cols):
                if i != c:
                    try:
                        self._col_read(col, 0, memoryview(buf))
                        return buf
                    except _Degraded:
                        continue
            raise self._lost(geo, cols[c])
        if geo.layout == "parity":
            self._reconstruct(geo, cols, c, 0, memoryview(buf))
            return buf
        raise self._lost(geo, cols[c])

    # ----------------------------------------------------------------- volume I/O (called by VolumeBackend)

    def _segments(self, vol: Volume, offset: int, length: int) -> Iterator[tuple[bool, int, int, int, int]]:
        """Split ``[offset, offset+length)`` by chunk: (in the new layout?, chunk index, offset in chunk, length,
        offset in the buffer). During a layout conversion bytes below the watermark live in the new layout."""
        pos, end = offset, offset + length
        while pos < end:
            conv = vol.convert
            new = conv is not None and pos < conv.done
            geo = conv.geo if new else vol.geo  # type: ignore[union-attr]
            cap = geo.capacity
            ci, inner = divmod(pos, cap)
            n = min(end - pos, cap - inner)
            if new:
                n = min(n, conv.done - pos)  # type: ignore[union-attr]
            yield new, ci, inner, n, pos - offset
            pos += n

    @staticmethod
    def _layout(vol: Volume, new: bool) -> tuple[Geometry, list[int | None]]:
        if new:
            if vol.convert is None:
                raise _Changed()
            return vol.convert.geo, vol.convert.map
        return vol.geo, vol.map

    @contextlib.contextmanager
    def _chunk_shared(self, cid: int) -> Iterator[bool]:
        """Hold chunk ``cid`` shared for one request (waits while a move or conversion copies it). Yields False
        when the metadata changed while waiting: the caller looks the chunk up again."""
        fd = self._chunk_fd
        if fd < 0:
            yield True
            return
        imglock.byte_lock(fd, cid, exclusive=False, wait=True)
        try:
            yield self._shared_seq() <= self.seq
        finally:
            imglock.byte_unlock(fd, cid)

    def _io_read(self, vol: Volume, offset: int, buf: memoryview) -> None:
        for _attempt in range(1000):
            self._refresh()
            try:
                for new, ci, inner, n, b in self._segments(vol, offset, len(buf)):
                    geo, vmap = self._layout(vol, new)
                    cid = vmap[ci] if ci < len(vmap) else None
                    if cid is None:
                        buf[b : b + n] = bytes(n)
                        continue
                    with self._chunk_shared(cid) as current:
                        if not current:
                            raise _Changed()
                        self._read_chunk(geo, cid, inner, buf[b : b + n])
                return
            except _Changed:
                continue
        raise BlockError(f"volume {vol.name!r}: the pool's metadata kept changing under a read")

    def _mark_in_use(self) -> None:
        """Before the first write of a session: record on disk that the pool is open (clean=False)."""
        if not self._marked:
            with self._txn():
                self._commit(sync=False)

    def _allocate(self, vol: Volume, new: bool, ci: int) -> None:
        """Make chunk ``ci`` (of the new layout when ``new``) allocated and owned by ``vol`` alone: a transaction,
        since other processes allocate from the same devices."""
        with self._txn():
            geo, vmap = self._layout(vol, new)
            self._exclusive(vol, ci, vmap=vmap, geo=geo)
            if self.dirty:
                self._commit(sync=False)

    def _io_write(self, vol: Volume, offset: int, data: memoryview) -> None:
        self._mark_in_use()
        for _attempt in range(1000):
            self._refresh()
            try:
                for new, ci, inner, n, b in self._segments(vol, offset, len(data)):
                    geo, vmap = self._layout(vol, new)
                    cid = vmap[ci]
                    if cid is None or self.refs.get(cid) != 1:
                        self._allocate(vol, new, ci)
                        raise _Changed()  # look everything up again (segments written so far: same bytes again)
                    with self._chunk_shared(cid) as current:
                        if not current:
                            raise _Changed()
                        self._write_chunk(geo, cid, inner, data[b : b + n])
                return
            except _Changed:
                continue
        raise BlockError(f"volume {vol.name!r}: the pool's metadata kept changing under a write")

    def _io_zero(self, vol: Volume, offset: int, length: int) -> None:
        self._mark_in_use()
        self._refresh()
        for new, ci, inner, n, b in list(self._segments(vol, offset, length)):
            if inner == 0 and n == vol.geo.capacity and not new:
                with self._txn():
                    if self._zero_whole(vol, ci):
                        continue
            self._io_write(vol, offset + b, memoryview(bytes(n)))

    def _zero_whole(self, vol: Volume, ci: int) -> bool:
        """(In a transaction) zero a whole chunk by metadata where possible; False when it must be written."""
        if vol.convert is not None or ci >= len(vol.map):
            return False
        cid = vol.map[ci]
        if cid is None:
            return True  # reads as zeros already
        if vol.thin:  # thin: give the chunk back to the pool
            vol.map[ci] = None
            self._unref(cid)
            self._commit()  # freed extents may be reused: the metadata must not point at them any more
            return True
        if self.refs[cid] > 1:  # shared thick chunk: take a fresh zeroed one, no copy
            new = self._alloc_chunk(vol.geo)
            self.refs[new] = 1
            vol.map[ci] = new
            self._unref(cid)
            self._commit()
            return True
        with self._chunk_exclusive(cid) as got:
            if not got:
                return False
            for dev_id, pe in self.chunks[cid]:
                dev = self.devices[dev_id]
                if dev.alive:
                    try:
                        dev.zero(pe)
                    except OSError as err:
                        self._mark_failed(dev, err)
            if not self._chunk_readable(vol.geo, cid):
                raise self._lost(vol.geo, self.chunks[cid][0])
        return True

    # ----------------------------------------------------------------- pool management

    def add_device(self, path: str, force: bool = False) -> Device:
        """Label ``path`` and add its extents to the pool."""
        with self._txn():
            dev = self._label_device(path, force)
            self._commit()
            return dev

    def remove_device(self, spec: str, evacuate: bool = False) -> None:
        """Remove an empty device (with ``evacuate``, first move its extents to the other devices)."""
        with self._txn():
            dev = self.find_device(spec)
            if len(self.devices) == 1:
                raise PoolError("cannot remove the last device of a pool")
            if evacuate and dev.free < dev.pe_count:
                self._evacuate(dev, None)
            if dev.free < dev.pe_count:
                users = sorted(
                    {
                        v.name
                        for v in self.volumes.values()
                        for cid in v.map
                        if cid is not None and any(c[0] == dev.id for c in self.chunks[cid])
                    }
                )
                raise PoolError(
                    f"device {dev.path} still holds {dev.pe_count - dev.free} extents (volumes: {', '.join(users)}); "
                    "move them first (`virtkit volume move` or `pool remove --evacuate`)"
                )
            del self.devices[dev.id]
            self._commit()
            if dev.fd >= 0:
                with contextlib.suppress(OSError):
                    os.pwrite(dev.fd, bytes(LABEL_SIZE), 0)
                    os.fsync(dev.fd)
                os.close(dev.fd)

    def fail_device(self, spec: str, reason: str = "marked failed by the administrator") -> Device:
        """Take a device out of service: redundant volumes continue degraded."""
        with self._txn():
            dev = self.find_device(spec)
            self._mark_failed(dev, reason)
            return dev

    def _move_column(self, cid: int, c: int, target: Device, geo: Geometry) -> None:
        """Copy column ``c`` of chunk ``cid`` to a new PE on ``target``, switch the mapping, persist."""
        cols = self.chunks[cid]
        if any(d == target.id for d, _ in cols):
            raise PoolError(f"device {target.path} already holds another column of this chunk")
        data = self._read_column(geo, cid, c)
        pe = target.alloc()
        try:
            target.write(pe, 0, data)
            os.fdatasync(target.fd)
        except OSError as err:
            target.release(pe)
            self._mark_failed(target, err)
            raise PoolError(f"copy to {target.path} failed: {err.strerror}") from None
        old_dev, old_pe = cols[c]
        cols[c] = (target.id, pe)
        self._commit()  # the new mapping is durable before the old extent can be reused
        self.devices[old_dev].release(old_pe)

    def _chunk_geos(self) -> dict[int, Geometry]:
        out = {cid: v.geo for v in self.volumes.values() for cid in v.map if cid is not None}
        for v in self.volumes.values():
            if v.convert is not None:
                out.update({cid: v.convert.geo for cid in v.convert.map if cid is not None})
        return out

    @contextlib.contextmanager
    def _chunk_exclusive(self, cid: int) -> Iterator[bool]:
        """Inside a transaction: hold chunk ``cid`` exclusively (no request of any process touches it) if it can be
        had at once; yields False when a request holds it (the caller lets the transaction go and tries again:
        requests never wait for a transaction while holding a chunk, so this cannot deadlock)."""
        fd = self._chunk_fd
        if fd < 0:
            yield True
            return
        if not imglock.byte_lock(fd, cid, exclusive=True, wait=False):
            yield False
            return
        try:
            yield True
        finally:
            imglock.byte_unlock(fd, cid)

    def _set_draining(self, dev: Device, on: bool) -> None:
        with self._txn():
            dev = self.devices.get(dev.id, dev)
            if dev.draining != on:
                dev.draining = on
                self._commit(sync=False)

    def _evacuate(self, dev: Device, target: Device | None, only: str | None = None) -> int:
        """Move every chunk column on ``dev`` (of volume ``only``, or all) elsewhere, one chunk at a time.

        While it runs no process allocates on ``dev`` (it is "draining" in the metadata); writers in any process
        keep going on every chunk but the one being copied.
        """
        self._set_draining(dev, True)
        try:
            moved = 0
            for _pass in range(100):  # chunks copied on write during a pass are picked up by the next
                with self._txn():
                    vol = self.volume(only) if only else None
                    geos = {c: vol.geo for c in vol.map if c is not None} if vol else self._chunk_geos()
                    todo = sorted(c for c in geos if any(d == dev.id for d, _ in self.chunks.get(c, [])))
                if not todo:
                    return moved
                for cid in todo:
                    moved += self._move_chunk_off(cid, dev.id, target.id if target else None)
            raise PoolError(f"extents on {dev.path} keep changing; move did not converge")
        finally:
            with contextlib.suppress(PoolError):
                self._set_draining(dev, False)

    def _move_chunk_off(self, cid: int, dev_id: int, target_id: int | None) -> int:
        """Move the column of chunk ``cid`` that lies on device ``dev_id``; returns 1 when one moved."""
        for _attempt in range(10000):
            with self._txn():
                cols = self.chunks.get(cid)
                if cols is None or not any(d == dev_id for d, _ in cols):
                    return 0  # freed or moved meanwhile
                geo = self._chunk_geos().get(cid)
                if geo is None:
                    return 0
                with self._chunk_exclusive(cid) as got:
                    if got:
                        c = next(i for i, (d, _) in enumerate(cols) if d == dev_id)
                        self._move_column(cid, c, self._destination(cols, dev_id, target_id), geo)
                        return 1
            time.sleep(0.001)  # a request holds the chunk: let it finish
        raise PoolError(f"chunk {cid} stayed busy; move did not make progress")

    def _destination(self, cols: list[tuple[int, int]], dev_id: int, target_id: int | None) -> Device:
        if target_id is not None:
            dest = self.devices.get(target_id)
            if dest is None or not dest.alive:
                raise PoolError("the destination device is gone or failed")
            if dest.free == 0:
                raise PoolError(f"device {dest.path} is full")
            return dest
        cands = [x for x in self.devices.values()
                 if x.alive and x.free > 0 and x.id != dev_id and not x.draining and all(x.id != d for d, _ in cols)]
        if not cands:
            raise PoolError(f"no other device has room for the extents of {self.devices[dev_id].path}")
        return max(cands, key=lambda x: x.free)

    def move_volume(self, name: str, from_spec: str, to_spec: str | None = None) -> int:
        """Move a volume's extents off one device (onto ``to_spec`` or any), online; returns extents moved."""
        with self._txn():
            vol = self.volume(name)
            src = self.find_device(from_spec)
            dst = self.find_device(to_spec) if to_spec else None
            if dst is not None:
                if dst.id == src.id:
                    raise PoolError("source and destination devices are the same")
                if not dst.alive:
                    raise PoolError(f"destination device {dst.path} is {dst.state}")
        return self._evacuate(src, dst, only=vol.name)

    def rebuild(self, old_spec: str, new_path: str, force: bool = False) -> int:
        """Replace device ``old_spec`` by ``new_path``: copy or reconstruct each extent, then drop the old one."""
        with self._txn():
            old = self.find_device(old_spec)
            if not old.alive:
                lost = sorted(
                    {
                        v.name
                        for v in self.volumes.values()
                        if not v.geo.redundant
                        for cid in v.map
                        if cid is not None and any(c[0] == old.id for c in self.chunks[cid])
                    }
                )
                if lost:
                    raise PoolError(
                        f"volumes {', '.join(lost)} have no redundancy and lost data on {old.path}; "
                        "delete or restore them before rebuilding"
                    )
            new = self._label_device(new_path, force)
            self._commit()
        moved = self._evacuate(old, new)
        with self._txn():
            old = self.devices.get(old.id, old)
            if old.free < old.pe_count:
                raise PoolError(f"rebuild incomplete: {old.pe_count - old.free} extents remain on {old.path}")
            self.devices.pop(old.id, None)
            self._commit()
            if old.fd >= 0:
                os.close(old.fd)
                old.fd = -1
        return moved

    def scrub(self, repair: bool = False) -> dict[str, Any]:
        """Check that mirror copies are equal and parity is the XOR of the data, chunk by chunk (online).

        With ``repair``, inconsistent chunks are fixed: mirrors take their first copy, parity is
        recomputed from the data (what md's ``repair`` does after an unclean shutdown). Each chunk is
        checked while no request of any process touches it.
        """
        with self.lock:
            if repair:
                self._writable()
            self._refresh()
            owners: dict[int, list[str]] = {}
            for v in self.volumes.values():
                for cid in v.map:
                    if cid is not None:
                        owners.setdefault(cid, []).append(v.name)
            geos = self._chunk_geos()
        checked = skipped = 0
        bad: list[int] = []
        for cid, geo in geos.items():
            if not geo.redundant:
                continue
            for _attempt in range(10000):
                with self._hold_chunk(cid, write=repair) as got:
                    if not got:
                        continue
                    result = self._scrub_chunk(cid, geo, repair)
                    break
                time.sleep(0.001)
            else:
                raise PoolError(f"chunk {cid} stayed busy; scrub did not make progress")
            if result is None:
                continue
            if result == "degraded":
                skipped += 1
            else:
                checked += 1
                if result == "bad":
                    bad.append(cid)
        with self.lock:
            if repair and bad:
                self._sync_devices()
            if (repair or not bad) and not skipped and self.needs_scrub and not self.read_only:
                with self._txn():
                    self.needs_scrub = False  # redundancy verified: the crash warning is settled
                    self._commit()
        return {
            "checked": checked,
            "inconsistent": len(bad),
            "repaired": len(bad) if repair else 0,
            "skipped_degraded": skipped,
            "volumes": sorted({n for cid in bad for n in owners.get(cid, [])}),
        }

    @contextlib.contextmanager
    def _hold_chunk(self, cid: int, write: bool) -> Iterator[bool]:
        """Hold chunk ``cid`` exclusively for a whole-chunk check (in a transaction when ``write``)."""
        if write:
            with self._txn(), self._chunk_exclusive(cid) as got:
                yield got
            return
        with self.lock, self._chunk_exclusive(cid) as got:
            yield got

    def _scrub_chunk(self, cid: int, geo: Geometry, repair: bool) -> str | None:
        """None (freed), "degraded", "ok" or "bad" (repaired when ``repair``)."""
        self._refresh()
        cols = self.chunks.get(cid)
        if cols is None:
            return None
        raws = [bytearray(self.extent) for _ in cols]
        try:
            for col, raw in zip(cols, raws, strict=True):
                self._col_read(col, 0, memoryview(raw))
        except _Degraded:
            return "degraded"  # a column is gone: that is for rebuild, not scrub
        if geo.layout == "mirror":
            if all(r == raws[0] for r in raws[1:]):
                return "ok"
        else:
            acc = bytearray(self.extent)
            for r in raws:
                xor_into(acc, r)
            if not any(acc):
                return "ok"
        if not repair:
            return "bad"
        if geo.layout == "mirror":
            for col, raw in zip(cols[1:], raws[1:], strict=True):
                if raw != raws[0]:
                    self._col_write(col, 0, raws[0])
        else:
            s = geo.stripe
            for row in range(self.extent // s):
                pc = geo.parity_col(row)
                unit = bytearray(s)
                for c, raw in enumerate(raws):
                    if c != pc:
                        xor_into(unit, memoryview(raw)[row * s : (row + 1) * s])
                if unit != raws[pc][row * s : (row + 1) * s]:
                    self._col_write(cols[pc], row * s, unit)
        return "bad"

    # ----------------------------------------------------------------- volumes

    def create_volume(
        self,
        name: str,
        size: int | str,
        layout: str = "linear",
        *,
        width: int | None = None,
        stripe: int | str | None = None,
        thin: bool = False,
    ) -> Volume:
        """Create a volume; thick volumes get their extents now, thin ones on first write."""
        with self._txn():
            check_name("volume", name)
            if name in self.volumes:
                raise PoolError(f"volume {name!r} already exists in pool {self.name!r}")
            size = parse_size(size)
            if size <= 0 or size % 512:
                raise PoolError(f"volume size {size} must be a positive multiple of 512 bytes")
            alive = sum(1 for d in self.devices.values() if d.alive)
            if width is None:
                width = {"linear": 1, "mirror": 2}.get(layout, alive)
            stripe_size = min(DEFAULT_STRIPE, self.extent) if stripe is None else parse_size(stripe)
            geo = Geometry(layout, int(width), stripe_size, self.extent)
            problem = geo.check()
            if problem:
                raise PoolError(problem)
            nchunks = -(-size // geo.capacity)
            self._check_chunks(nchunks, geo)
            if not thin:
                self._space_check(geo, nchunks)
            vol = Volume(name, size, geo, thin, [None] * nchunks, created=time.time(), id=self._new_volume_id())
            if not thin:
                try:
                    for ci in range(nchunks):
                        self._exclusive(vol, ci)
                except BaseException:
                    for cid in vol.map:
                        self._unref(cid)
                    raise
            self.volumes[name] = vol
            self._commit()
            return vol

    def resize_volume(self, name: str, size: int | str, shrink: bool = False) -> Volume:
        """Grow (online: open backends see the new size at once) or, with ``shrink``, shrink a volume."""
        with self._txn():
            vol = self.volume(name)
            if vol.read_only:
                raise PoolError(f"volume {name!r} is a read-only snapshot")
            size = parse_size(size)
            if size <= 0 or size % 512:
                raise PoolError(f"volume size {size} must be a positive multiple of 512 bytes")
            nchunks = -(-size // vol.geo.capacity)
            self._check_chunks(nchunks, vol.geo)
            if size < vol.size:
                if not shrink:
                    raise PoolError(f"new size {size} is smaller than {vol.size}: shrinking loses data (use --shrink)")
                self._refuse_open(vol, "shrinking it")
                for cid in vol.map[nchunks:]:
                    self._unref(cid)
                del vol.map[nchunks:]
                if size % vol.geo.capacity:  # zero the cut tail so a later grow reads zeros
                    self._io_zero(vol, size, nchunks * vol.geo.capacity - size)
            else:
                extra = nchunks - len(vol.map)
                if not vol.thin and extra > 0:
                    self._space_check(vol.geo, extra)
                old_len = len(vol.map)
                vol.map.extend([None] * extra)
                if not vol.thin:
                    try:
                        for ci in range(old_len, nchunks):
                            self._exclusive(vol, ci)
                    except BaseException:
                        for cid in vol.map[old_len:]:
                            self._unref(cid)
                        del vol.map[old_len:]
                        raise
            vol.size = size
            self._commit()
            return vol

    def _check_chunks(self, nchunks: int, geo: Geometry) -> None:
        if nchunks > MAX_CHUNKS:
            limit = format_size(MAX_CHUNKS * geo.capacity)
            raise PoolError(f"volume too large: at most {limit} with {format_size(self.extent)} extents")

    def snapshot(self, name: str, snap: str, writable: bool = False) -> Volume:
        """A snapshot of ``name``: shares every chunk; later writes (to either side) copy on write.

        Read-only by default (ZFS-like); ``writable`` makes a clone (LVM thin snapshots are writable).
        """
        with self._txn():
            vol = self.volume(name)
            check_name("snapshot", snap)
            if snap in self.volumes:
                raise PoolError(f"volume {snap!r} already exists in pool {self.name!r}")
            copy = Volume(
                snap, vol.size, vol.geo, True, list(vol.map), snapshot_of=name, read_only=not writable,
                created=time.time(), id=self._new_volume_id(),
            )
            for cid in copy.map:
                if cid is not None:
                    self.refs[cid] += 1
            self.volumes[snap] = copy
            self._commit()
            return copy

    def rollback(self, name: str, snap: str) -> None:
        """Return volume ``name`` to the content of its snapshot ``snap`` (the snapshot is kept)."""
        with self._txn():
            vol, src = self.volume(name), self.volume(snap)
            if src.snapshot_of != name:
                raise PoolError(f"{snap!r} is not a snapshot of {name!r}")
            self._refuse_open(vol, "rolling it back")
            for cid in src.map:
                if cid is not None:
                    self.refs[cid] += 1
            for cid in vol.map:
                self._unref(cid)
            vol.map = list(src.map)
            vol.size = src.size
            self._commit()

    def delete_volume(self, name: str) -> None:
        """Delete a volume (or snapshot) and return its unshared extents to the pool."""
        with self._txn():
            vol = self.volume(name)
            self._refuse_open(vol, "deleting it")
            for cid in vol.map:
                self._unref(cid)
            if vol.convert is not None:
                for cid in vol.convert.map:
                    self._unref(cid)
            del self.volumes[name]
            self._commit()

    def convert_volume(self, name: str, layout: str, *, width: int | None = None, stripe: int | str | None = None,
                       progress: Any = None) -> dict[str, Any]:
        """Change a volume's layout (linear, striped, mirror, parity) online, like ``lvconvert``.

        The data is copied region by region (the least common multiple of both layouts' chunk capacities) into
        chunks of the new layout; a watermark in the metadata says where the new layout starts to hold the data,
        so writers in any process keep going (a region being copied is held exclusively), and a conversion that
        is interrupted (even by SIGKILL) goes on from the watermark when run again. ``progress(done, total)``.
        """
        with self._txn():
            vol = self.volume(name)
            if vol.read_only:
                raise PoolError(f"volume {name!r} is a read-only snapshot")
            if vol.convert is None:
                alive = sum(1 for d in self.devices.values() if d.alive)
                if width is None:
                    width = {"linear": 1, "mirror": 2}.get(layout, alive)
                stripe_size = min(DEFAULT_STRIPE, self.extent) if stripe is None else parse_size(stripe)
                tgeo = Geometry(layout, int(width), stripe_size, self.extent)
                problem = tgeo.check()
                if problem:
                    raise PoolError(problem)
                if tgeo == vol.geo:
                    return {"volume": name, "layout": layout, "converted": 0, "already": True}
                tn = -(-vol.size // tgeo.capacity)
                self._check_chunks(tn, tgeo)
                if not vol.thin:  # old chunks are freed region by region: what is needed is the difference
                    step = vol.geo.capacity * tgeo.capacity // math.gcd(vol.geo.capacity, tgeo.capacity)
                    freed = sum(vol.geo.width for c in vol.map if c is not None and self.refs.get(c) == 1)
                    need = tn * tgeo.width - freed + -(-step // tgeo.capacity) * tgeo.width
                    free = sum(d.free for d in self.devices.values() if d.alive and not d.draining)
                    if need > free:
                        raise PoolError(f"pool {self.name!r} has not enough free space to convert {name!r} to "
                                        f"{layout}: it needs about {need} more extents, {free} are free")
                    alive = sum(1 for d in self.devices.values() if d.alive)
                    if alive < tgeo.width:
                        raise PoolError(f"{layout} with {tgeo.width} columns needs {tgeo.width} healthy devices, "
                                        f"pool has {alive}")
                vol.convert = Conversion(tgeo, [None] * tn, 0)
                self._commit()
            tgeo = vol.convert.geo
            step = vol.geo.capacity * tgeo.capacity // math.gcd(vol.geo.capacity, tgeo.capacity)
        steps = 0
        while True:
            for _attempt in range(100000):
                r = self._convert_step(name, step)
                if r is not None:
                    break
                time.sleep(0.001)  # a request holds a chunk of the region: let it finish
            else:
                raise PoolError(f"volume {name!r}: its chunks stayed busy; conversion did not make progress")
            done, total, finished = r
            steps += 1
            if progress:
                progress(done, total)
            if finished:
                return {"volume": name, "layout": tgeo.layout, "width": tgeo.width, "regions": steps}

    def _convert_step(self, name: str, step: int) -> tuple[int, int, bool] | None:
        """One region of a conversion; None when a request holds one of its chunks (try again)."""
        with self._txn():
            vol = self.volume(name)
            conv = vol.convert
            if conv is None:
                return vol.size, vol.size, True
            if conv.done >= vol.size:  # the new layout holds everything: switch over
                for cid in vol.map:
                    self._unref(cid)
                vol.geo, vol.map, vol.convert = conv.geo, conv.map, None
                self._commit()
                return vol.size, vol.size, True
            lo, hi = conv.done, min(conv.done + step, vol.size)
            ocap, ncap = vol.geo.capacity, conv.geo.capacity
            old_idx = range(lo // ocap, -(-hi // ocap))
            cids = sorted({vol.map[i] for i in old_idx if i < len(vol.map) and vol.map[i] is not None})
            held: list[int] = []
            try:
                for cid in cids:
                    if self._chunk_fd >= 0 and not imglock.byte_lock(self._chunk_fd, cid, exclusive=True, wait=False):
                        return None
                    held.append(cid)
                buf = bytearray(hi - lo)
                self._read_layout(vol.geo, vol.map, lo, memoryview(buf))
                for ni in range(lo // ncap, -(-hi // ncap)):
                    a, b = ni * ncap - lo, min((ni + 1) * ncap, hi) - lo
                    piece = memoryview(buf)[a:b]
                    if vol.thin and not any(piece):
                        continue  # a thin volume stays thin: zeros need no chunk
                    cid = self._exclusive(vol, ni, vmap=conv.map, geo=conv.geo)
                    self._write_chunk(conv.geo, cid, 0, piece)
                conv.done = hi
                for i in old_idx:  # below the watermark the old chunks are not read any more
                    if i < len(vol.map) and vol.map[i] is not None:
                        self._unref(vol.map[i])
                        vol.map[i] = None
                self._commit()  # data durable (synced), then the watermark
                return conv.done, vol.size, False
            finally:
                for cid in held:
                    imglock.byte_unlock(self._chunk_fd, cid)

    def _read_layout(self, geo: Geometry, vmap: list[int | None], offset: int, out: memoryview) -> None:
        pos, end = offset, offset + len(out)
        while pos < end:
            ci, inner = divmod(pos, geo.capacity)
            n = min(end - pos, geo.capacity - inner)
            self._read_chunk(geo, vmap[ci] if ci < len(vmap) else None, inner, out[pos - offset : pos - offset + n])
            pos += n

    def rename_volume(self, name: str, new_name: str) -> Volume:
        """Rename a volume (online: a VM using it keeps it; its lock follows the volume's id, not its name)."""
        with self._txn():
            vol = self.volume(name)
            check_name("volume", new_name)
            if new_name in self.volumes:
                raise PoolError(f"volume {new_name!r} already exists in pool {self.name!r}")
            del self.volumes[name]
            vol.name = new_name
            self.volumes[new_name] = vol
            for v in self.volumes.values():
                if v.snapshot_of == name:
                    v.snapshot_of = new_name
            self._commit()
            return vol

    def segments(self, name: str) -> list[dict[str, Any]]:
        """Where a volume's data lives, run by run (``lvdisplay -m``): logical range, layout, and per column the
        device and physical extent; runs of consecutive extents are merged, unallocated runs shown as such."""
        with self.lock:
            self._refresh()
            vol = self.volume(name)
            out: list[dict[str, Any]] = []
            parts: list[tuple[Geometry, list[int | None], int, int]] = []
            if vol.convert is not None:
                parts.append((vol.convert.geo, vol.convert.map, 0, vol.convert.done))
                parts.append((vol.geo, vol.map, vol.convert.done, vol.size))
            else:
                parts.append((vol.geo, vol.map, 0, vol.size))
            for geo, vmap, lo, hi in parts:
                cap = geo.capacity
                for ci in range(lo // cap, -(-hi // cap)):
                    start, end = max(ci * cap, lo), min((ci + 1) * cap, hi)
                    if start >= end:
                        continue
                    cid = vmap[ci] if ci < len(vmap) else None
                    cols = [] if cid is None else [{"device": self.devices[d].path, "device_id": d, "extent": pe}
                                                   for d, pe in self.chunks[cid]]
                    prev = out[-1] if out else None
                    if prev is not None and prev["layout"] == geo.layout and prev["end"] == start and (
                            (not cols and not prev["columns"]) or (cols and len(prev["columns"]) == len(cols) and all(
                                p["device_id"] == c["device_id"] and p["extent"] + prev["extents"] == c["extent"]
                                for p, c in zip(prev["columns"], cols, strict=True)))):
                        prev["end"] = end
                        prev["extents"] += 1
                        continue
                    out.append({"start": start, "end": end, "layout": geo.layout, "width": geo.width,
                                "allocated": cid is not None, "extents": 1, "columns": cols})
            return out

    def set_warn_percent(self, pct: int) -> None:
        """Warn (``pool show``, ``pool list``) when this much of the pool is in use."""
        if not 1 <= pct <= 100:
            raise PoolError(f"warning threshold {pct}% must be between 1 and 100")
        with self._txn():
            self.warn_percent = pct
            self._commit(sync=False)

    def _new_volume_id(self) -> int:
        vid = self.next_volume
        self.next_volume += 1
        return vid

    def open_volume(self, name: str, read_only: bool | None = None, force_share: bool = False) -> VolumeBackend:
        """A :class:`VolumeBackend` for volume ``name`` (snapshots and read-only pools open read-only).

        A writer has the volume to itself (no other process or open may use it, except ``force_share`` readers,
        who see it without locking, like ``qemu-img -U``); readers share it with each other.
        """
        with self.lock:
            self._refresh()
            vol = self.volume(name)
            if read_only is None:
                read_only = vol.read_only or self.read_only or force_share
            if not read_only and (vol.read_only or self.read_only):
                raise PoolError(f"volume {name!r} is read-only" + (" (a snapshot)" if vol.read_only else ""))
            if force_share and not read_only:
                raise PoolError("force-share is only for read-only use")
            if not force_share:
                self._lock_volume(vol, read_only)
            vol.opened += 1
            if not read_only:
                vol.writers += 1
            return VolumeBackend(self, vol, read_only, locked=not force_share)

    def _lock_volume(self, vol: Volume, read_only: bool) -> None:
        """The volume's lock byte: exclusive while this process writes it, shared while it only reads it. Opens in
        one process share the byte (an NBD export's connections): the process is one user of the volume."""
        fd = self._vol_fd
        busy = f"volume {self.name}/{vol.name} is in use by another VM or process"
        if fd >= 0:
            if not read_only and not vol.writers:
                if not imglock.byte_lock(fd, vol.id, exclusive=True, wait=False):
                    raise PoolError(busy + " (a writer needs it to itself; readers can look with -U)")
            elif read_only and not vol.locks:
                if not imglock.byte_lock(fd, vol.id, exclusive=False, wait=False):
                    raise PoolError(busy + " (it is being written; a reader can look anyway with -U)")
        vol.locks += 1

    def _unlock_volume(self, vol: Volume, was_writer: bool) -> None:
        vol.locks -= 1
        fd = self._vol_fd
        if fd < 0:
            return
        with contextlib.suppress(OSError):
            if vol.locks <= 0:
                imglock.byte_unlock(fd, vol.id)
            elif was_writer and not vol.writers:
                imglock.byte_lock(fd, vol.id, exclusive=False, wait=False)  # readers remain: shared again

    def volume_open(self, vol: Volume) -> bool:
        """Whether any process (this one included) has ``vol`` open."""
        if vol.opened:
            return True
        return self._vol_fd >= 0 and imglock.byte_held(self._vol_fd, vol.id)

    def _refuse_open(self, vol: Volume, what: str) -> None:
        if self.volume_open(vol):
            raise PoolError(f"volume {vol.name!r} is open (a VM, an NBD export...); close it before {what}")

    # ----------------------------------------------------------------- reporting

    def volume_usage(self, vol: Volume) -> dict[str, Any]:
        """Allocated vs virtual bytes of a volume (shared chunks count for every volume using them)."""
        alloc = sum(1 for c in vol.map if c is not None)
        shared = sum(1 for c in vol.map if c is not None and self.refs[c] > 1)
        tolerate = {"mirror": vol.geo.width - 1, "parity": 1}.get(vol.geo.layout, 0)
        worst = max((sum(1 for d, _ in self.chunks[c] if not self.devices[d].alive) for c in vol.map if c is not None),
                    default=0)
        state = "ok" if worst == 0 else ("degraded" if worst <= tolerate else "unavailable")
        return {
            "state": state,
            "name": vol.name,
            "size": vol.size,
            "layout": vol.geo.layout,
            "width": vol.geo.width,
            "stripe": vol.geo.stripe,
            "thin": vol.thin,
            "snapshot_of": vol.snapshot_of,
            "read_only": vol.read_only,
            "allocated": alloc * vol.geo.capacity,
            "allocated_percent": round(100.0 * alloc / len(vol.map), 1) if vol.map else 0.0,
            "shared_chunks": shared,
            "chunks": len(vol.map),
            "open": self.volume_open(vol),
            "converting_to": None if vol.convert is None else vol.convert.geo.layout,
            "converted_percent": None if vol.convert is None else round(100.0 * vol.convert.done / max(vol.size, 1), 1),
            "devices": sorted({self.devices[d].path for c in vol.map if c is not None for d, _ in self.chunks[c]}),
        }

    def status(self) -> dict[str, Any]:
        """Everything `pool show` shows: devices, capacity, use, state (ok, degraded, full), thin over-commit,
        open volumes, warnings."""
        with self.lock:
            self._refresh()
            total = sum(d.pe_count for d in self.devices.values())
            used = sum(d.pe_count - d.free for d in self.devices.values())
            virtual_thin = sum(v.size for v in self.volumes.values() if v.thin and not v.snapshot_of)
            pct = round(100.0 * used / total, 1) if total else 0.0
            warnings = list(self.warnings)
            if pct >= self.warn_percent:
                warnings.append(f"pool data {pct}% full (warning threshold {self.warn_percent}%)")
            degraded = [d.path for d in self.devices.values() if d.state != "ok"]
            state = "degraded" if degraded else "ok"
            if total and used >= total:
                state = "full" if not degraded else "degraded,full"
                if any(v.thin and None in v.map for v in self.volumes.values()):
                    warnings.append("the pool is full: thin volumes cannot allocate (writes to them fail or pause "
                                    f"the VM); add a device with `virtkit pool add {self.name} DEV`")
            vols = [self.volume_usage(v) for v in self.volumes.values()]
            return {
                "name": self.name,
                "uuid": self.uuid,
                "path": str(self.path),
                "extent_size": self.extent,
                "seq": self.seq,
                "state": state,
                "open_volumes": sorted(v["name"] for v in vols if v["open"]),
                "extents_total": total,
                "extents_used": used,
                "size": total * self.extent,
                "used": used * self.extent,
                "free": (total - used) * self.extent,
                "used_percent": pct,
                "warn_percent": self.warn_percent,
                "thin_virtual": virtual_thin,
                "overcommit": round(virtual_thin / (total * self.extent), 2) if total else 0.0,
                "devices": [
                    {
                        "id": d.id,
                        "uuid": d.uuid,
                        "path": d.path,
                        "state": d.state,
                        "reason": d.reason,
                        "size": d.pe_count * self.extent,
                        "used": (d.pe_count - d.free) * self.extent,
                        "extents": d.pe_count,
                        "extents_used": d.pe_count - d.free,
                    }
                    for d in self.devices.values()
                ],
                "volumes": vols,
                "warnings": warnings,
            }


class VolumeBackend:
    """A pool volume seen as a block device (the :class:`~virtkit.storage.backend.BlockBackend` seam)."""

    def __init__(self, pool: Pool, vol: Volume, read_only: bool, locked: bool = True) -> None:
        self.pool = pool
        self.vol = vol
        self.read_only = read_only
        self.locked = locked
        self.closed = False
        self.path = f"{pool.name}/{vol.name}"
        self._on_close: list[Any] = []

    @property
    def size(self) -> int:
        """Current size: a resize by any process shows here at once (the pool's sequence number is watched)."""
        pool = self.pool
        if not pool.closed and pool._shared_seq() > pool.seq:
            with pool.lock, contextlib.suppress(PoolError):
                pool._refresh()
        return self.vol.size

    @property
    def name(self) -> str:
        return self.vol.name

    def _check(self, offset: int, length: int, write: bool) -> None:
        if self.closed or self.pool.closed:
            raise BlockError(f"volume {self.vol.name!r} is closed")
        if self.vol.deleted:
            raise BlockError(f"volume {self.vol.name!r} was deleted")
        if write and self.read_only:
            raise BlockError(f"volume {self.vol.name!r} is read-only")
        check_range(self, offset, length)

    def readinto(self, offset: int, buf: memoryview | bytearray) -> int:
        with self.pool.lock:
            self._check(offset, len(buf), False)
            try:
                self.pool._io_read(self.vol, offset, memoryview(buf).cast("B"))
            except PoolError as err:
                raise BlockError(str(err)) from None
        return len(buf)

    def read(self, offset: int, length: int) -> bytes:
        """Convenience: return ``length`` bytes at ``offset``."""
        buf = bytearray(length)
        self.readinto(offset, buf)
        return bytes(buf)

    def write(self, offset: int, data: bytes | memoryview) -> int:
        mv = memoryview(data).cast("B")
        with self.pool.lock:
            self._check(offset, len(mv), True)
            try:
                self.pool._io_write(self.vol, offset, mv)
            except PoolError as err:
                raise BlockError(str(err), errno.ENOSPC if "out of space" in str(err) else errno.EIO) from None
        return len(mv)

    def flush(self) -> None:
        """Make every acknowledged write durable: fdatasync the devices, then commit pending metadata."""
        with self.pool.lock:
            if self.read_only or self.closed or self.pool.closed:
                return
            self.pool._sync_devices()
            if self.pool.dirty:
                try:
                    with self.pool._txn():
                        self.pool._commit(sync=False)
                except PoolError as err:
                    raise BlockError(str(err)) from None

    def write_zeroes(self, offset: int, length: int) -> None:
        with self.pool.lock:
            self._check(offset, length, True)
            try:
                self.pool._io_zero(self.vol, offset, length)
            except PoolError as err:
                raise BlockError(str(err), errno.ENOSPC if "out of space" in str(err) else errno.EIO) from None

    def discard(self, offset: int, length: int) -> None:
        """Discard: reads return zeros afterwards; whole thin chunks go back to the pool."""
        self.write_zeroes(offset, length)

    def close(self) -> None:
        with self.pool.lock:
            if self.closed:
                return
            try:
                self.flush()
            finally:
                self.closed = True
                self.vol.opened -= 1
                if not self.read_only:
                    self.vol.writers -= 1
                if self.locked:
                    self.pool._unlock_volume(self.vol, was_writer=not self.read_only)
        for cb in self._on_close:
            cb()


def _other_sessions(pool: Pool) -> bool:
    """Whether another process has ``pool`` open for writing (sessions held by someone else)."""
    fd = pool._sess_fd
    if fd < 0:
        return False
    if not pool.read_only:
        fcntl.flock(fd, fcntl.LOCK_UN)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        fcntl.flock(fd, fcntl.LOCK_SH if not pool.read_only else fcntl.LOCK_UN)
    return False


def delete_pool(name_or_path: str | os.PathLike[str], *, root: Path | None = None, force: bool = False) -> list[str]:
    """Delete a pool: refused while any process has one of its volumes open (or the pool open for writing);
    refused while it holds volumes unless ``force``. The devices' labels are wiped (the data on them is not);
    returns the device paths set free."""
    pool = Pool.open(name_or_path, root=root)
    try:
        with pool._txn():
            busy = sorted(v.name for v in pool.volumes.values() if pool.volume_open(v))
            if busy:
                raise PoolError(f"pool {pool.name!r} has open volumes ({', '.join(busy)}): stop their VMs and "
                                "exports first")
            if _other_sessions(pool):
                raise PoolError(f"pool {pool.name!r} is open in another process; try again when it has finished")
            if pool.volumes and not force:
                raise PoolError(f"pool {pool.name!r} still holds volumes ({', '.join(sorted(pool.volumes))}): delete "
                                "them first, or give --force")
            freed = []
            for dev in pool.devices.values():
                if dev.fd >= 0:
                    with contextlib.suppress(OSError):
                        os.pwrite(dev.fd, bytes(LABEL_SIZE), 0)
                        os.fsync(dev.fd)
                freed.append(dev.path)
            path = pool.path
    finally:
        pool._close_fds()
        pool.closed = True
    for child in list(path.iterdir()):
        if child.name.startswith("metadata") or child.name in POOL_FILES:
            child.unlink()
    with contextlib.suppress(OSError):
        path.rmdir()
    return freed


def rename_pool(name_or_path: str | os.PathLike[str], new_name: str, *, root: Path | None = None) -> Path:
    """Rename a pool (its directory, its metadata, the name in its devices' labels); refused while another
    process uses it. Returns the new directory."""
    check_name("pool", new_name)
    pool = Pool.open(name_or_path, root=root)
    try:
        with pool._txn():
            if _other_sessions(pool) or any(pool.volume_open(v) for v in pool.volumes.values()):
                raise PoolError(f"pool {pool.name!r} is in use (a VM, an NBD export...): rename it when it is not")
            new_path = pool.path.parent / new_name
            if new_path.exists():
                raise PoolError(f"{new_path} already exists")
            for dev in pool.devices.values():
                if dev.fd >= 0:
                    label = Label(pool.uuid, dev.uuid, pool.extent, dev.data_start, dev.pe_count, new_name)
                    os.pwrite(dev.fd, label.pack(), 0)
                    os.fsync(dev.fd)
            pool.name = new_name
            pool._commit()
            os.rename(pool.path, new_path)
    finally:
        pool._close_fds()
        pool.closed = True
    return new_path


# --------------------------------------------------------------------------- open_disk support

_registry_lock = threading.Lock()
_open_pools: dict[Path, tuple[Pool, int]] = {}


def open_volume_spec(spec: str, read_only: bool = False, root: Path | None = None,
                     force_share: bool = False) -> VolumeBackend:
    """Open ``POOL/VOLUME`` (POOL a name or directory) as a block backend; shares one Pool per process."""
    pool_part, sep, vol_name = spec.rpartition("/")
    if not sep or not pool_part or not vol_name:
        raise PoolError(f"bad volume spec {spec!r}: use POOL/VOLUME")
    path = resolve_pool_dir(pool_part, root).resolve()
    with _registry_lock:
        entry = _open_pools.get(path)
        try:
            if entry is None:
                entry = (Pool.open(path, read_only=False), 0)
            pool, count = entry
            try:
                backend = pool.open_volume(vol_name, read_only=True if read_only or force_share else None,
                                           force_share=force_share)
            except BaseException:
                if count == 0:
                    pool.close()
                raise
        except PoolError as err:  # block users (virtio-blk, NBD) expect BlockError
            raise BlockError(str(err)) from None
        _open_pools[path] = (pool, count + 1)

    def release() -> None:
        with _registry_lock:
            p, n = _open_pools[path]
            if n <= 1:
                del _open_pools[path]
                p.close()
            else:
                _open_pools[path] = (p, n - 1)

    backend._on_close.append(release)
    return backend


def shared_pool(name_or_path: str | os.PathLike[str], root: Path | None = None) -> Pool | None:
    """The pool this process holds open for its volumes (a VM's ``--disk POOL/VOL``), or None."""
    path = resolve_pool_dir(name_or_path, root).resolve()
    with _registry_lock:
        entry = _open_pools.get(path)
    return entry[0] if entry else None


def is_volume_spec(spec: str, root: Path | None = None) -> bool:
    """True when ``spec`` names ``POOL/VOLUME`` of an existing pool (and is not an existing file)."""
    if os.path.exists(spec):
        return False
    pool_part, sep, vol_name = spec.rpartition("/")
    if not sep or not pool_part or not NAME_RE.match(vol_name):
        return False
    try:
        path = resolve_pool_dir(pool_part, root)
    except PoolError:
        return False
    return (path / "metadata.0").exists() or (path / "metadata.1").exists()
