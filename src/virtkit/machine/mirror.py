"""Disks that move with a live migration (``virtkit migrate --copy-storage``), for hosts that share no storage.

The source wraps each disk in a :class:`TrackedDisk` (every guest write marks a dirty bitmap), sends
the disk's allocated data in a bulk pass while the guest runs, then in every round the chunks written
since, and at the switch-over (guest paused, disk flushed) the last ones: pre-copy for disks, beside
pre-copy for RAM, as QEMU's block migration (``migrate -b``, libvirt's ``--copy-storage-all``) does. The
target creates a new image per disk (qcow2 for a qcow2 disk, a sparse raw file otherwise) in
``--disk-dir`` (or at the source's path, for another host), writes what arrives, and hands the images
to the guest's disks at the switch-over. If the migration fails, the target deletes the images it
created; the source never stopped using its own.

Frames (inside the migration stream, each with its CRC): ``DISK`` = disk index (u8), offset (u64),
length (u32), data; ``DISKZERO`` = the same header, the range reads as zeros.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from typing import Any

import numpy as np

from virtkit.errors import VirtkitError
from virtkit.storage.bitmap import DirtyBitmap

T_DISK, T_DISKZERO = 10, 11  # their frame types in the migration stream
DISK_HDR = struct.Struct("<BQI")
PIECE = 1 << 20  # bytes per DISK frame at most
GRANULARITY = 64 << 10


class MirrorError(VirtkitError):
    """A disk cannot be copied (the target's file exists, a frame is out of range...)."""


class TrackedDisk:
    """A block backend whose guest writes mark :attr:`bitmap`; the migration reads through :meth:`read`
    under the same lock (a qcow2 image must not be read and written by two threads at once)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.size, self.read_only = backend.size, backend.read_only
        self.bitmap = DirtyBitmap("migration", backend.size, GRANULARITY)
        self.lock = threading.Lock()

    def readinto(self, offset: int, buf: memoryview | bytearray) -> int:
        with self.lock:
            return self.backend.readinto(offset, buf)

    def write(self, offset: int, data: bytes | memoryview) -> int:
        with self.lock:
            self.bitmap.mark(offset, len(data))
            return self.backend.write(offset, data)

    def write_zeroes(self, offset: int, length: int) -> None:
        with self.lock:
            self.bitmap.mark(offset, length)
            self.backend.write_zeroes(offset, length)

    def discard(self, offset: int, length: int) -> None:
        with self.lock:
            self.bitmap.mark(offset, length)
            self.backend.discard(offset, length)

    def flush(self) -> None:
        with self.lock:
            self.backend.flush()

    def close(self) -> None:
        with self.lock:
            self.backend.close()

    def take_dirty(self) -> DirtyBitmap:
        """What was written since the last call (the bitmap starts again)."""
        with self.lock:
            out = self.bitmap.copy()
            self.bitmap.clear()
            return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


def _format_of(backend: Any) -> str:
    from virtkit.storage.qcow2 import Qcow2

    return "qcow2" if isinstance(backend, Qcow2) else "raw"


class SourceMirror:
    """The source's side: tracks every disk of ``machine`` and sends what the target lacks."""

    def __init__(self, machine: Any) -> None:
        self.disks: list[tuple[Any, TrackedDisk]] = []
        for blk in machine.disks():
            t = TrackedDisk(blk.backend)
            blk.backend = t
            self.disks.append((blk, t))
        self.names = [os.path.basename(dc.path.rstrip("/")) or f"disk{i}" for i, dc in enumerate(machine.cfg.disks)]
        self.sent = 0

    def describe(self) -> list[dict]:
        """What HELLO says of each disk: size, mode, format and file name."""
        return [{"size": t.size, "read_only": bool(t.read_only), "format": _format_of(t.backend), "name": n}
                for (_, t), n in zip(self.disks, self.names, strict=True)]

    def dirty_bytes(self) -> int:
        return sum(t.bitmap.dirty_bytes() for _, t in self.disks)

    def _send_runs(self, ch: Any, i: int, t: TrackedDisk, runs: list[tuple[int, int]], zeros: bool,
                   check: Any) -> None:
        buf = bytearray(PIECE)
        for off, n in runs:
            pos, end = off, off + n
            while pos < end:
                check()
                k = min(PIECE, end - pos)
                piece = memoryview(buf)[:k]
                t.readinto(pos, piece)
                if not np.frombuffer(piece, dtype=np.uint8).any():
                    if zeros:
                        ch.send(T_DISKZERO, DISK_HDR.pack(i, pos, k))
                else:
                    ch.send(T_DISK, DISK_HDR.pack(i, pos, k), piece)
                    self.sent += k
                pos += k

    def send_bulk(self, ch: Any, check: Any) -> None:
        """Every allocated range of every disk (the target's new images read as zeros elsewhere)."""
        from virtkit.storage.backup import allocated_runs

        for i, (_, t) in enumerate(self.disks):
            with t.lock:
                runs = allocated_runs(t.backend)
            self._send_runs(ch, i, t, runs, zeros=False, check=check)

    def send_dirty(self, ch: Any, check: Any) -> int:
        """The chunks written since the last call; returns how many bytes that was."""
        total = 0
        for i, (_, t) in enumerate(self.disks):
            runs = t.take_dirty().runs()
            total += sum(n for _, n in runs)
            self._send_runs(ch, i, t, runs, zeros=True, check=check)
        return total

    def flush(self) -> None:
        for _, t in self.disks:
            if not t.read_only:
                t.flush()

    def unwrap(self) -> None:
        """The disks are the guest's again (after a failed migration, or before the VM closes them)."""
        for blk, t in self.disks:
            if blk.backend is t:
                blk.backend = t.backend


class TargetMirror:
    """The target's side: new images for the disks, written as frames arrive, given to the machine at the end."""

    def __init__(self, cfg: Any, disks: list[dict], disk_dir: str | None) -> None:
        from virtkit.storage import open_disk
        from virtkit.storage.backend import create_raw
        from virtkit.storage.qcow2 import Qcow2

        self.created: list[str] = []
        self.backends: list[Any] = []
        self.info = disks
        try:
            for i, (d, dc) in enumerate(zip(disks, cfg.disks, strict=True)):
                name, fmt, size = d.get("name"), d.get("format"), d.get("size")
                if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
                    raise MirrorError(f"HELLO: disk {i} has no usable file name")
                if fmt not in ("qcow2", "raw") or not isinstance(size, int) or size <= 0:
                    raise MirrorError(f"HELLO: disk {i} has no usable format or size")
                path = os.path.join(disk_dir, name) if disk_dir else dc.path
                if os.path.exists(path):
                    raise MirrorError(f"disk {i}: {path} exists already: the target creates the copied disks "
                                      "(give --disk-dir for a directory of its own)")
                if fmt == "qcow2":
                    Qcow2.create(path, size)
                else:
                    create_raw(path, size)
                self.created.append(path)
                self.backends.append(open_disk(path, fmt=fmt))
                dc.path, dc.format = path, fmt
        except BaseException:
            self.abort()
            raise

    def frame(self, sub: bytes, data: memoryview | None) -> None:
        """A DISK frame (``data``) or a DISKZERO frame (``data`` None): header and length checked here."""
        i, off, n = DISK_HDR.unpack(sub)
        if i >= len(self.backends) or n == 0 or n > PIECE or off + n > self.backends[i].size:
            raise MirrorError(f"DISK frame for disk {i} at {off}+{n} is outside the disks")
        if data is not None and len(data) != n:
            raise MirrorError("DISK frame length does not match its header")
        if data is None:
            self.backends[i].write_zeroes(off, n)
        else:
            self.backends[i].write(off, data)

    def adopt(self, machine: Any) -> None:
        """The copies become the guest's disks (replacing the stand-ins the machine was built with)."""
        from virtkit.storage import open_disk

        for k, (blk, b) in enumerate(zip(machine.disks(), self.backends, strict=True)):
            b.flush()
            if self.info[k].get("read_only"):
                b.close()
                b = open_disk(self.created[k], read_only=True, fmt=self.info[k]["format"])
                self.backends[k] = b
            blk.backend = b
        self.created = []  # theirs now

    def abort(self) -> None:
        """Close and delete the images this migration created."""
        for b in self.backends:
            with contextlib.suppress(Exception):
                b.close()
        for p in self.created:
            with contextlib.suppress(OSError):
                os.unlink(p)
        self.backends, self.created = [], []
