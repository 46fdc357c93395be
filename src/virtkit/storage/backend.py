"""The block backend seam: what virtio-blk, the NBD server and containers read and write.

Raw files, qcow2 images and pool volumes all implement :class:`BlockBackend`. Offsets and
lengths are in bytes; callers check them against :attr:`size` (a backend also checks and
raises :class:`BlockError`).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from typing import Protocol, runtime_checkable

from virtkit.errors import VirtkitError


class BlockError(VirtkitError):
    """A block request that cannot be served (out of range, read-only, I/O error)."""


@runtime_checkable
class BlockBackend(Protocol):
    size: int
    read_only: bool

    def readinto(self, offset: int, buf: memoryview | bytearray) -> int: ...

    def write(self, offset: int, data: bytes | memoryview) -> int: ...

    def flush(self) -> None: ...

    def discard(self, offset: int, length: int) -> None: ...

    def write_zeroes(self, offset: int, length: int) -> None: ...

    def close(self) -> None: ...


def check_range(backend: BlockBackend, offset: int, length: int) -> None:
    """Raise :class:`BlockError` unless ``[offset, offset+length)`` lies inside the device."""
    if offset < 0 or length < 0 or offset + length > backend.size:
        raise BlockError(f"request [{offset}, +{length}) outside device of {backend.size} bytes")


def _punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate a byte range (reads back as zeros); False where the filesystem cannot."""
    FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.fallocate(fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, ctypes.c_long(offset), ctypes.c_long(length))
    return rc == 0


class RawFile:
    """A raw disk image file (or block device), locked against a second writer like QEMU does."""

    def __init__(self, path: str, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        if not os.path.exists(path):
            raise BlockError(f"disk image {path!r} does not exist")
        try:
            self.fd = os.open(path, os.O_RDONLY if read_only else os.O_RDWR)
        except PermissionError:
            raise BlockError(f"disk image {path!r} is not writable (use ',ro' for a read-only disk)") from None
        except OSError as err:
            raise BlockError(f"cannot open disk image {path!r}: {err.strerror}") from None
        try:
            fcntl.flock(self.fd, (fcntl.LOCK_SH if read_only else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as err:
            os.close(self.fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise BlockError(f"disk image {path!r} is locked by another VM or process") from None
            raise
        self.size = os.lseek(self.fd, 0, os.SEEK_END)

    def readinto(self, offset: int, buf: memoryview | bytearray) -> int:
        check_range(self, offset, len(buf))
        n = os.preadv(self.fd, [buf], offset)
        if n < len(buf):  # short read past a sparse end: zeros
            memoryview(buf)[n:] = bytes(len(buf) - n)
        return len(buf)

    def write(self, offset: int, data: bytes | memoryview) -> int:
        if self.read_only:
            raise BlockError(f"disk {self.path!r} is read-only")
        check_range(self, offset, len(data))
        return os.pwritev(self.fd, [data], offset)

    def flush(self) -> None:
        if not self.read_only:
            os.fdatasync(self.fd)

    def discard(self, offset: int, length: int) -> None:
        self.write_zeroes(offset, length)

    def write_zeroes(self, offset: int, length: int) -> None:
        if self.read_only:
            raise BlockError(f"disk {self.path!r} is read-only")
        check_range(self, offset, length)
        if _punch_hole(self.fd, offset, length):
            return
        chunk = bytes(min(length, 1 << 20))
        pos = offset
        while pos < offset + length:
            n = min(len(chunk), offset + length - pos)
            os.pwrite(self.fd, chunk[:n], pos)
            pos += n

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
