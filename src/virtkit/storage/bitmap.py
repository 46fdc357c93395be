"""Dirty bitmaps: which chunks of a disk were written since a point in time (incremental backup).

A :class:`DirtyBitmap` keeps one byte per chunk of ``granularity`` bytes in a NumPy array, so marking a
write is one slice assignment. qcow2 images keep them persistently in their *bitmaps extension*
(QEMU's ``docs/interop/qcow2.txt``): :func:`parse_directory` and :func:`directory_bytes` read and write
its bitmap directory, :meth:`DirtyBitmap.to_bytes` / :meth:`DirtyBitmap.from_bytes` its bitmap data
(bit ``k`` of the data, least significant bit first in each byte, is chunk ``k``), so QEMU's tools
(``qemu-img info``, ``qemu-img bitmap``, ``qemu-io``) read virtkit's bitmaps and virtkit reads theirs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from virtkit.errors import VirtkitError

EXT_BITMAPS = 0x23852875
EXT_STRUCT = struct.Struct(">IIQQ")  # nb_bitmaps, reserved, directory size, directory offset
ENTRY = struct.Struct(">QIIBBHI")  # table offset, table size, flags, type, granularity bits, name size, extra
AUTOCLEAR_BITMAPS = 1 << 0
IN_USE, AUTO, EXTRA_DATA_COMPATIBLE = 1 << 0, 1 << 1, 1 << 2
TYPE_DIRTY = 1
MIN_GRANULARITY_BITS, MAX_GRANULARITY_BITS = 9, 31
MAX_BITMAPS = 65535
MAX_NAME = 1023
MAX_DIRECTORY = 64 << 20
DEFAULT_GRANULARITY = 64 << 10


def true_runs(mask: np.ndarray, max_len: int | None = None) -> list[tuple[int, int]]:
    """``(first, count)`` of each run of set entries in a per-page or per-chunk ``mask``; with ``max_len``,
    longer runs are cut into pieces of at most that many (the one run finder of snapshots, migration,
    backups and bitmaps)."""
    m = np.asarray(mask).astype(bool, copy=False)
    if not m.any():
        return []
    d = np.diff(np.concatenate(([0], m.view(np.int8), [0])))
    starts, ends = np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()
    if max_len is None:
        return [(a, b - a) for a, b in zip(starts, ends, strict=True)]
    return [(first, min(max_len, b - first)) for a, b in zip(starts, ends, strict=True)
            for first in range(a, b, max_len)]


class BitmapError(VirtkitError):
    """A bitmap that cannot be created, found, read or stored."""


def check_name(name: str) -> None:
    """Bitmap names are 1..1023 bytes of UTF-8 (QEMU's limit)."""
    if not isinstance(name, str) or not name or len(name.encode()) > MAX_NAME:
        raise BitmapError(f"bitmap name must be 1..{MAX_NAME} bytes, not {name!r}")


def check_granularity(granularity: int) -> int:
    """A power of two from 512 bytes to 2 GiB; returns its log2."""
    bits = granularity.bit_length() - 1
    if granularity <= 0 or granularity != 1 << bits or not MIN_GRANULARITY_BITS <= bits <= MAX_GRANULARITY_BITS:
        raise BitmapError(f"bitmap granularity must be a power of two from 512 bytes to 2 GiB, not {granularity}")
    return bits


class DirtyBitmap:
    """Which ``granularity``-sized chunks of a ``size``-byte disk were written; ``enabled`` ones follow writes."""

    def __init__(self, name: str, size: int, granularity: int = DEFAULT_GRANULARITY, enabled: bool = True) -> None:
        check_name(name)
        self.gbits = check_granularity(granularity)
        self.name, self.granularity, self.enabled = name, granularity, enabled
        self.size = size
        self.bits = np.zeros(self.chunks_for(size), dtype=np.uint8)

    def chunks_for(self, size: int) -> int:
        """Chunks covering ``size`` bytes."""
        return (size + self.granularity - 1) >> self.gbits

    def mark(self, offset: int, length: int) -> None:
        """Set the chunks that ``[offset, offset+length)`` touches."""
        if length > 0:
            self.bits[offset >> self.gbits:((offset + length - 1) >> self.gbits) + 1] = 1

    def clear(self) -> None:
        """Forget every change: the bitmap counts from now."""
        self.bits[:] = 0

    def merge(self, other: DirtyBitmap) -> None:
        """Add ``other``'s dirty chunks (``qemu-img bitmap --merge``); granularities may differ."""
        if other.granularity == self.granularity:
            n = min(len(self.bits), len(other.bits))
            self.bits[:n] |= other.bits[:n]
            return
        for off, length in other.runs():
            self.mark(off, min(length, self.size - off))

    def copy(self, name: str | None = None) -> DirtyBitmap:
        """A frozen copy (an export or a backup reads this one while the original goes on counting)."""
        out = DirtyBitmap(name or self.name, self.size, self.granularity, enabled=False)
        out.bits[:] = self.bits
        return out

    def resize(self, size: int) -> None:
        """Follow the disk to a new size (new chunks are clean)."""
        n = self.chunks_for(size)
        bits = np.zeros(n, dtype=np.uint8)
        k = min(n, len(self.bits))
        bits[:k] = self.bits[:k]
        self.bits, self.size = bits, size

    def count(self) -> int:
        """Number of dirty chunks."""
        return int(np.count_nonzero(self.bits))

    def dirty_bytes(self) -> int:
        """Bytes the dirty chunks cover (the last chunk only up to the disk's end)."""
        return sum(n for _, n in self.runs())

    def runs(self, offset: int = 0, length: int | None = None, dirty: bool = True) -> list[tuple[int, int]]:
        """``(offset, length)`` of each run of dirty (or clean) chunks within ``[offset, offset+length)``."""
        end = self.size if length is None else min(self.size, offset + length)
        if offset >= end:
            return []
        c0, c1 = offset >> self.gbits, ((end - 1) >> self.gbits) + 1
        seg = (self.bits[c0:c1] != 0) if dirty else (self.bits[c0:c1] == 0)
        out = []
        for a, k in true_runs(seg):
            lo = max(offset, (c0 + a) << self.gbits)
            hi = min(end, (c0 + a + k) << self.gbits)
            out.append((lo, hi - lo))
        return out

    def extents(self, offset: int, length: int) -> list[tuple[int, bool]]:
        """``(length, dirty)`` runs covering ``[offset, offset+length)`` in order (NBD block status)."""
        end = min(self.size, offset + length)
        out: list[tuple[int, bool]] = []
        pos = offset
        c0, c1 = offset >> self.gbits, ((end - 1) >> self.gbits) + 1
        seg = self.bits[c0:c1] != 0
        edges = np.flatnonzero(np.diff(seg.view(np.int8))).tolist() + [len(seg) - 1]
        for e in edges:
            hi = min(end, (c0 + e + 1) << self.gbits)
            out.append((hi - pos, bool(seg[e])))
            pos = hi
        return out

    def to_bytes(self) -> bytes:
        """The bitmap data as qcow2 stores it: chunk ``k`` is bit ``k % 8`` (LSB first) of byte ``k // 8``."""
        return np.packbits(self.bits != 0, bitorder="little").tobytes()

    @classmethod
    def from_bytes(cls, name: str, size: int, granularity: int, data: bytes, enabled: bool = True) -> DirtyBitmap:
        """Inverse of :meth:`to_bytes` (bits past the disk's end are ignored)."""
        b = cls(name, size, granularity, enabled)
        n = len(b.bits)
        raw = np.frombuffer(data, dtype=np.uint8)
        if len(raw) * 8 < n:
            raise BitmapError(f"bitmap {name!r}: {len(raw)} bytes of data for {n} chunks")
        b.bits[:] = np.unpackbits(raw, bitorder="little")[:n]
        return b


@dataclass
class Entry:
    """One bitmap of a qcow2 image's bitmap directory."""

    name: str
    granularity_bits: int
    flags: int
    table_offset: int
    table_size: int
    extra: bytes = b""
    type: int = TYPE_DIRTY

    @property
    def granularity(self) -> int:
        return 1 << self.granularity_bits

    @property
    def in_use(self) -> bool:
        """Set while a program has the bitmap open for writing: if still set at open, it was not stored."""
        return bool(self.flags & IN_USE)

    @property
    def enabled(self) -> bool:
        """QEMU's ``auto`` flag: the bitmap follows writes."""
        return bool(self.flags & AUTO)

    def flag_names(self) -> list[str]:
        return [n for bit, n in ((IN_USE, "in-use"), (AUTO, "auto")) if self.flags & bit]


def parse_directory(data: bytes, count: int, cluster_size: int) -> list[Entry]:
    """Decode ``count`` directory entries; a malformed directory is a :class:`BitmapError`."""
    out: list[Entry] = []
    pos = 0
    for i in range(count):
        if pos + ENTRY.size > len(data):
            raise BitmapError(f"bitmap directory entry {i} overruns the directory")
        toff, tsize, flags, btype, gbits, nlen, xlen = ENTRY.unpack_from(data, pos)
        end = pos + ENTRY.size + xlen + nlen
        if end > len(data):
            raise BitmapError(f"bitmap directory entry {i} overruns the directory")
        if toff % cluster_size:
            raise BitmapError(f"bitmap {i}: table offset {toff:#x} is not cluster aligned")
        if flags & ~(IN_USE | AUTO | EXTRA_DATA_COMPATIBLE):
            raise BitmapError(f"bitmap {i}: unknown flags {flags:#x}")
        if btype != TYPE_DIRTY:
            raise BitmapError(f"bitmap {i}: unknown type {btype}")
        if not MIN_GRANULARITY_BITS <= gbits <= MAX_GRANULARITY_BITS:
            raise BitmapError(f"bitmap {i}: granularity bits {gbits} out of range")
        if not 0 < nlen <= MAX_NAME:
            raise BitmapError(f"bitmap {i}: name length {nlen} out of range")
        if xlen and not flags & EXTRA_DATA_COMPATIBLE:
            raise BitmapError(f"bitmap {i}: extra data this program does not understand")
        xs = pos + ENTRY.size
        try:
            name = bytes(data[xs + xlen:end]).decode()
        except UnicodeDecodeError:
            raise BitmapError(f"bitmap {i}: name is not UTF-8") from None
        if any(e.name == name for e in out):
            raise BitmapError(f"two bitmaps are named {name!r}")
        out.append(Entry(name, gbits, flags, toff, tsize, bytes(data[xs:xs + xlen]), btype))
        pos = (end + 7) & ~7
    return out


def directory_bytes(entries: list[Entry]) -> bytes:
    """Encode a bitmap directory (each entry padded to 8 bytes)."""
    out = bytearray()
    for e in entries:
        name = e.name.encode()
        ent = ENTRY.pack(e.table_offset, e.table_size, e.flags, e.type, e.granularity_bits, len(name),
                         len(e.extra)) + e.extra + name
        out += ent + bytes(-len(ent) % 8)
    return bytes(out)


def table_size(size: int, granularity: int, cluster_size: int) -> int:
    """Bitmap table entries (data clusters) a bitmap of a ``size``-byte disk needs."""
    nbytes = ((size + granularity - 1) // granularity + 7) // 8
    return (nbytes + cluster_size - 1) // cluster_size
