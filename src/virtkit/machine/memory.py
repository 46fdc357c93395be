"""Guest RAM: one anonymous ``mmap`` per VM, seen as a NumPy array by the CPU engine.

Every engine and device shares this object. Device code never indexes the array with a
guest-supplied address directly: it calls :meth:`GuestMemory.read`, :meth:`write` or
:meth:`view`, which check the whole range against RAM first (the guest is hostile).
"""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Callable

import numpy as np

from virtkit.errors import GuestMemoryError


class GuestMemory:
    """A contiguous block of guest-physical RAM starting at ``base``."""

    def __init__(self, size: int, base: int = 0) -> None:
        if size <= 0 or size % mmap.PAGESIZE:
            raise GuestMemoryError(f"guest RAM size must be a positive multiple of {mmap.PAGESIZE}: {size}")
        self.base = base
        self.size = size
        self.end = base + size
        npages = size // mmap.PAGESIZE
        # after RAM, outside what the guest can address: the dirty log, one int64 per page, which the CPU
        # engine sets on its slow store path and page-table updates and DMA sets here (live migration)
        tail = -(-npages * 8 // mmap.PAGESIZE) * mmap.PAGESIZE
        self._mmap = mmap.mmap(-1, size + tail, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        #: The RAM as a flat uint8 array (the RISC-V core reads and writes it directly); the dirty log
        #: follows at ``array[size:]``.
        self.array = np.frombuffer(self._mmap, dtype=np.uint8)
        #: One entry per page, non-zero once the page was written since the log was last cleared (see the
        #: engine's ``dirty_log_fetch``).
        self.dirty = np.frombuffer(self._mmap, dtype=np.int64, count=npages, offset=size)
        self._file_backed = False  # set by map_file: then a page not in memory may still hold data
        #: Called as ``on_write(offset, n)`` before writes and writable views: the CPU engine drops
        #: code it translated from those bytes (DMA into code pages).
        self.on_write: Callable[[int, int], None] | None = None

    @property
    def address(self) -> int:
        """Host virtual address of guest RAM (stable for the memory's life: the engine keeps views of it)."""
        return int(self.array.ctypes.data)

    def map_file(self, path: str, offset: int = 0) -> None:
        """Make RAM a copy-on-write mapping of ``path`` at ``offset`` (a snapshot's memory file), in place.

        The file's pages are mapped ``MAP_PRIVATE`` over the same addresses (``MAP_FIXED``), so every view
        of RAM stays valid, nothing is read until the guest touches it, and the guest's writes go to
        private copies: the file is never changed. Holes in the file read as zeros. Firecracker restores
        the same way; it is what makes a restore take milliseconds whatever the RAM size.
        """
        fd = os.open(path, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            if st.st_size < offset + self.size:
                raise GuestMemoryError(f"{path}: {st.st_size} bytes, guest RAM needs {offset + self.size}")
            if offset % mmap.PAGESIZE:
                raise GuestMemoryError(f"{path}: memory offset {offset} is not page aligned")
            libc = ctypes.CDLL(None, use_errno=True)
            libc.mmap.restype = ctypes.c_void_p
            libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                  ctypes.c_long]
            want = self.address
            got = libc.mmap(want, self.size, mmap.PROT_READ | mmap.PROT_WRITE,
                            mmap.MAP_PRIVATE | 0x10, fd, offset)  # 0x10: MAP_FIXED
            if got != want:
                err = ctypes.get_errno()
                raise GuestMemoryError(f"cannot map {path} as guest RAM: {os.strerror(err)}")
        finally:
            os.close(fd)
        self._file_backed = True
        if self.on_write is not None:
            self.on_write(0, self.size)

    def resident_pages(self) -> np.ndarray | None:
        """Which pages of RAM the guest has touched: in memory or in swap (``/proc/self/pagemap``'s present and
        swapped bits). A page of anonymous RAM that is neither has never been written and reads as zero.
        None when that does not hold (RAM mapped from a file) or cannot be known (then every page must be
        read); ``mincore`` is not enough, it does not see pages in swap."""
        if self._file_backed:
            return None
        npages = self.size // mmap.PAGESIZE
        try:
            fd = os.open("/proc/self/pagemap", os.O_RDONLY)
        except OSError:
            return None
        try:
            raw = os.pread(fd, npages * 8, (self.address // mmap.PAGESIZE) * 8)
        except OSError:
            return None
        finally:
            os.close(fd)
        if len(raw) != npages * 8:
            return None
        e = np.frombuffer(raw, dtype=np.uint64)
        return ((e >> np.uint64(62)) & np.uint64(3)) != 0

    def contains(self, gpa: int, n: int = 1) -> bool:
        """True when ``[gpa, gpa+n)`` lies entirely inside RAM."""
        return n >= 0 and self.base <= gpa and gpa + n <= self.end

    def _offset(self, gpa: int, n: int) -> int:
        if not self.contains(gpa, n):
            raise GuestMemoryError(f"guest access [{gpa:#x}, +{n:#x}) outside RAM [{self.base:#x}, {self.end:#x})")
        return gpa - self.base

    def read(self, gpa: int, n: int) -> bytes:
        """Copy ``n`` bytes of guest RAM at ``gpa``."""
        off = self._offset(gpa, n)
        return self._mmap[off : off + n]

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into guest RAM at ``gpa``."""
        off = self._offset(gpa, len(data))
        self._mmap[off : off + len(data)] = data
        if data:
            self.dirty[off >> 12:((off + len(data) - 1) >> 12) + 1] = 1
        if self.on_write is not None:
            self.on_write(off, len(data))

    def view(self, gpa: int, n: int) -> memoryview:
        """A zero-copy, writable view of ``[gpa, gpa+n)`` for device DMA."""
        off = self._offset(gpa, n)
        if n:
            self.dirty[off >> 12:((off + n - 1) >> 12) + 1] = 1
        if self.on_write is not None:
            self.on_write(off, n)
        return memoryview(self._mmap)[off : off + n]

    def read_u16(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 2), "little")

    def read_u32(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 4), "little")

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 8), "little")

    def write_u16(self, gpa: int, value: int) -> None:
        self.write(gpa, (value & 0xFFFF).to_bytes(2, "little"))

    def write_u32(self, gpa: int, value: int) -> None:
        self.write(gpa, (value & 0xFFFFFFFF).to_bytes(4, "little"))

    def write_u64(self, gpa: int, value: int) -> None:
        self.write(gpa, (value & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little"))

    def close(self) -> None:
        """Release the RAM (views handed out must be dropped first)."""
        if not hasattr(self, "array"):
            return  # closed already
        del self.array
        del self.dirty
        self._mmap.close()


def nonzero_pages(ram: np.ndarray, resident: np.ndarray | None = None) -> np.ndarray:
    """Which 4 KiB pages of ``ram`` hold anything but zeros. With ``resident``
    (:meth:`GuestMemory.resident_pages`) the pages the guest never touched are not even read: reading
    them would fault each one in (snapshots and migration both scan RAM this way)."""
    npages = ram.size // 4096
    pages = ram.view(np.uint64).reshape(npages, 512)
    mask = np.zeros(npages, dtype=bool)
    idx = np.flatnonzero(resident) if resident is not None else np.arange(npages)
    for i in range(0, idx.size, 4096):  # a few thousand pages at a time: a bounded temporary copy
        sel = idx[i:i + 4096]
        mask[sel] = pages[sel].any(axis=1)
    return mask
