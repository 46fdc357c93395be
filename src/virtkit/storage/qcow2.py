"""qcow2 version 3 disk images (QEMU's docs/interop/qcow2.txt) as a :class:`BlockBackend`.

Read and write, backing chains (qcow2 or raw), zero clusters, compressed clusters (read),
internal snapshots and a refcount checker. Metadata (L2 tables, refcount blocks) is cached and
written back in an order that keeps the image consistent after a crash: refcount increments
reach the disk before the tables that use them, and refcount decrements only after the tables
that dropped the reference; a :meth:`Qcow2.flush` makes every earlier write durable.
"""

from __future__ import annotations

import errno
import os
import struct
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from virtkit.errors import ImageError
from virtkit.storage import bitmap as bm
from virtkit.storage.backend import BlockBackend, BlockError, RawFile, check_range, lock_image, replacing

MAGIC = b"QFI\xfb"
HEADER = struct.Struct(">4sIQIIQIIQQIIQQQQII")  # the 104-byte version 3 header
SNAP_HEADER = struct.Struct(">QIHHIIQII")  # the fixed 40 bytes of a snapshot table entry
FEATURE = struct.Struct(">BB46s")

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_NAMES = {0: "dirty", 1: "corrupt", 2: "external data file", 3: "compression type", 4: "extended L2 entries"}
COMPAT_LAZY_REFCOUNTS = 1 << 0

EXT_END = 0
EXT_BACKING_FMT = 0xE2792ACA
EXT_FEATURES = 0x6803F857

OFFSET_MASK = 0x00FFFFFFFFFFFE00  # bits 9-55: host offset in L1/L2 entries
COPIED = 1 << 63  # refcount is exactly 1: may be written in place
COMPRESSED = 1 << 62
ZERO = 1  # v3: the cluster reads as zeros
L1_RESERVED = 0x7F000000000001FF
L2_RESERVED = 0x3F000000000001FE

MIN_CLUSTER_BITS, MAX_CLUSTER_BITS = 9, 21
MAX_L1_BYTES = 32 << 20
MAX_REFTABLE_BYTES = 8 << 20
MAX_SNAPSHOTS = 65536
MAX_CHAIN = 64
REFCOUNT_DTYPES = {3: np.dtype("u1"), 4: np.dtype(">u2"), 5: np.dtype(">u4"), 6: np.dtype(">u8")}


class Qcow2Error(ImageError):
    """A qcow2 image that is malformed, unsupported or inconsistent."""


@dataclass
class Snapshot:
    """One internal snapshot: its own L1 table plus the metadata ``qemu-img snapshot -l`` shows."""

    id: str
    name: str
    l1_offset: int
    l1_size: int
    date_sec: int = 0
    date_nsec: int = 0
    vm_clock_nsec: int = 0
    vm_state_size: int = 0
    disk_size: int = 0
    extra: bytes = b""  # extra data beyond the 16 bytes we interpret, kept verbatim


@dataclass
class CheckResult:
    """What :meth:`Qcow2.check` found: leaked clusters (harmless) and corruptions (data at risk)."""

    leaks: int = 0
    corruptions: int = 0
    repaired: int = 0
    allocated_clusters: int = 0
    total_clusters: int = 0
    image_end_offset: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.leaks == 0 and self.corruptions == 0


def _div_up(a: int, b: int) -> int:
    return -(-a // b)


def probe_format(path: str) -> str:
    """``"qcow2"`` for any qcow2 file (version checks come when it is opened), else ``"raw"`` (backing files: their
    format is recorded in the overlay, or probed like QEMU does)."""
    try:
        with open(path, "rb") as f:
            return "qcow2" if f.read(4) == MAGIC else "raw"
    except FileNotFoundError:
        raise BlockError(f"disk image {path!r} does not exist") from None
    except OSError as err:
        raise BlockError(f"cannot open disk image {path!r}: {err.strerror}") from None


def open_backing(path: str, fmt: str | None, chain: list[str], force_share: bool = False) -> BlockBackend:
    """Open a backing file read-only (qcow2 or raw), continuing the loop check along ``chain``."""
    if "://" in path:
        raise Qcow2Error(f"backing file {path!r}: only local files are supported")
    if not os.path.exists(path):
        raise Qcow2Error(f"backing file {path!r} does not exist")
    fmt = fmt or probe_format(path)
    if fmt == "qcow2":
        return Qcow2(path, read_only=True, _chain=chain, force_share=force_share)
    if fmt == "raw":
        return RawFile(path, read_only=True, force_share=force_share)
    raise Qcow2Error(f"backing file {path!r} has unsupported format {fmt!r} (qcow2 or raw)")


def backing_ref(image: str, backing: str | os.PathLike[str]) -> str:
    """How an overlay at ``image`` names its ``backing`` file: relative when both are on one filesystem (the
    pair can move together), else the backing file's absolute path."""
    parent = os.path.dirname(os.path.abspath(image))
    try:
        if os.stat(parent).st_dev == os.stat(backing).st_dev:
            return os.path.relpath(os.path.abspath(backing), parent)
    except OSError:
        pass
    return os.path.realpath(backing)


class Qcow2:
    """An open qcow2 v3 image: a :class:`BlockBackend` that QEMU's tools can read back."""

    def __init__(self, path: str, read_only: bool = False, *, cache_tables: int = 256,
                 _chain: list[str] | None = None, force_share: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self.force_share = force_share
        self.fd = -1
        self.backing: BlockBackend | None = None
        self.backing_file: str | None = None
        self.backing_format: str | None = None
        chain = list(_chain or [])
        real = os.path.realpath(path)
        if real in chain:
            raise Qcow2Error("backing file loop: " + " -> ".join(chain + [real]))
        if len(chain) >= MAX_CHAIN:
            raise Qcow2Error(f"backing chain of {path!r} is longer than {MAX_CHAIN} images")
        if not os.path.exists(path):
            raise BlockError(f"disk image {path!r} does not exist")
        try:
            self.fd = os.open(path, os.O_RDONLY if read_only else os.O_RDWR)
        except PermissionError:
            raise BlockError(f"disk image {path!r} is not writable (open it read-only)") from None
        except OSError as err:
            raise BlockError(f"cannot open disk image {path!r}: {err.strerror}") from None
        self._max_tables = max(4, cache_tables)
        self._l2_cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._l2_dirty: set[int] = set()
        self._rb_cache: dict[int, np.ndarray] = {}
        self._rb_dirty: set[int] = set()
        self._rt_dirty = False
        self._l1_dirty = False
        self._pending_free: list[tuple[int, int]] = []  # (host offset, length): decref after metadata sync
        self._comp_cache: tuple[int, bytes] | None = None
        self.bitmap_entries: list[bm.Entry] = []  # the bitmap directory as the file holds it
        self._live_bitmaps: dict[str, bm.DirtyBitmap] = {}  # loaded for writing (stored at close)
        self._tracking: list[bm.DirtyBitmap] = []  # the enabled ones: every write marks them
        self._bitmaps_changed = False
        self._bitmaps_removed: set[str] = set()  # removed since the directory was last stored
        self._bitmap_dir = (0, 0)
        try:
            lock_image(self.fd, path, read_only, force_share)
            self._load(chain + [real])
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ open / validate

    def _err(self, msg: str) -> Qcow2Error:
        return Qcow2Error(f"{self.path}: {msg}")

    def _load(self, chain: list[str]) -> None:
        self.file_size = os.fstat(self.fd).st_size
        head = os.pread(self.fd, HEADER.size, 0)
        if len(head) < 8:
            raise self._err("not a qcow2 image (truncated header)")
        if head[:4] != MAGIC:
            raise self._err("not a qcow2 image (bad magic)")
        version = struct.unpack(">I", head[4:8])[0]
        if version in (1, 2):
            raise self._err(f"qcow2 version {version} is not supported, only version 3 "
                            "(upgrade with `qemu-img amend -o compat=1.1`)")
        if version != 3:
            raise self._err(f"unsupported qcow2 version {version}")
        if len(head) < HEADER.size:
            raise self._err("truncated qcow2 header")
        (_, _, bf_off, bf_size, cbits, size, crypt, l1_size, l1_off, rt_off, rt_clusters, nb_snap, snap_off,
         incompat, compat, autoclear, rc_order, hdr_len) = HEADER.unpack(head)
        if not MIN_CLUSTER_BITS <= cbits <= MAX_CLUSTER_BITS:
            raise self._err(f"cluster_bits {cbits} out of range {MIN_CLUSTER_BITS}..{MAX_CLUSTER_BITS}")
        cs = 1 << cbits
        self.cluster_bits, self.cluster_size = cbits, cs
        if hdr_len < HEADER.size or hdr_len % 8 or hdr_len > cs:
            raise self._err(f"invalid header_length {hdr_len}")
        if crypt:
            raise self._err("encrypted qcow2 images are not supported")
        header_cluster = os.pread(self.fd, cs, 0)
        self.compression_type = header_cluster[104] if hdr_len > 104 and len(header_cluster) > 104 else 0
        ext = self._read_extensions(header_cluster, hdr_len, bf_off)
        unknown = incompat & ~(INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION)
        if incompat & INCOMPAT_COMPRESSION and self.compression_type != 0:
            unknown |= INCOMPAT_COMPRESSION
        if unknown == INCOMPAT_COMPRESSION:
            kind = {1: "zstd"}.get(self.compression_type, str(self.compression_type))
            raise self._err(f"unsupported compression type {kind} (only zlib is supported)")
        if unknown:
            names = ext.get("features", {})
            bits = [i for i in range(64) if unknown >> i & 1]
            desc = ", ".join(names.get(b) or INCOMPAT_NAMES.get(b) or f"bit {b}" for b in bits)
            raise self._err(f"unsupported incompatible feature(s): {desc}")
        if incompat & INCOMPAT_CORRUPT and not self.read_only:
            raise self._err("image is marked corrupt; open it read-only or repair it with `qemu-img check -r all`")
        if rc_order > 6:
            raise self._err(f"refcount_order {rc_order} out of range 0..6")
        if not self.read_only and rc_order not in REFCOUNT_DTYPES:
            raise self._err(f"refcount_order {rc_order} ({1 << rc_order}-bit refcounts) is only supported read-only")
        self.l2_bits = cbits - 3
        l1_shift = cbits + self.l2_bits
        if size >= 1 << 62:
            raise self._err(f"virtual size {size} too large")
        need_l1 = _div_up(size, 1 << l1_shift)
        if l1_size < need_l1:
            raise self._err(f"L1 table has {l1_size} entries, the virtual size needs {need_l1}")
        if l1_size * 8 > MAX_L1_BYTES:
            raise self._err(f"L1 table of {l1_size} entries is too large")
        if l1_size:
            self._check_table(l1_off, l1_size * 8, "L1 table")
        if rt_clusters == 0 or rt_clusters * cs > MAX_REFTABLE_BYTES:
            raise self._err(f"invalid refcount table size of {rt_clusters} clusters")
        self._check_table(rt_off, rt_clusters * cs, "refcount table")
        if nb_snap > MAX_SNAPSHOTS:
            raise self._err(f"too many snapshots ({nb_snap})")
        if nb_snap and (snap_off % cs or snap_off >= self.file_size or snap_off == 0):
            raise self._err(f"snapshot table offset {snap_off:#x} is misaligned or outside the file")
        self.version = version
        self.size = size
        self.incompatible, self.compatible, self.autoclear = incompat, compat, autoclear
        self.refcount_order = rc_order
        self.header_length = hdr_len
        self.l1_size, self.l1_offset = l1_size, l1_off
        self.rt_offset, self.rt_clusters = rt_off, rt_clusters
        self.snapshots_offset = snap_off
        self._l1_shift = l1_shift
        self._rb_shift = cbits + 3 - rc_order  # clusters per refcount block, as a shift
        self.l1 = self._read_u64(l1_off, l1_size)
        self.rt = self._read_u64(rt_off, rt_clusters * cs // 8)
        self.snapshots = self._read_snapshots(nb_snap, snap_off)
        self._free_hint = 0
        if bf_off:
            if bf_size == 0 or bf_size > 1023 or bf_off + bf_size > cs:
                raise self._err("backing file name is outside the header cluster or too long")
            raw = header_cluster[bf_off:bf_off + bf_size]
            if len(raw) != bf_size:
                raise self._err("truncated backing file name")
            try:
                self.backing_file = raw.decode()
            except UnicodeDecodeError:
                raise self._err("backing file name is not valid UTF-8") from None
            self.backing_format = ext.get("backing_fmt")
            bpath = self.backing_file
            if not os.path.isabs(bpath):
                bpath = os.path.join(os.path.dirname(os.path.abspath(self.path)), bpath)
            self.backing = open_backing(bpath, self.backing_format, chain, self.force_share)
        self._load_bitmaps(ext.get("bitmaps"))
        if not self.read_only:
            keep = bm.AUTOCLEAR_BITMAPS if self.bitmap_entries else 0
            if self.autoclear & ~keep:  # a writer must clear the autoclear features it does not know
                self.autoclear &= keep
                os.pwrite(self.fd, struct.pack(">Q", self.autoclear), 88)
            if self.incompatible & INCOMPAT_DIRTY:  # lazy refcounts were in use: rebuild them
                res = self.check(repair=True)
                if res.corruptions:
                    why = "; ".join(res.messages[:3])
                    raise self._err(f"image is dirty and its refcounts cannot be repaired: {why}")
                self.incompatible &= ~INCOMPAT_DIRTY
                os.fdatasync(self.fd)
                os.pwrite(self.fd, struct.pack(">Q", self.incompatible), 72)
                os.fdatasync(self.fd)
            if self._live_bitmaps:
                self._store_bitmaps(in_use=True)  # a crash from here on leaves them marked inconsistent

    def _read_extensions(self, hc: bytes, start: int, bf_off: int) -> dict:
        out: dict = {}
        pos = start
        end = bf_off if bf_off and bf_off > start else len(hc)
        while pos + 8 <= end:
            etype, elen = struct.unpack_from(">II", hc, pos)
            pos += 8
            if etype == EXT_END:
                break
            if pos + elen > end:
                raise self._err(f"header extension {etype:#x} overruns the header cluster")
            data = hc[pos:pos + elen]
            if etype == EXT_BACKING_FMT:
                out["backing_fmt"] = data.decode(errors="replace")
            elif etype == bm.EXT_BITMAPS:
                if elen < bm.EXT_STRUCT.size:
                    raise self._err("bitmaps header extension is too short")
                out["bitmaps"] = bm.EXT_STRUCT.unpack_from(data, 0)
            elif etype == EXT_FEATURES:
                names = {}
                for i in range(0, elen - FEATURE.size + 1, FEATURE.size):
                    ftype, bit, name = FEATURE.unpack_from(data, i)
                    if ftype == 0:
                        names[bit] = name.rstrip(b"\0").decode(errors="replace")
                out["features"] = names
            pos += (elen + 7) & ~7
        return out

    def _check_table(self, off: int, nbytes: int, what: str) -> None:
        if off % self.cluster_size or off == 0:
            raise self._err(f"{what} offset {off:#x} is not cluster aligned")
        if off + nbytes > self.file_size:
            raise self._err(f"{what} at {off:#x} (+{nbytes}) lies outside the file of {self.file_size} bytes")

    def _read_u64(self, off: int, count: int) -> np.ndarray:
        if count == 0:
            return np.zeros(0, dtype=np.uint64)
        raw = os.pread(self.fd, count * 8, off)
        if len(raw) != count * 8:
            raise self._err(f"table at {off:#x} is truncated")
        return np.frombuffer(raw, dtype=">u8").astype(np.uint64)

    def _read_snapshots(self, nb: int, off: int) -> list[Snapshot]:
        snaps: list[Snapshot] = []
        pos = off
        for _ in range(nb):
            raw = os.pread(self.fd, SNAP_HEADER.size, pos)
            if len(raw) != SNAP_HEADER.size:
                raise self._err("snapshot table is truncated")
            l1_off, l1_size, id_len, name_len, dsec, dnsec, vmclock, vmstate, extra_len = SNAP_HEADER.unpack(raw)
            if extra_len > 1024:
                raise self._err(f"snapshot extra data of {extra_len} bytes is too large")
            rest = os.pread(self.fd, extra_len + id_len + name_len, pos + SNAP_HEADER.size)
            if len(rest) != extra_len + id_len + name_len:
                raise self._err("snapshot table is truncated")
            if l1_size * 8 > MAX_L1_BYTES or (l1_size and (l1_off % self.cluster_size or
                                                             l1_off + l1_size * 8 > self.file_size)):
                raise self._err("snapshot L1 table is misaligned, too large or outside the file")
            extra = rest[:extra_len]
            disk_size = struct.unpack_from(">Q", extra, 8)[0] if extra_len >= 16 else self.size
            if extra_len >= 8:
                vmstate = max(vmstate, struct.unpack_from(">Q", extra, 0)[0])
            snaps.append(Snapshot(
                id=rest[extra_len:extra_len + id_len].decode(errors="replace"),
                name=rest[extra_len + id_len:].decode(errors="replace"),
                l1_offset=l1_off, l1_size=l1_size, date_sec=dsec, date_nsec=dnsec, vm_clock_nsec=vmclock,
                vm_state_size=vmstate, disk_size=disk_size, extra=extra[16:]))
            pos += (SNAP_HEADER.size + extra_len + id_len + name_len + 7) & ~7
            if pos - off > 64 << 20:
                raise self._err("snapshot table is too large")
        return snaps

    # ------------------------------------------------------------------ create

    @classmethod
    def create(cls, path: str, size: int, cluster_size: int = 65536, backing: str | None = None,
               backing_fmt: str | None = None) -> None:
        """Write a new empty qcow2 v3 image (16-bit refcounts, QEMU's layout) at ``path``."""
        if cluster_size < 512 or cluster_size > 2 << 20 or cluster_size & (cluster_size - 1):
            raise Qcow2Error(f"cluster size {cluster_size} must be a power of two between 512 and 2M")
        if backing:
            bpath = backing if os.path.isabs(backing) else os.path.join(os.path.dirname(os.path.abspath(path)),
                                                                         backing)
            if os.path.realpath(bpath) == os.path.realpath(path):
                raise Qcow2Error(f"backing file loop: {path} cannot back itself")
            b = open_backing(bpath, backing_fmt, [os.path.realpath(path)])
            try:
                if size is None or size < 0:
                    size = b.size
                backing_fmt = backing_fmt or ("qcow2" if isinstance(b, Qcow2) else "raw")
            finally:
                b.close()
        if size is None or size < 0:
            raise Qcow2Error("a size is needed when there is no backing file")
        size = (size + 511) & ~511
        cbits = cluster_size.bit_length() - 1
        l1_size = _div_up(size, 1 << (2 * cbits - 3))
        if l1_size * 8 > MAX_L1_BYTES:
            raise Qcow2Error(f"virtual size {size} is too large for {cluster_size}-byte clusters")
        l1_clusters = _div_up(l1_size * 8, cluster_size)
        per_rb = cluster_size * 8 // 16
        rb, rt = 1, 1
        while True:
            total = 1 + rt + rb + l1_clusters
            nrb, nrt = _div_up(total, per_rb), _div_up(_div_up(total, per_rb) * 8, cluster_size)
            if (nrb, nrt) == (rb, rt):
                break
            rb, rt = nrb, nrt
        rt_off = cluster_size
        rb_off = rt_off + rt * cluster_size
        l1_off = rb_off + rb * cluster_size
        total = 1 + rt + rb + l1_clusters
        hdr_len = 112
        header = bytearray(cluster_size)
        HEADER.pack_into(header, 0, MAGIC, 3, 0, 0, cbits, size, 0, l1_size, l1_off if l1_size else 0, rt_off, rt,
                         0, 0, 0, 0, 0, 4, hdr_len)
        pos = hdr_len
        if backing_fmt:
            fmt = backing_fmt.encode()
            struct.pack_into(">II", header, pos, EXT_BACKING_FMT, len(fmt))
            header[pos + 8:pos + 8 + len(fmt)] = fmt
            pos += 8 + ((len(fmt) + 7) & ~7)
        feats = [(0, 0, b"dirty bit"), (0, 1, b"corrupt bit"), (0, 2, b"external data file"),
                 (0, 3, b"compression type"), (0, 4, b"extended L2 entries"), (1, 0, b"lazy refcounts"),
                 (2, 0, b"bitmaps"), (2, 1, b"raw external data")]
        struct.pack_into(">II", header, pos, EXT_FEATURES, len(feats) * FEATURE.size)
        pos += 8
        for ftype, bit, name in feats:
            FEATURE.pack_into(header, pos, ftype, bit, name)
            pos += FEATURE.size
        pos += 8  # end-of-extensions marker (zeros)
        if backing:
            bname = backing.encode()
            if len(bname) > 1023 or pos + len(bname) > cluster_size:
                raise Qcow2Error("backing file name too long")
            header[pos:pos + len(bname)] = bname
            struct.pack_into(">QI", header, 8, pos, len(bname))
        reftable = np.zeros(rt * cluster_size // 8, dtype=">u8")
        reftable[:rb] = [rb_off + i * cluster_size for i in range(rb)]
        refblocks = np.zeros(rb * per_rb, dtype=">u2")
        refblocks[:total] = 1
        # an existing image another VM or process holds is refused before anything is written; the new image
        # replaces it only when complete
        with replacing(path) as tmp:
            try:
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            except OSError as err:
                raise BlockError(f"cannot create disk image {path!r}: {err.strerror}") from None
            try:
                os.pwrite(fd, bytes(header), 0)
                os.pwrite(fd, reftable.tobytes(), rt_off)
                os.pwrite(fd, refblocks.tobytes(), rb_off)
                os.pwrite(fd, bytes(l1_clusters * cluster_size), l1_off)
            except OSError as err:
                raise BlockError(f"cannot create disk image {path!r}: {err.strerror}", err.errno) from None
            finally:
                os.close(fd)

    # ------------------------------------------------------------------ refcounts

    def _refblock(self, bi: int, create_at: int | None = None) -> np.ndarray | None:
        """The refcount block number ``bi`` as a NumPy array (None when it does not exist)."""
        blk = self._rb_cache.get(bi)
        if blk is not None:
            return blk
        off = int(self.rt[bi]) & ~0x1FF if bi < len(self.rt) else 0
        if off == 0:
            return None
        if off % self.cluster_size or off + self.cluster_size > max(self.file_size, self._alloc_end_bytes()):
            raise self._err(f"refcount block at {off:#x} is misaligned or outside the file")
        raw = os.pread(self.fd, self.cluster_size, off)
        if len(raw) < self.cluster_size:
            raw = raw + bytes(self.cluster_size - len(raw))
        dt = REFCOUNT_DTYPES.get(self.refcount_order)
        if dt is None:  # sub-byte refcounts (read-only: used by check)
            bits = 1 << self.refcount_order  # packed least significant bits first, like QEMU
            arr = np.frombuffer(raw, dtype=np.uint8).astype(np.uint64)
            shifts = (np.arange(8 // bits) * bits).astype(np.uint64)
            blk = ((arr[:, None] >> shifts) & np.uint64((1 << bits) - 1)).reshape(-1)
        else:
            blk = np.frombuffer(raw, dtype=dt).astype(dt.newbyteorder("="))
        self._rb_cache[bi] = blk
        return blk

    def _alloc_end_bytes(self) -> int:
        return getattr(self, "_alloc_end", 0) << self.cluster_bits

    def get_refcount(self, ci: int) -> int:
        """The stored refcount of host cluster number ``ci``."""
        blk = self._refblock(ci >> self._rb_shift)
        return 0 if blk is None else int(blk[ci & ((1 << self._rb_shift) - 1)])

    def _note_end(self, end_cluster: int) -> None:
        if end_cluster > getattr(self, "_alloc_end", 0):
            self._alloc_end = end_cluster

    def _find_free(self, n: int) -> int:
        per = 1 << self._rb_shift
        ci = self._free_hint
        run_start, run_len = ci, 0
        while True:
            bi = ci >> self._rb_shift
            lo = ci & (per - 1)
            blk = self._refblock(bi)
            if blk is None:
                return run_start
            a = blk[lo:]
            if run_len == 0 and len(a) >= n and not a[:n].any():  # fast path: free right at the hint
                return ci
            nz = np.flatnonzero(a)
            if len(nz) == 0:
                run_len += len(a)
            else:
                if run_len + int(nz[0]) >= n:
                    return run_start
                bounds = np.concatenate((nz, [len(a)]))
                gaps = np.diff(bounds) - 1
                ok = np.flatnonzero(gaps >= n)
                if len(ok) == 0 and len(nz) == len(a):
                    run_start, run_len = ci + len(a), 0
                elif len(ok):
                    return ci + int(bounds[ok[0]]) + 1
                else:
                    last = int(nz[-1])
                    run_start, run_len = ci + last + 1, len(a) - last - 1
                    if run_len >= n:
                        return run_start
            if run_len >= n:
                return run_start
            ci += len(a)

    def _alloc(self, n: int) -> int:
        """Allocate ``n`` contiguous free host clusters (refcount 1); return the byte offset."""
        while True:
            start = self._find_free(n)
            if n > 1 and any(self._refblock(bi) is None
                             for bi in range(start >> self._rb_shift, ((start + n - 1) >> self._rb_shift) + 1)):
                return self._alloc_at_end(n)
            again = False
            for bi in range(start >> self._rb_shift, ((start + n - 1) >> self._rb_shift) + 1):
                if self._refblock(bi) is None:
                    at = max(start, bi << self._rb_shift)
                    if bi >= len(self.rt):
                        self._grow_reftable(bi + 1)
                    else:
                        self._new_refblock(bi, at)
                    again = True
                    break
            if again:
                continue
            self._add_refs(start, n, 1)
            if start <= self._free_hint:
                self._free_hint = start + n
            self._note_end(start + n)
            return start << self.cluster_bits

    def _alloc_at_end(self, n: int) -> int:
        """``n`` contiguous clusters past everything allocated, with the refcount blocks that count them placed
        just before them (a run that needs new refcount blocks cannot have them inside it: QEMU does the same)."""
        sh = self._rb_shift
        start = max(_div_up(self.file_size, self.cluster_size), getattr(self, "_alloc_end", 0))
        k = 0
        while True:  # the blocks needed for [start, start + k + n) may add blocks: find the fixed point
            end = start + k + n
            missing = [bi for bi in range(start >> sh, ((end - 1) >> sh) + 1)
                       if bi >= len(self.rt) or self.rt[bi] == 0]
            if len(missing) == k:
                break
            k = len(missing)
        if missing and missing[-1] >= len(self.rt):
            self._grow_reftable(missing[-1] + 1)
            return self._alloc(n)  # the table moved to the end: plan again after it
        dt = REFCOUNT_DTYPES[self.refcount_order].newbyteorder("=")
        for i, bi in enumerate(missing):
            self._rb_cache[bi] = np.zeros(1 << sh, dtype=dt)
            self._rb_dirty.add(bi)
            self.rt[bi] = (start + i) << self.cluster_bits
        if missing:
            self._rt_dirty = True
        self._add_refs(start, k + n, 1)
        self._note_end(start + k + n)
        return (start + k) << self.cluster_bits

    def _new_refblock(self, bi: int, at: int) -> None:
        """Create refcount block ``bi`` in the free cluster ``at`` that it covers (it counts itself)."""
        dt = REFCOUNT_DTYPES[self.refcount_order].newbyteorder("=")
        blk = np.zeros(1 << self._rb_shift, dtype=dt)
        blk[at & ((1 << self._rb_shift) - 1)] = 1
        self._rb_cache[bi] = blk
        self._rb_dirty.add(bi)
        self.rt[bi] = at << self.cluster_bits
        self._rt_dirty = True
        self._note_end(at + 1)

    def _grow_reftable(self, min_entries: int) -> None:
        """Move the refcount table to the end of the file with room for ``min_entries`` blocks."""
        cs, sh = self.cluster_size, self._rb_shift
        start = max(_div_up(self.file_size, cs), getattr(self, "_alloc_end", 0))
        entries = max(min_entries, len(self.rt) * 2)
        while True:
            tclusters = _div_up(entries * 8, cs)
            nblocks = 0
            while True:
                end = start + tclusters + nblocks
                missing = [bi for bi in range(start >> sh, ((end - 1) >> sh) + 1)
                           if bi >= len(self.rt) or self.rt[bi] == 0]
                if len(missing) == nblocks:
                    break
                nblocks = len(missing)
            if ((end - 1) >> sh) < entries:
                break
            entries = ((end - 1) >> sh) + 1
        newrt = np.zeros(tclusters * cs // 8, dtype=np.uint64)
        newrt[:len(self.rt)] = self.rt
        dt = REFCOUNT_DTYPES[self.refcount_order].newbyteorder("=")
        for k, bi in enumerate(missing):
            newrt[bi] = (start + tclusters + k) << self.cluster_bits
            self._rb_cache[bi] = np.zeros(1 << sh, dtype=dt)
            self._rb_dirty.add(bi)
        old_off, old_clusters = self.rt_offset, self.rt_clusters
        self.rt = newrt
        self._add_refs(start, tclusters + nblocks, 1)
        self._note_end(end)
        # New blocks and table first, then the header switches to them (old table stays valid until then).
        self._write_refblocks()
        os.pwrite(self.fd, newrt.astype(">u8").tobytes(), start << self.cluster_bits)
        os.fdatasync(self.fd)
        os.pwrite(self.fd, struct.pack(">QI", start << self.cluster_bits, tclusters), 48)
        os.fdatasync(self.fd)
        self.file_size = max(self.file_size, end << self.cluster_bits)
        self.rt_offset, self.rt_clusters = start << self.cluster_bits, tclusters
        self._rt_dirty = False
        self._pending_free.append((old_off, old_clusters * cs))

    def _add_refs(self, start: int, n: int, delta: int) -> None:
        """Add ``delta`` to the refcounts of host clusters ``start .. start+n-1`` (blocks must exist)."""
        sh, per = self._rb_shift, 1 << self._rb_shift
        ci, end = start, start + n
        maxval = (1 << (1 << self.refcount_order)) - 1
        while ci < end:
            bi = ci >> sh
            lo = ci & (per - 1)
            hi = min(per, lo + end - ci)
            blk = self._refblock(bi)
            if blk is None:
                raise self._err(f"cluster {ci} has no refcount block")
            seg = blk[lo:hi]
            if delta > 0 and int(seg.max()) > maxval - delta:
                raise self._err(f"refcount overflow at cluster {ci}")
            if delta < 0 and int(seg.min()) < -delta:
                raise self._err(f"refcount underflow at cluster {ci} (image metadata is inconsistent)")
            if delta > 0:
                seg += delta
            else:
                seg -= -delta
                zeros = np.flatnonzero(seg == 0)
                if len(zeros):
                    first = ci + int(zeros[0])
                    self._free_hint = min(self._free_hint, first)
                    for z in zeros.tolist():
                        self._l2_cache.pop((ci + z) << self.cluster_bits, None)
                        self._l2_dirty.discard((ci + z) << self.cluster_bits)
            self._rb_dirty.add(bi)
            ci += hi - lo

    def _unref_range(self, off: int, length: int) -> None:
        first = off >> self.cluster_bits
        last = (off + length - 1) >> self.cluster_bits
        self._add_refs(first, last - first + 1, -1)

    def _entry_ranges(self, e: int) -> tuple[int, int] | None:
        """Host byte range (offset, length) an L2 entry references, or None."""
        if e & COMPRESSED:
            x = 62 - (self.cluster_bits - 8)
            off = e & ((1 << x) - 1)
            nsec = ((e >> x) & ((1 << (62 - x)) - 1)) + 1
            start = off & ~511
            return start, nsec * 512
        off = e & OFFSET_MASK
        return (off, self.cluster_size) if off else None

    def _free_entry_later(self, e: int) -> None:
        r = self._entry_ranges(e)
        if r:
            self._pending_free.append(r)

    # ------------------------------------------------------------------ metadata cache and write-back

    def _validate_host(self, off: int, what: str) -> None:
        if off % self.cluster_size:
            raise self._err(f"{what} offset {off:#x} is not cluster aligned")
        if off + self.cluster_size > max(self.file_size, self._alloc_end_bytes()):
            raise self._err(f"{what} at {off:#x} lies outside the file")

    def _load_l2(self, off: int) -> np.ndarray:
        t = self._l2_cache.get(off)
        if t is not None:
            self._l2_cache.move_to_end(off)
            return t
        self._validate_host(off, "L2 table")
        raw = os.pread(self.fd, self.cluster_size, off)
        if len(raw) != self.cluster_size:
            raise self._err(f"L2 table at {off:#x} is truncated")
        t = np.frombuffer(raw, dtype=">u8").astype(np.uint64)
        self._cache_put(off, t)
        return t

    def _cache_put(self, off: int, t: np.ndarray) -> None:
        self._l2_cache[off] = t
        if len(self._l2_cache) > self._max_tables:
            if len(self._l2_dirty) >= self._max_tables // 2:
                self._flush_metadata()
            for k in list(self._l2_cache):
                if len(self._l2_cache) <= self._max_tables:
                    break
                if k not in self._l2_dirty and k != off:
                    del self._l2_cache[k]

    def _l2_for_read(self, l1i: int) -> np.ndarray | None:
        e = int(self.l1[l1i])
        if e & L1_RESERVED & ~COPIED:
            raise self._err(f"L1 entry {l1i} has reserved bits set")
        off = e & OFFSET_MASK
        return self._load_l2(off) if off else None

    def _l2_for_write(self, l1i: int) -> np.ndarray:
        e = int(self.l1[l1i])
        off = e & OFFSET_MASK
        if off and e & COPIED:
            t = self._load_l2(off)
        else:
            old = self._load_l2(off).copy() if off else np.zeros(self.cluster_size // 8, dtype=np.uint64)
            new = self._alloc(1)
            if off:
                self._pending_free.append((off, self.cluster_size))
            off = new
            t = old
            self.l1[l1i] = off | COPIED
            self._l1_dirty = True
            self._l2_dirty.add(off)  # before _cache_put, which may flush: L1 must never outrun its table
            self._cache_put(off, t)
        self._l2_dirty.add(off)
        return t

    def _write_refblocks(self) -> None:
        dt = REFCOUNT_DTYPES[self.refcount_order]
        for bi in sorted(self._rb_dirty):
            os.pwrite(self.fd, self._rb_cache[bi].astype(dt).tobytes(), int(self.rt[bi]) & ~0x1FF)
        self._rb_dirty.clear()

    def _flush_metadata(self) -> None:
        """Write cached metadata in crash-safe order; then release clusters freed before this point."""
        if self.read_only:
            return
        if self._rb_dirty:
            self._write_refblocks()
            os.fdatasync(self.fd)
        if self._rt_dirty:
            os.pwrite(self.fd, self.rt.astype(">u8").tobytes(), self.rt_offset)
            os.fdatasync(self.fd)
            self._rt_dirty = False
        if self._l2_dirty or self._l1_dirty:
            for off in sorted(self._l2_dirty):
                os.pwrite(self.fd, self._l2_cache[off].astype(">u8").tobytes(), off)
            self._l2_dirty.clear()
            if self._l1_dirty:  # new L2 tables must be durable before the L1 entries that point at them
                os.fdatasync(self.fd)
                os.pwrite(self.fd, self.l1.astype(">u8").tobytes(), self.l1_offset)
                self._l1_dirty = False
            os.fdatasync(self.fd)
        self.file_size = max(self.file_size, os.fstat(self.fd).st_size)
        if getattr(self, "_pinned", 0):
            return  # a reader still uses a mapping: release freed clusters at a later flush
        pending, self._pending_free = self._pending_free, []
        for off, length in pending:  # the tables that referenced these are on disk now
            self._unref_range(off, length)

    # ------------------------------------------------------------------ BlockBackend

    def _read_backing(self, voff: int, out: memoryview) -> None:
        n = len(out)
        b = self.backing
        avail = 0 if b is None else max(0, min(n, b.size - voff))
        if avail:
            b.readinto(voff, out[:avail])
        if avail < n:
            out[avail:] = bytes(n - avail)

    def _read_compressed(self, e: int) -> bytes:
        if self._comp_cache and self._comp_cache[0] == e:
            return self._comp_cache[1]
        x = 62 - (self.cluster_bits - 8)
        off = e & ((1 << x) - 1)
        nsec = ((e >> x) & ((1 << (62 - x)) - 1)) + 1
        clen = nsec * 512 - (off & 511)
        raw = os.pread(self.fd, clen, off)
        try:
            d = zlib.decompressobj(-12)
            out = d.decompress(raw, self.cluster_size)
        except zlib.error as err:
            raise self._err(f"compressed cluster at {off:#x} is corrupt: {err}") from None
        if len(out) != self.cluster_size:
            raise self._err(f"compressed cluster at {off:#x} is truncated")
        self._comp_cache = (e, out)
        return out

    def _read_cluster(self, vcl: int, e: int, out: memoryview) -> None:
        """Fill ``out`` (one cluster) with virtual cluster ``vcl`` whose L2 entry is ``e``."""
        cs = self.cluster_size
        if e & COMPRESSED:
            out[:] = self._read_compressed(e)
        elif e & ZERO:
            out[:] = bytes(cs)
        elif e & OFFSET_MASK:
            n = os.preadv(self.fd, [out], e & OFFSET_MASK)
            if n < cs:
                out[n:] = bytes(cs - n)
        else:
            self._read_backing(vcl * cs, out)

    def readinto(self, offset: int, buf: memoryview | bytearray) -> int:
        """Read ``len(buf)`` bytes at virtual ``offset``, following the backing chain for holes."""
        if buf.__class__ is bytearray:  # fast path: a small read inside one allocated, cached cluster
            n = len(buf)
            cs = self.cluster_size
            within = offset & (cs - 1)
            if n and offset >= 0 and within + n <= cs and offset + n <= self.size:
                t = self._l2_cache.get(int(self.l1[offset >> self._l1_shift]) & OFFSET_MASK)
                if t is not None:
                    e = int(t[(offset >> self.cluster_bits) & ((1 << self.l2_bits) - 1)])
                    host = e & OFFSET_MASK
                    if host and not e & (COMPRESSED | ZERO | L2_RESERVED) and not host & (cs - 1):
                        if os.preadv(self.fd, [buf], host + within) == n:
                            return n
        mv = memoryview(buf).cast("B")
        n = len(mv)
        check_range(self, offset, n)
        cb, cs = self.cluster_bits, self.cluster_size
        l2mask = (1 << self.l2_bits) - 1
        pos = 0
        while pos < n:
            voff = offset + pos
            l1i = voff >> self._l1_shift
            span_end = min(n, ((l1i + 1) << self._l1_shift) - offset)
            first_cl = voff >> cb
            last_cl = (offset + span_end - 1) >> cb
            t = self._l2_for_read(l1i)
            if t is None:
                entries = [0] * (last_cl - first_cl + 1)
            else:
                i0 = first_cl & l2mask
                entries = t[i0:i0 + last_cl - first_cl + 1].tolist()
            k = 0
            m = len(entries)
            while k < m:
                e = entries[k]
                if e & L2_RESERVED and not e & COMPRESSED:
                    raise self._err(f"L2 entry for cluster {first_cl + k} has reserved bits set")
                kind = 3 if e & COMPRESSED else 1 if e & ZERO else 2 if e & OFFSET_MASK else 0
                j = k + 1
                if kind == 2:
                    host = e & OFFSET_MASK
                    while j < m and entries[j] & (OFFSET_MASK | ZERO | COMPRESSED) == host + (j - k) * cs:
                        j += 1
                elif kind != 3:
                    while j < m:
                        f = entries[j]
                        fk = 3 if f & COMPRESSED else 1 if f & ZERO else 2 if f & OFFSET_MASK else 0
                        if fk != kind:
                            break
                        j += 1
                b0 = max(pos, ((first_cl + k) << cb) - offset)
                b1 = min(span_end, ((first_cl + j) << cb) - offset)
                seg = mv[b0:b1]
                if kind == 2:
                    within = offset + b0 - ((first_cl + k) << cb)
                    host = (e & OFFSET_MASK) + within
                    if (e & OFFSET_MASK) % cs:
                        raise self._err(f"L2 entry for cluster {first_cl + k} is misaligned")
                    got = os.preadv(self.fd, [seg], host)
                    if got < len(seg):
                        seg[got:] = bytes(len(seg) - got)
                elif kind == 1:
                    seg[:] = bytes(len(seg))
                elif kind == 0:
                    self._read_backing(offset + b0, seg)
                else:
                    data = self._read_compressed(e)
                    within = offset + b0 - ((first_cl + k) << cb)
                    seg[:] = data[within:within + len(seg)]
                k = j
            pos = span_end
        return n

    def map_read(self, offset: int, length: int) -> list[tuple[int, int, int]]:
        """Where a read of ``[offset, +length)`` finds its bytes: ``(voff, n, host)`` pieces with host
        a file offset in :attr:`fd`, ``-1`` for zeros or ``-2`` for "use readinto" (backing, compressed).

        Lets a server ``sendfile()`` data straight from the image. Clusters mapped here are not
        reused until :meth:`unpin` (freed clusters stay allocated while a mapping is in use).
        """
        check_range(self, offset, length)
        cb, cs = self.cluster_bits, self.cluster_size
        l2mask = (1 << self.l2_bits) - 1
        out: list[tuple[int, int, int]] = []
        pos, end = offset, offset + length
        while pos < end:
            l1i = pos >> self._l1_shift
            span_end = min(end, (l1i + 1) << self._l1_shift)
            first_cl = pos >> cb
            last_cl = (span_end - 1) >> cb
            t = self._l2_for_read(l1i)
            entries = [0] * (last_cl - first_cl + 1) if t is None else (
                t[(first_cl & l2mask):(first_cl & l2mask) + last_cl - first_cl + 1].tolist())
            for k, e in enumerate(entries):
                c0 = (first_cl + k) << cb
                a, b = max(pos, c0), min(span_end, c0 + cs)
                if e & COMPRESSED:
                    host = -2
                elif e & L2_RESERVED:
                    raise self._err(f"L2 entry for cluster {first_cl + k} has reserved bits set")
                elif e & ZERO or (not e & OFFSET_MASK and self.backing is None):
                    host = -1
                elif e & OFFSET_MASK:
                    if (e & OFFSET_MASK) % cs:
                        raise self._err(f"L2 entry for cluster {first_cl + k} is misaligned")
                    host = (e & OFFSET_MASK) + a - c0
                else:
                    host = -2
                if out:
                    pv, pn, ph = out[-1]
                    if (ph == host < 0) or (ph >= 0 and host >= 0 and ph + pn == host):
                        out[-1] = (pv, pn + b - a, ph)
                        continue
                out.append((a, b - a, host))
            pos = span_end
        self._pinned = getattr(self, "_pinned", 0) + 1
        return out

    def unpin(self) -> None:
        """End the use of a :meth:`map_read` mapping."""
        self._pinned = max(0, getattr(self, "_pinned", 0) - 1)

    def write(self, offset: int, data: bytes | memoryview) -> int:
        """Write ``data`` at virtual ``offset``: in place where the cluster is ours, else allocate.

        A host error (a full file system: ``ENOSPC``) is a :class:`BlockError` carrying its errno; clusters it
        allocated stay leaked (``check`` reports them), nothing already written is lost."""
        for b in self._tracking:
            b.mark(offset, len(data))
        try:
            return self._write(offset, data)
        except OSError as err:
            raise BlockError(f"disk {self.path!r}: write failed: {err.strerror}", err.errno or errno.EIO) from None

    def flush(self) -> None:
        """Make every write so far durable: ordered metadata write-back, then fdatasync."""
        if self.read_only or self.fd < 0:
            return
        try:
            self._flush_metadata()
            os.fdatasync(self.fd)
        except OSError as err:
            raise BlockError(f"disk {self.path!r}: flush failed: {err.strerror}", err.errno or errno.EIO) from None

    def _write(self, offset: int, data: bytes | memoryview) -> int:
        if self.read_only:
            raise BlockError(f"disk {self.path!r} is read-only")
        mv = memoryview(data).cast("B")
        n = len(mv)
        check_range(self, offset, n)
        cb, cs = self.cluster_bits, self.cluster_size
        l2mask = (1 << self.l2_bits) - 1
        pos = 0
        while pos < n:
            voff = offset + pos
            l1i = voff >> self._l1_shift
            span_end = min(n, ((l1i + 1) << self._l1_shift) - offset)
            first_cl = voff >> cb
            last_cl = (offset + span_end - 1) >> cb
            t = self._l2_for_write(l1i)
            i0 = first_cl & l2mask
            entries = t[i0:i0 + last_cl - first_cl + 1].tolist()
            m = len(entries)
            k = 0
            while k < m:
                e = entries[k]
                inplace = e & (COPIED | COMPRESSED | ZERO) == COPIED and e & OFFSET_MASK
                j = k + 1
                if inplace:
                    host = e & OFFSET_MASK
                    while j < m and entries[j] & (COPIED | COMPRESSED | ZERO | OFFSET_MASK) == COPIED | (
                            host + (j - k) * cs):
                        j += 1
                else:
                    while j < m and not (entries[j] & (COPIED | COMPRESSED | ZERO) == COPIED
                                         and entries[j] & OFFSET_MASK):
                        j += 1
                cstart = (first_cl + k) << cb
                cend = (first_cl + j) << cb
                b0 = max(pos, cstart - offset)
                b1 = min(span_end, cend - offset)
                if inplace:
                    self._pwritev([mv[b0:b1]], host + offset + b0 - cstart)
                else:
                    host = self._alloc(j - k)
                    head = offset + b0 - cstart
                    tail = cend - (offset + b1)
                    iov: list = []
                    if head:
                        old = bytearray(cs)
                        self._read_cluster(first_cl + k, e, memoryview(old))
                        iov.append(memoryview(old)[:head])
                    iov.append(mv[b0:b1])
                    if tail:
                        old2 = bytearray(cs)
                        self._read_cluster(first_cl + j - 1, entries[j - 1], memoryview(old2))
                        iov.append(memoryview(old2)[cs - tail:])
                    self._pwritev(iov, host)
                    for q in range(k, j):
                        if entries[q] & (OFFSET_MASK | COMPRESSED):
                            self._free_entry_later(entries[q])
                        t[i0 + q] = (host + (q - k) * cs) | COPIED
                k = j
            pos = span_end
        return n

    def _pwritev(self, iov: list, off: int) -> None:
        total = sum(len(b) for b in iov)
        done = os.pwritev(self.fd, iov, off)
        if done != total:  # rare short write: finish it piece by piece
            flat = b"".join(bytes(b) for b in iov)
            while done < total:
                done += os.pwrite(self.fd, flat[done:], off + done)
        self.file_size = max(self.file_size, off + total)

    def _zero_range(self, offset: int, length: int, discard: bool, unmap: bool = False) -> None:
        if self.read_only:
            raise BlockError(f"disk {self.path!r} is read-only")
        check_range(self, offset, length)
        cs, cb = self.cluster_size, self.cluster_bits
        end = offset + length
        a = (offset + cs - 1) & ~(cs - 1)
        b = end & ~(cs - 1)
        if end == self.size and self.size % cs:
            b = (end + cs - 1) & ~(cs - 1)  # the partial last cluster counts as whole
        if a >= b:
            self._write_zero_bytes(offset, length)
            return
        if offset < a:
            self._write_zero_bytes(offset, a - offset)
        if min(b, end) < end:
            self._write_zero_bytes(b, end - b)
        new_entry = 0 if unmap or discard and self.backing is None else ZERO
        l2mask = (1 << self.l2_bits) - 1
        cl = a >> cb
        last = (b >> cb) - 1
        while cl <= last:
            l1i = cl >> self.l2_bits
            stop = min(last, ((l1i + 1) << self.l2_bits) - 1)
            if (self.backing is None or unmap) and not int(self.l1[l1i]) & OFFSET_MASK:
                cl = stop + 1
                continue
            t = self._l2_for_write(l1i)
            i0, i1 = cl & l2mask, (stop & l2mask) + 1
            for e in t[i0:i1].tolist():
                if e & (OFFSET_MASK | COMPRESSED):
                    self._free_entry_later(e)
            t[i0:i1] = new_entry
            cl = stop + 1

    def _write_zero_bytes(self, offset: int, length: int) -> None:
        if length > 0:
            self.write(offset, bytes(length))

    def write_zeroes(self, offset: int, length: int) -> None:
        """Make a range read as zeros; whole clusters become v3 zero clusters (their space is freed)."""
        for b in self._tracking:
            b.mark(offset, length)
        self._zero_range(offset, length, discard=False)

    def discard(self, offset: int, length: int) -> None:
        """Drop a range: whole clusters are unmapped, partial ones zeroed (reads return zeros)."""
        for b in self._tracking:
            b.mark(offset, length)
        self._zero_range(offset, length, discard=True)


    def close(self) -> None:
        """Flush (read-write images), release clusters freed since, close the backing chain."""
        if self.fd >= 0:
            try:
                if not self.read_only and hasattr(self, "l1"):
                    if self._live_bitmaps or self._bitmaps_changed:
                        self._store_bitmaps(in_use=False)
                    self._flush_metadata()
                    self._flush_metadata()  # writes the refcount decrements the first pass released
                    os.fdatasync(self.fd)
            finally:
                os.close(self.fd)
                self.fd = -1
        if self.backing is not None:
            self.backing.close()
            self.backing = None

    def __enter__(self) -> Qcow2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ information

    def allocated_bytes(self) -> int:
        """Host bytes the file occupies on disk (like ``qemu-img info``'s disk size)."""
        return os.fstat(self.fd).st_blocks * 512

    def backing_chain(self) -> list[str]:
        """Paths of this image and every backing file, top first."""
        out = [self.path]
        b = self.backing
        while b is not None:
            out.append(b.path)
            b = getattr(b, "backing", None)
        return out

    def block_status(self, offset: int, length: int) -> list[tuple[int, int, str]]:
        """Extents ``(offset, length, kind)`` with kind data/zero/backing over a range (for convert)."""
        out: list[tuple[int, int, str]] = []
        cb = self.cluster_bits
        end = min(self.size, offset + length)
        pos = offset
        while pos < end:
            cl = pos >> cb
            l1i = cl >> self.l2_bits
            t = self._l2_for_read(l1i)
            e = 0 if t is None else int(t[cl & ((1 << self.l2_bits) - 1)])
            kind = "zero" if e & ZERO and not e & COMPRESSED else "data" if e & (OFFSET_MASK | COMPRESSED) else (
                "backing" if self.backing is not None and pos < self.backing.size else "zero")
            n = min(end, (cl + 1) << cb) - pos
            if out and out[-1][2] == kind and out[-1][0] + out[-1][1] == pos:
                out[-1] = (out[-1][0], out[-1][1] + n, kind)
            else:
                out.append((pos, n, kind))
            pos += n
        return out

    # ------------------------------------------------------------------ snapshots

    def _snapshot_table_bytes(self, snaps: list[Snapshot]) -> bytes:
        out = bytearray()
        for s in snaps:
            extra = struct.pack(">QQ", s.vm_state_size, s.disk_size) + s.extra
            ident, name = s.id.encode(), s.name.encode()
            ent = SNAP_HEADER.pack(s.l1_offset, s.l1_size, len(ident), len(name), s.date_sec, s.date_nsec,
                                   s.vm_clock_nsec, min(s.vm_state_size, 0xFFFFFFFF), len(extra)) + extra + ident + name
            out += ent + bytes(-len(ent) % 8)
        return bytes(out)

    def _write_snapshot_table(self, snaps: list[Snapshot]) -> None:
        """Write a new snapshot table, switch the header to it, free the old one (durable on return)."""
        data = self._snapshot_table_bytes(snaps)
        new_off = 0
        if snaps:
            new_off = self._alloc(_div_up(len(data), self.cluster_size))
            self._pwritev([data], new_off)
        self._flush_metadata()
        os.pwrite(self.fd, struct.pack(">IQ", len(snaps), new_off), 60)
        os.fdatasync(self.fd)
        if self.snapshots and self.snapshots_offset:
            old = self._snapshot_table_bytes(self.snapshots)
            self._unref_range(self.snapshots_offset, len(old))
        self.snapshots, self.snapshots_offset = snaps, new_off

    def _walk_refs(self, l1: np.ndarray, delta: int) -> None:
        """Add ``delta`` to the refcount of every L2 table and data cluster reachable from ``l1``."""
        for e in l1.tolist():
            off = e & OFFSET_MASK
            if not off:
                continue
            t = self._load_l2(off)
            for d in t[t != 0].tolist():
                r = self._entry_ranges(d)
                if r:
                    self._unref_range(*r) if delta < 0 else self._add_range(r[0], r[1], delta)
            self._add_range(off, self.cluster_size, delta) if delta > 0 else self._unref_range(off, self.cluster_size)

    def _add_range(self, off: int, length: int, delta: int) -> None:
        first = off >> self.cluster_bits
        last = (off + length - 1) >> self.cluster_bits
        self._add_refs(first, last - first + 1, delta)

    def _fix_copied_flags(self) -> None:
        """Set COPIED exactly on active L1/L2 entries whose cluster has refcount 1."""
        for i, e in enumerate(self.l1.tolist()):
            off = e & OFFSET_MASK
            if not off:
                continue
            want = off | COPIED if self.get_refcount(off >> self.cluster_bits) == 1 else off
            if want != e:
                self.l1[i] = want
                self._l1_dirty = True
            t = self._load_l2(off)
            changed = False
            for j in np.flatnonzero(t & np.uint64(OFFSET_MASK)).tolist():
                d = int(t[j])
                if d & COMPRESSED:
                    continue
                w = d | COPIED if self.get_refcount((d & OFFSET_MASK) >> self.cluster_bits) == 1 else d & ~COPIED
                if w != d:
                    t[j] = w
                    changed = True
            if changed:
                if want & COPIED:
                    self._l2_dirty.add(off)
                else:  # shared table: rewrite in place like QEMU does for flag updates
                    os.pwrite(self.fd, t.astype(">u8").tobytes(), off)

    # ------------------------------------------------------------------ image-level changes (qemu-img verbs)

    def unmap_all(self) -> None:
        """Make every cluster unallocated, so the image reads through to its backing file (``commit``'s empty
        step); freed clusters go back to the refcounts at the next flush."""
        if self.size:
            self._zero_range(0, self.size, discard=True, unmap=True)
        self.flush()

    def _rewrite_header(self, **fields: int) -> None:
        """Update fixed header fields (offsets from HEADER's layout) in one write of bytes 24..48."""
        head = bytearray(os.pread(self.fd, HEADER.size, 0))
        for name, value in fields.items():
            off, fmt = {"size": (24, ">Q"), "l1_size": (36, ">I"), "l1_offset": (40, ">Q"),
                        "incompatible": (72, ">Q"), "compatible": (80, ">Q")}[name]
            struct.pack_into(fmt, head, off, value)
        os.pwrite(self.fd, bytes(head[24:88]), 24)

    def resize(self, new_size: int, shrink: bool = False) -> None:
        """Grow (or with ``shrink``, shrink) the virtual size. Crash-safe: new tables are written and synced before
        the header switches to them; a crash leaves at most leaked clusters (``check -r`` frees them)."""
        if self.read_only:
            raise BlockError(f"disk {self.path!r} is read-only")
        new_size = (new_size + 511) & ~511
        if new_size == self.size:
            return
        if new_size < self.size:
            if not shrink:
                raise Qcow2Error("use --shrink to make an image smaller (the data past the new end is lost)")
            if self.snapshots:
                raise Qcow2Error("cannot shrink an image that has internal snapshots")
            old = self.size
            cs = self.cluster_size
            tail = min(old, (new_size + cs - 1) & ~(cs - 1)) - new_size
            if tail > 0:
                self.write(new_size, bytes(tail))  # the cut part of the last cluster reads as zeros if regrown
            cut = (new_size + cs - 1) & ~(cs - 1)
            if cut < old:
                self._zero_range(cut, old - cut, discard=True, unmap=True)
            self.flush()
            self._rewrite_header(size=new_size)
            os.fdatasync(self.fd)
            self.size = new_size
            self._resize_bitmaps()
            return
        need = _div_up(new_size, 1 << self._l1_shift)
        if need * 8 > MAX_L1_BYTES:
            raise Qcow2Error(f"virtual size {new_size} is too large for {self.cluster_size}-byte clusters")
        self._flush_metadata()
        if need > self.l1_size:
            cs = self.cluster_size
            nclusters = _div_up(need * 8, cs)
            new_off = self._alloc(nclusters)
            self._flush_metadata()  # the new L1's refcounts first
            table = np.zeros(nclusters * cs // 8, dtype=np.uint64)
            table[: self.l1_size] = self.l1
            os.pwrite(self.fd, table.astype(">u8").tobytes(), new_off)
            os.fdatasync(self.fd)
            old_off, old_len = self.l1_offset, _div_up(self.l1_size * 8, cs) * cs
            self._rewrite_header(size=new_size, l1_size=need, l1_offset=new_off)
            os.fdatasync(self.fd)
            self.l1 = table[:need].copy()
            self.l1_size, self.l1_offset = need, new_off
            if old_off and self.l1_size:
                self._unref_range(old_off, old_len)
                self._flush_metadata()
        else:
            self._rewrite_header(size=new_size)
            os.fdatasync(self.fd)
        self.size = new_size
        self._resize_bitmaps()

    def _header_exts(self) -> list[tuple[int, bytes]]:
        """The header extensions as the file holds them now, in order (the end marker not included)."""
        cs = self.cluster_size
        hc = os.pread(self.fd, cs, 0)
        exts: list[tuple[int, bytes]] = []
        pos = self.header_length
        bf_off = struct.unpack_from(">Q", hc, 8)[0]
        end = bf_off if bf_off and bf_off > pos else cs
        while pos + 8 <= end:
            etype, elen = struct.unpack_from(">II", hc, pos)
            if etype == EXT_END:
                break
            exts.append((etype, bytes(hc[pos + 8 : pos + 8 + elen])))
            pos += 8 + ((elen + 7) & ~7)
        return exts

    def _put_header(self, exts: list[tuple[int, bytes]], backing_file: str | None, autoclear: int) -> None:
        """Rewrite the header cluster in one write: fixed fields kept, then ``exts``, the backing file name."""
        cs = self.cluster_size
        hc = os.pread(self.fd, cs, 0)
        out = bytearray(hc[: self.header_length])
        struct.pack_into(">Q", out, 88, autoclear)
        for etype, data in exts:
            out += struct.pack(">II", etype, len(data)) + data + bytes((-len(data)) % 8)
        out += bytes(8)
        name = (backing_file or "").encode()
        if len(name) > 1023 or len(out) + len(name) > cs:
            raise Qcow2Error("backing file name too long")
        if name:
            struct.pack_into(">QI", out, 8, len(out), len(name))
            out += name
        else:
            struct.pack_into(">QI", out, 8, 0, 0)
        out += bytes(cs - len(out))
        os.pwrite(self.fd, bytes(out), 0)
        self.autoclear = autoclear

    def set_backing(self, backing_file: str | None, backing_format: str | None) -> None:
        """Point the image at another backing file (or none), keeping every other header extension: the
        header cluster is rewritten in one write (what ``rebase`` does after copying the data)."""
        if self.read_only:
            raise BlockError(f"disk {self.path!r} is read-only")
        exts = [(t, d) for t, d in self._header_exts() if t != EXT_BACKING_FMT]
        if backing_file and backing_format:
            exts.insert(0, (EXT_BACKING_FMT, backing_format.encode()))
        os.fdatasync(self.fd)  # everything rebase copied is durable before the image changes backing
        self._put_header(exts, backing_file, self.autoclear)
        os.fdatasync(self.fd)
        self.backing_file, self.backing_format = backing_file or None, backing_format if backing_file else None

    # ------------------------------------------------------------------ persistent dirty bitmaps

    def _load_bitmaps(self, ext: tuple[int, int, int, int] | None) -> None:
        """Read the bitmap directory; for writing, load the consistent bitmaps (stored back at close).

        A bitmap whose ``in_use`` flag is still set was not stored by the program that last wrote the image
        (it crashed): it is kept but inconsistent, as in QEMU, and cannot be used for an incremental backup.
        """
        if ext is None or not self.autoclear & bm.AUTOCLEAR_BITMAPS:
            return  # no bitmaps, or a program that does not know them wrote the image: they are stale
        nb, _, dsize, doff = ext
        cs = self.cluster_size
        if not 1 <= nb <= bm.MAX_BITMAPS or dsize > bm.MAX_DIRECTORY or doff % cs or doff + dsize > self.file_size:
            raise self._err(f"bitmaps extension is corrupt ({nb} bitmaps, directory of {dsize} bytes at {doff:#x})")
        try:
            entries = bm.parse_directory(os.pread(self.fd, dsize, doff), nb, cs)
            for e in entries:
                need = bm.table_size(self.size, e.granularity, cs)
                if e.table_size != need or e.table_offset + e.table_size * 8 > self.file_size:
                    raise bm.BitmapError(f"bitmap {e.name!r}: table of {e.table_size} entries at "
                                         f"{e.table_offset:#x} (the disk needs {need})")
        except bm.BitmapError as err:
            raise self._err(f"bitmap directory is corrupt: {err}") from None
        self.bitmap_entries, self._bitmap_dir = entries, (doff, dsize)
        if self.read_only:
            return
        for e in entries:
            if not e.in_use:
                b = self._read_bitmap(e)
                self._live_bitmaps[e.name] = b
        self._retrack()

    def _retrack(self) -> None:
        self._tracking = [b for b in self._live_bitmaps.values() if b.enabled]

    def _bitmap_table(self, e: bm.Entry) -> np.ndarray:
        return self._read_u64(e.table_offset, e.table_size) if e.table_size else np.zeros(0, dtype=np.uint64)

    def _read_bitmap(self, e: bm.Entry) -> bm.DirtyBitmap:
        """A bitmap's data from its table (all-zero and all-one clusters need no data cluster)."""
        cs = self.cluster_size
        data = bytearray(e.table_size * cs)
        for i, t in enumerate(self._bitmap_table(e).tolist()):
            off = t & OFFSET_MASK
            if t & ~(OFFSET_MASK | 1) or off and t & 1:
                raise self._err(f"bitmap {e.name!r}: table entry {i} has reserved bits set")
            if off:
                self._validate_host(off, f"bitmap {e.name!r} data")
                data[i * cs:(i + 1) * cs] = os.pread(self.fd, cs, off).ljust(cs, b"\0")
            elif t & 1:
                data[i * cs:(i + 1) * cs] = b"\xff" * cs
        return bm.DirtyBitmap.from_bytes(e.name, self.size, e.granularity, bytes(data), enabled=e.enabled)

    def _bitmap_clusters(self, entries: list[bm.Entry] | None = None) -> list[tuple[int, int, str]]:
        """Host ranges the bitmap directory and the tables and data of ``entries`` (default: all) use."""
        out = []
        doff, dsize = self._bitmap_dir
        if self.bitmap_entries and dsize:
            out.append((doff, dsize, "bitmap directory"))
        for e in self.bitmap_entries if entries is None else entries:
            if e.table_size:
                out.append((e.table_offset, e.table_size * 8, f"bitmap {e.name!r} table"))
                for t in self._bitmap_table(e).tolist():
                    if t & OFFSET_MASK:
                        out.append((t & OFFSET_MASK, self.cluster_size, f"bitmap {e.name!r} data"))
        return out

    def _store_bitmaps(self, in_use: bool) -> None:
        """Write every loaded bitmap to new clusters with a new directory, switch the header to it, then free
        the old clusters: a crash at any point leaves either the old or the new directory (and leaks)."""
        cs = self.cluster_size
        kept = [e for e in self.bitmap_entries if e.name not in self._live_bitmaps and e.in_use
                and e.name not in self._bitmaps_removed]
        entries = list(kept)
        for b in self._live_bitmaps.values():
            data = b.to_bytes()
            tsize = bm.table_size(self.size, b.granularity, cs)
            table = np.zeros(tsize, dtype=np.uint64)
            for i in range(tsize):
                piece = data[i * cs:(i + 1) * cs]
                if piece.count(0) != len(piece):
                    off = self._alloc(1)
                    self._pwritev([piece.ljust(cs, b"\0")], off)
                    table[i] = off
            toff = 0
            if tsize:
                toff = self._alloc(_div_up(tsize * 8, cs))
                self._pwritev([table.astype(">u8").tobytes()], toff)
            flags = (bm.AUTO if b.enabled else 0) | (bm.IN_USE if in_use else 0)
            entries.append(bm.Entry(b.name, b.gbits, flags, toff, tsize))
        if len(entries) > bm.MAX_BITMAPS:
            raise Qcow2Error(f"too many bitmaps ({len(entries)})")
        dirb = bm.directory_bytes(entries)
        doff = self._alloc(_div_up(len(dirb), cs)) if entries else 0
        if entries:
            self._pwritev([dirb], doff)
        self._flush_metadata()
        os.fdatasync(self.fd)
        exts = [(t, d) for t, d in self._header_exts() if t != bm.EXT_BITMAPS]
        autoclear = self.autoclear & ~bm.AUTOCLEAR_BITMAPS
        if entries:
            exts.append((bm.EXT_BITMAPS, bm.EXT_STRUCT.pack(len(entries), 0, len(dirb), doff)))
            autoclear |= bm.AUTOCLEAR_BITMAPS
        self._put_header(exts, self.backing_file, autoclear)
        os.fdatasync(self.fd)
        old = self._bitmap_clusters([e for e in self.bitmap_entries if e not in kept])  # and the old directory
        self.bitmap_entries, self._bitmap_dir = entries, (doff, len(dirb))
        for off, length, _ in old:
            self._unref_range(off, length)
        self._flush_metadata()
        self._bitmaps_changed = False
        self._bitmaps_removed = set()

    def _resize_bitmaps(self) -> None:
        for b in self._live_bitmaps.values():
            b.resize(self.size)
        if self.bitmap_entries:
            self._bitmaps_changed = True
            # an inconsistent bitmap of the old size cannot stay: QEMU drops it too
            self._bitmaps_removed |= {e.name for e in self.bitmap_entries if e.name not in self._live_bitmaps}

    def bitmap_names(self) -> list[str]:
        """The image's bitmaps, in directory order (added ones last, removed ones gone): cheap, reads no data."""
        names = [e.name for e in self.bitmap_entries if e.name not in self._bitmaps_removed]
        return names + [n for n in self._live_bitmaps if n not in names]

    def has_bitmap(self, name: str) -> bool:
        return name in self.bitmap_names()

    def bitmap_list(self) -> list[dict]:
        """Each bitmap: name, granularity, flags (QEMU's names), enabled, consistent, dirty bytes if readable."""
        entries = {e.name: e for e in self.bitmap_entries}
        out = []
        for name in self.bitmap_names():
            live = self._live_bitmaps.get(name)
            if live is not None:
                out.append({"name": name, "granularity": live.granularity, "flags": ["auto"] if live.enabled else [],
                            "enabled": live.enabled, "consistent": True, "dirty_bytes": live.dirty_bytes()})
                continue
            e = entries[name]
            item = {"name": name, "granularity": e.granularity, "flags": e.flag_names(), "enabled": e.enabled,
                    "consistent": not e.in_use}
            if not e.in_use:
                item["dirty_bytes"] = self._read_bitmap(e).dirty_bytes()
            out.append(item)
        return out

    def bitmap_copies(self, skip_inconsistent: bool = False) -> list[bm.DirtyBitmap]:
        """A copy of every bitmap, each still enabled or not (to carry them into another image); an inconsistent
        one is an error unless ``skip_inconsistent``."""
        in_use = {e.name for e in self.bitmap_entries if e.in_use}
        out = []
        for name in self.bitmap_names():
            if skip_inconsistent and name not in self._live_bitmaps and name in in_use:
                continue
            b = self.bitmap(name)
            c = b.copy()
            c.enabled = b.enabled
            out.append(c)
        return out

    def add_bitmaps(self, bitmaps: list[bm.DirtyBitmap]) -> None:
        """New bitmaps with the names, granularity, state and dirty chunks of ``bitmaps``."""
        for b in bitmaps:
            self.bitmap_add(b.name, b.granularity, b.enabled).merge(b)

    def bitmap(self, name: str) -> bm.DirtyBitmap:
        """The bitmap ``name``: the live one of an image open for writing, else a copy read from the file."""
        live = self._live_bitmaps.get(name)
        if live is not None:
            return live
        for e in self.bitmap_entries:
            if e.name == name and name not in self._bitmaps_removed:
                if e.in_use:
                    why = ("another program has the image open and keeps it in memory" if self.force_share else
                           "the program that used it ended without storing it: remove it and take a full backup")
                    raise bm.BitmapError(f"{self.path}: bitmap {name!r} is inconsistent ({why})")
                return self._read_bitmap(e)
        raise bm.BitmapError(f"{self.path}: no bitmap {name!r}")

    def _writable_bitmaps(self) -> None:
        if self.read_only:
            raise BlockError(f"disk {self.path!r} is read-only")

    def bitmap_add(self, name: str, granularity: int = bm.DEFAULT_GRANULARITY, enabled: bool = True) -> bm.DirtyBitmap:
        """A new persistent bitmap, empty; ``enabled`` ones record every write from now (``qemu-img bitmap
        --add``). Stored when the image is closed."""
        self._writable_bitmaps()
        bm.check_name(name)
        if self.has_bitmap(name):
            raise bm.BitmapError(f"{self.path}: bitmap {name!r} exists already")
        if len(self.bitmap_names()) >= bm.MAX_BITMAPS:
            raise bm.BitmapError(f"{self.path}: too many bitmaps")
        b = bm.DirtyBitmap(name, self.size, granularity, enabled)
        self._live_bitmaps[name] = b
        self._retrack()
        self._bitmaps_changed = True
        return b

    def bitmap_remove(self, name: str) -> None:
        """Delete a bitmap (an inconsistent one too)."""
        self._writable_bitmaps()
        if not self.has_bitmap(name):
            raise bm.BitmapError(f"{self.path}: no bitmap {name!r}")
        self._live_bitmaps.pop(name, None)
        self._bitmaps_removed.add(name)
        self._retrack()
        self._bitmaps_changed = True

    def _live(self, name: str) -> bm.DirtyBitmap:
        self._writable_bitmaps()
        b = self._live_bitmaps.get(name)
        if b is None:
            self.bitmap(name)  # the precise error: missing or inconsistent
            raise bm.BitmapError(f"{self.path}: bitmap {name!r} is not loaded")
        self._bitmaps_changed = True
        return b

    def bitmap_clear(self, name: str) -> None:
        """Mark every chunk clean: the bitmap counts from now."""
        self._live(name).clear()

    def bitmap_enable(self, name: str, enabled: bool = True) -> None:
        """Let the bitmap record writes (or, ``enabled=False``, freeze it)."""
        self._live(name).enabled = enabled
        self._retrack()

    def bitmap_merge(self, source: bm.DirtyBitmap, name: str) -> None:
        """Add ``source``'s dirty chunks to bitmap ``name``."""
        self._live(name).merge(source)

    def amend(self, *, lazy_refcounts: bool | None = None, compat: str | None = None) -> list[str]:
        """``qemu-img amend -o``: ``lazy_refcounts=on|off``, ``compat=1.1`` (version 3, the only one written);
        returns what changed."""
        if self.read_only:
            raise BlockError(f"disk {self.path!r} is read-only")
        changed = []
        if compat is not None and compat not in ("1.1", "v3"):
            raise Qcow2Error(f"compat={compat}: only 1.1 (qcow2 version 3) is supported")
        if lazy_refcounts is not None and bool(self.compatible & COMPAT_LAZY_REFCOUNTS) != lazy_refcounts:
            if not lazy_refcounts and self.incompatible & INCOMPAT_DIRTY:
                self.check(repair=True)
            self.compatible = (self.compatible | COMPAT_LAZY_REFCOUNTS) if lazy_refcounts else \
                (self.compatible & ~COMPAT_LAZY_REFCOUNTS)
            self._rewrite_header(compatible=self.compatible)
            os.fdatasync(self.fd)
            changed.append(f"lazy_refcounts={'on' if lazy_refcounts else 'off'}")
        return changed

    def snapshot_create(self, name: str) -> Snapshot:
        """Take an internal snapshot of the disk (``qemu-img snapshot -c``)."""
        if self.read_only:
            raise BlockError(f"disk {self.path!r} is read-only")
        if not name or len(name.encode()) > 0xFFFF:
            raise Qcow2Error("snapshot name must be 1..65535 bytes")
        if any(s.name == name for s in self.snapshots):
            raise Qcow2Error(f"snapshot {name!r} already exists")
        if len(self.snapshots) >= MAX_SNAPSHOTS:
            raise Qcow2Error("too many snapshots")
        self.flush()
        self._walk_refs(self.l1, +1)
        for i, e in enumerate(self.l1.tolist()):
            off = e & OFFSET_MASK
            if off:
                t = self._load_l2(off)
                t &= np.uint64(~COPIED & 0xFFFFFFFFFFFFFFFF)
                self._l2_dirty.add(off)
                self.l1[i] = off
        self._l1_dirty = True
        l1_off = 0
        if self.l1_size:
            l1_off = self._alloc(_div_up(self.l1_size * 8, self.cluster_size))
            self._pwritev([self.l1.astype(">u8").tobytes()], l1_off)
        now = time.time_ns()
        ids = [int(s.id) for s in self.snapshots if s.id.isdigit()]
        snap = Snapshot(id=str(max(ids, default=0) + 1), name=name, l1_offset=l1_off, l1_size=self.l1_size,
                        date_sec=now // 10**9, date_nsec=now % 10**9, disk_size=self.size)
        self._write_snapshot_table(self.snapshots + [snap])
        self.flush()
        return snap

    def _find_snapshot(self, name_or_id: str) -> Snapshot:
        for s in self.snapshots:
            if s.name == name_or_id:
                return s
        for s in self.snapshots:
            if s.id == name_or_id:
                return s
        raise Qcow2Error(f"{self.path}: no snapshot {name_or_id!r}")

    def snapshot_delete(self, name_or_id: str) -> None:
        """Delete an internal snapshot and release the clusters only it used (``qemu-img snapshot -d``)."""
        if self.read_only:
            raise BlockError(f"disk {self.path!r} is read-only")
        snap = self._find_snapshot(name_or_id)
        self.flush()
        self._write_snapshot_table([s for s in self.snapshots if s is not snap])
        sl1 = self._read_u64(snap.l1_offset, snap.l1_size)
        self._walk_refs(sl1, -1)
        if snap.l1_size:
            self._unref_range(snap.l1_offset, snap.l1_size * 8)
        self._flush_metadata()  # decrements durable before any COPIED flag is set
        self._fix_copied_flags()
        self.flush()

    def snapshot_apply(self, name_or_id: str) -> None:
        """Revert the disk to an internal snapshot (``qemu-img snapshot -a``)."""
        if self.read_only:
            raise BlockError(f"disk {self.path!r} is read-only")
        snap = self._find_snapshot(name_or_id)
        self.flush()
        sl1 = self._read_u64(snap.l1_offset, snap.l1_size)
        self._walk_refs(sl1, +1)
        size = snap.disk_size
        l1_size = max(snap.l1_size, _div_up(size, 1 << self._l1_shift))
        new_l1 = np.zeros(l1_size, dtype=np.uint64)
        new_l1[:snap.l1_size] = sl1 & np.uint64(OFFSET_MASK)
        new_off = self._alloc(_div_up(l1_size * 8, self.cluster_size)) if l1_size else 0
        if l1_size:
            self._pwritev([new_l1.astype(">u8").tobytes()], new_off)
        self._flush_metadata()
        if size != self.size:
            os.pwrite(self.fd, struct.pack(">Q", size), 24)
        os.pwrite(self.fd, struct.pack(">IQ", l1_size, new_off), 36)
        os.fdatasync(self.fd)
        old_l1, old_off, old_size = self.l1, self.l1_offset, self.l1_size
        self.l1, self.l1_offset, self.l1_size, self.size = new_l1, new_off, l1_size, size
        self._walk_refs(old_l1, -1)
        if old_size:
            self._unref_range(old_off, old_size * 8)
        self._flush_metadata()  # decrements durable before any COPIED flag is set
        self._fix_copied_flags()
        self.flush()

    # ------------------------------------------------------------------ check

    def check(self, repair: bool = False) -> CheckResult:
        """Recount every reference and compare with the stored refcounts (``qemu-img check``)."""
        if repair and self.read_only:
            raise BlockError(f"disk {self.path!r} is read-only")
        if not self.read_only:
            self._flush_metadata()
        res = CheckResult()
        cs, cb = self.cluster_size, self.cluster_bits
        fsize = os.fstat(self.fd).st_size
        nclusters = _div_up(fsize, cs)
        ref = np.zeros(nclusters + 1, dtype=np.int64)

        def bump(off: int, length: int, what: str) -> None:
            nonlocal ref
            if off % 512 and what != "compressed":
                res.corruptions += 1
                res.messages.append(f"ERROR {what} at {off:#x} is misaligned")
                return
            first, last = off >> cb, (off + length - 1) >> cb
            if last >= len(ref):
                if off >= fsize:
                    res.corruptions += 1
                    res.messages.append(f"ERROR {what} at {off:#x} is outside the file")
                    return
                ref = np.concatenate((ref, np.zeros(last + 1 - len(ref), dtype=np.int64)))
            ref[first:last + 1] += 1

        bump(0, cs, "header")
        bump(self.rt_offset, self.rt_clusters * cs, "refcount table")
        for bi, e in enumerate(self.rt.tolist()):
            off = e & ~0x1FF
            if off:
                bump(off, cs, f"refcount block {bi}")
        if self.snapshots:
            bump(self.snapshots_offset, len(self._snapshot_table_bytes(self.snapshots)), "snapshot table")
        for off, length, what in self._bitmap_clusters():
            bump(off, length, what)

        def walk(l1: np.ndarray, l1_off: int, active: bool) -> None:
            if len(l1):
                bump(l1_off, len(l1) * 8, "L1 table")
            for i, e in enumerate(l1.tolist()):
                off = e & OFFSET_MASK
                if not off:
                    continue
                if off % cs or off + cs > fsize:
                    res.corruptions += 1
                    res.messages.append(f"ERROR L2 table {i} at {off:#x} is misaligned or outside the file")
                    continue
                bump(off, cs, "L2 table")
                t = self._load_l2(off)
                for d in t[t != 0].tolist():
                    r = self._entry_ranges(d)
                    if r:
                        bump(r[0], r[1], "compressed" if d & COMPRESSED else "data cluster")

        walk(self.l1, self.l1_offset, True)
        for s in self.snapshots:
            walk(self._read_u64(s.l1_offset, s.l1_size), s.l1_offset, False)
        per = 1 << self._rb_shift
        last_block = max([bi for bi, e in enumerate(self.rt.tolist()) if e & ~0x1FF] + [-1])
        span = max(len(ref), (last_block + 1) * per)
        ref = np.concatenate((ref, np.zeros(span - len(ref), dtype=np.int64)))
        stored = np.zeros(span, dtype=np.int64)
        for bi in range(last_block + 1):
            blk = self._refblock(bi)
            if blk is not None:
                stored[bi * per:(bi + 1) * per] = blk
        for ci in np.flatnonzero(stored != ref).tolist():
            have, want = int(stored[ci]), int(ref[ci])
            if have > want:
                res.leaks += 1
                if len(res.messages) < 50:
                    res.messages.append(f"Leaked cluster {ci} refcount={have} reference={want}")
            else:
                res.corruptions += 1
                if len(res.messages) < 50:
                    res.messages.append(f"ERROR cluster {ci} refcount={have} reference={want}")
            if repair and self._refblock(ci >> self._rb_shift) is not None:
                self._refblock(ci >> self._rb_shift)[ci & (per - 1)] = want
                self._rb_dirty.add(ci >> self._rb_shift)
                res.repaired += 1
        # COPIED flags of the active tables must say "refcount == 1"
        for i, e in enumerate(self.l1.tolist()):
            off = e & OFFSET_MASK
            if not off or off % cs or off + cs > fsize:
                continue
            rc = int(stored[off >> cb])
            if bool(e & COPIED) != (rc == 1):
                res.corruptions += 1
                res.messages.append(f"ERROR OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={e:x} refcount={rc}")
            t = self._load_l2(off)
            for j in np.flatnonzero(t & np.uint64(OFFSET_MASK)).tolist():
                d = int(t[j])
                if d & COMPRESSED:
                    continue
                dc = (d & OFFSET_MASK) >> cb
                rc = int(stored[dc]) if dc < len(stored) else 0
                if bool(d & COPIED) != (rc == 1):
                    res.corruptions += 1
                    if len(res.messages) < 50:
                        res.messages.append(f"ERROR OFLAG_COPIED data cluster: l2_entry={d:x} refcount={rc}")
        if repair and res.repaired:  # write the fixed refcounts, then report the state after the repair
            self._write_refblocks()
            os.fdatasync(self.fd)
            after = self.check()
            after.repaired = res.repaired
            after.messages = [f"Repaired: {m}" for m in res.messages] + after.messages
            return after
        res.allocated_clusters = int(np.count_nonzero(ref))
        res.total_clusters = _div_up(self.size, cs)
        nz = np.flatnonzero(ref)
        res.image_end_offset = (int(nz[-1]) + 1) * cs if len(nz) else 0
        return res
