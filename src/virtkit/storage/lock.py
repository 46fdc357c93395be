"""Image locks that QEMU understands: who may read, write or resize a disk image, across processes.

virtkit locks image files the way QEMU's ``file-posix`` driver does (``file.locking=on``), so a disk held
by a virtkit VM is refused by ``qemu-img`` and ``qemu-nbd`` and the other way round. Each permission is one
byte of the file, locked with an open-file-description lock (``F_OFD_SETLK``, shared, never blocking):

* byte ``100 + bit``: this opener *uses* the permission,
* byte ``200 + bit``: this opener does *not share* it with others,

with the bits of QEMU's block layer: 0 consistent read, 1 write, 2 write unchanged, 3 resize. Before taking its
locks an opener checks that nobody refuses to share what it uses (byte 200 + bit held by another) and that
nobody uses what it refuses to share (byte 100 + bit held by another). A writer uses read, write and resize
and shares only reads; a reader (``qemu-img info``, ``virtkit disk info``) uses read and refuses writers;
``-U``/``--force-share`` readers share everything and lock nothing. The locks live as long as the file
descriptor they were taken on.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

PERM_READ = 1 << 0  # BLK_PERM_CONSISTENT_READ
PERM_WRITE = 1 << 1
PERM_WRITE_UNCHANGED = 1 << 2
PERM_RESIZE = 1 << 3
PERM_ALL = PERM_READ | PERM_WRITE | PERM_WRITE_UNCHANGED | PERM_RESIZE
NAMES = {PERM_READ: "consistent read", PERM_WRITE: "write", PERM_WRITE_UNCHANGED: "write unchanged",
         PERM_RESIZE: "resize"}
PERM_BASE, SHARED_BASE = 100, 200

#: what a VM or NBD server writing the image takes (QEMU's defaults for a writable drive)
WRITER = (PERM_READ | PERM_WRITE | PERM_RESIZE, PERM_READ | PERM_WRITE_UNCHANGED)
#: a read-only user that must see consistent data (no writer may come along)
READER = (PERM_READ, PERM_READ | PERM_WRITE_UNCHANGED)
#: replacing or rewriting a whole image (create, convert onto an existing file): nobody else at all
EXCLUSIVE = (PERM_READ | PERM_WRITE | PERM_RESIZE, 0)

_F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
_FLOCK = struct.Struct("hhqqi4x")  # struct flock on Linux x86-64 / aarch64


class LockConflict(OSError):
    """Another process holds a lock that conflicts; ``what`` says which, as QEMU would."""

    def __init__(self, what: str) -> None:
        super().__init__(errno.EAGAIN, what)
        self.what = what


def _lock_byte(fd: int, off: int, kind: int) -> None:
    fcntl.fcntl(fd, _F_OFD_SETLK, _FLOCK.pack(kind, os.SEEK_SET, off, 1, 0))


def _held_by_other(fd: int, off: int) -> bool:
    """Whether another open file description holds any lock on byte ``off`` (ours never conflict)."""
    res = fcntl.fcntl(fd, _F_OFD_GETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, off, 1, 0))
    return _FLOCK.unpack(res)[0] != fcntl.F_UNLCK


def check(fd: int, perm: int, shared: int) -> None:
    """Raise :class:`LockConflict` when opening with ``perm`` (sharing ``shared``) conflicts with another user."""
    for bit, name in NAMES.items():
        if perm & bit and _held_by_other(fd, SHARED_BASE + bit.bit_length() - 1):
            raise LockConflict(f'failed to get "{name}" lock')
        if not shared & bit and _held_by_other(fd, PERM_BASE + bit.bit_length() - 1):
            raise LockConflict(f'failed to get shared "{name}" lock')


def acquire(fd: int, perm: int, shared: int) -> None:
    """Check, then take the lock bytes for ``perm``/``shared`` on ``fd`` (what QEMU's raw_apply_lock_bytes does).

    The check and the locks are not one atomic step; a racing opener can slip between them, as with QEMU
    (which checks again after locking: so do we).
    """
    check(fd, perm, shared)
    try:
        for bit in NAMES:
            i = bit.bit_length() - 1
            if perm & bit:
                _lock_byte(fd, PERM_BASE + i, fcntl.F_RDLCK)
            if not shared & bit:
                _lock_byte(fd, SHARED_BASE + i, fcntl.F_RDLCK)
        check(fd, perm, shared)
    except LockConflict:
        release(fd)
        raise
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES):
            release(fd)
            raise LockConflict("failed to lock the image") from None
        if err.errno not in (errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP):
            raise
        # a file system without OFD locks (QEMU warns and goes on too): no locking


def release(fd: int) -> None:
    """Drop every lock byte this descriptor holds."""
    try:
        span = SHARED_BASE - PERM_BASE + 8
        fcntl.fcntl(fd, _F_OFD_SETLK, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, PERM_BASE, span, 0))
    except OSError:
        pass


def users(path: str) -> str:
    """What holds locks on ``path`` now ("a writer", "a reader", or ""), for messages."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return ""
    try:
        if _held_by_other(fd, PERM_BASE + 1):
            return "a writer"
        if _held_by_other(fd, PERM_BASE):
            return "a reader"
        return ""
    finally:
        os.close(fd)


def conflict_message(path: str, err: LockConflict, read_only: bool) -> str:
    """One line for a lock conflict: what failed, that another VM or process holds the image, what to do."""
    hint = " (a read-only command can look anyway with -U/--force-share)" if read_only else ""
    return f"disk image {path!r} is locked by another VM or process: {err.what}{hint}"


# ---------------------------------------------------------------------------------------- byte-range locks
_F_OFD_SETLKW = getattr(fcntl, "F_OFD_SETLKW", 38)


def byte_lock(fd: int, off: int, exclusive: bool, wait: bool = True) -> bool:
    """Lock byte ``off`` of ``fd`` (shared or exclusive, an open-file-description lock); False when ``wait`` is
    off and another holder conflicts. Locks of one descriptor never conflict with each other."""
    kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    try:
        fcntl.fcntl(fd, _F_OFD_SETLKW if wait else _F_OFD_SETLK, _FLOCK.pack(kind, os.SEEK_SET, off, 1, 0))
        return True
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise


def byte_unlock(fd: int, off: int) -> None:
    """Release byte ``off``."""
    fcntl.fcntl(fd, _F_OFD_SETLK, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, off, 1, 0))


def byte_held(fd: int, off: int, exclusive_only: bool = False) -> bool:
    """Whether another descriptor holds a lock on byte ``off`` (only exclusive ones with ``exclusive_only``)."""
    kind = fcntl.F_RDLCK if exclusive_only else fcntl.F_WRLCK
    res = fcntl.fcntl(fd, _F_OFD_GETLK, _FLOCK.pack(kind, os.SEEK_SET, off, 1, 0))
    return _FLOCK.unpack(res)[0] != fcntl.F_UNLCK
