"""Live backup: a point-in-time view of a disk that a guest keeps writing (copy-before-write), and the job
that copies it to a target.

:class:`PointInTime` sits between the guest (virtio-blk) and its disk, like QEMU's ``copy-before-write``
filter: before a guest write lands on a chunk whose old content the backup still needs, the old content is
copied into a scratch file (an unlinked temporary file, sparse: it only holds what was overwritten).
Reads of the *view* take a chunk from the scratch file if it was saved there, else from the disk, so the
view shows the disk exactly as it was when the filter went in, however long the copy takes. A chunk the
copy has finished is released and costs later guest writes nothing.

The guest never waits on the backup target: a full scratch file or a failing target ends the *backup*
with an error (QEMU's ``on-cbw-error=break-snapshot``); the guest's writes go on and nothing of the disk
is lost.

:class:`BackupJob` copies the view's chunks to a target backend (a new qcow2 file, a raw file, a pool
volume) in a thread, skipping chunks that are all zeros so the target stays sparse.
"""

from __future__ import annotations

import errno
import os
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from virtkit.errors import VirtkitError
from virtkit.storage.backend import BlockBackend, BlockError, RawFile
from virtkit.storage.bitmap import true_runs

COPY_BYTES = 1 << 20  # the copy reads the view in pieces of at most this (the guest waits at most one piece)


class BackupError(VirtkitError):
    """A backup that cannot start or did not finish (the guest is not affected)."""


class PointInTime:
    """A :class:`BlockBackend` for the guest over ``source`` that preserves the chunks marked in ``protect``
    (one bool per ``chunk`` bytes; None: all of them) as of its creation; :meth:`read_view` reads them."""

    def __init__(self, source: BlockBackend, chunk: int = 64 << 10, protect: np.ndarray | None = None,
                 scratch_dir: str | None = None) -> None:
        if chunk <= 0 or chunk & (chunk - 1) or chunk % 512:
            raise BackupError(f"chunk size {chunk} must be a power of two, at least 512")
        self.source = source
        self.size = source.size
        self.read_only = source.read_only
        self.chunk, self.shift = chunk, chunk.bit_length() - 1
        n = (self.size + chunk - 1) >> self.shift
        self.protect = np.ones(n, dtype=bool) if protect is None else protect.astype(bool, copy=True)
        if len(self.protect) != n:
            raise BackupError(f"protect map has {len(self.protect)} chunks, the disk {n}")
        self.saved = np.zeros(n, dtype=bool)
        self.lock = threading.RLock()
        self.error: str | None = None
        self.saved_bytes = 0
        self._scratch = tempfile.TemporaryFile(dir=scratch_dir, prefix="virtkit-cbw-")
        self._sfd = self._scratch.fileno()
        self.path = getattr(source, "path", None)
        self.before_close: Callable[[], None] | None = None  # the disk is about to close under a running backup

    # ---------------------------------------------------------------------------------- the guest's side
    def _before_write(self, offset: int, length: int) -> None:
        """Save the old content of the protected, not yet saved chunks a write is about to change."""
        if length <= 0 or self.error is not None:
            return
        c0, c1 = offset >> self.shift, ((min(offset + length, self.size) - 1) >> self.shift) + 1
        need = self.protect[c0:c1] & ~self.saved[c0:c1]
        if not need.any():
            return
        for a, k in true_runs(need):
            b = a + k
            lo = (c0 + a) << self.shift
            hi = min(self.size, (c0 + b) << self.shift)
            buf = bytearray(hi - lo)
            try:
                self.source.readinto(lo, buf)
                done = 0
                while done < len(buf):
                    done += os.pwrite(self._sfd, memoryview(buf)[done:], lo + done)
            except (OSError, VirtkitError) as err:
                # the guest's write must not fail because of the backup: the backup ends instead
                self.error = f"the point-in-time copy could not be kept ({err}): the backup is incomplete"
                self.protect[:] = False
                return
            self.saved[c0 + a:c0 + b] = True
            self.saved_bytes += hi - lo

    def readinto(self, offset: int, buf: memoryview | bytearray) -> int:
        with self.lock:
            return self.source.readinto(offset, buf)

    def write(self, offset: int, data: bytes | memoryview) -> int:
        with self.lock:
            self._before_write(offset, len(data))
            return self.source.write(offset, data)

    def write_zeroes(self, offset: int, length: int) -> None:
        with self.lock:
            self._before_write(offset, length)
            self.source.write_zeroes(offset, length)

    def discard(self, offset: int, length: int) -> None:
        with self.lock:
            self._before_write(offset, length)
            self.source.discard(offset, length)

    def flush(self) -> None:
        with self.lock:
            self.source.flush()

    def close(self) -> None:
        """Close the disk (the VM ends while a backup runs: the backup fails, the disk is closed normally)."""
        with self.lock:
            self.error = self.error or "the disk was closed (the VM stopped) before the backup finished"
            self.protect[:] = False
            if self.before_close is not None:
                self.before_close()
            self.source.close()
            self.release_scratch()

    def __getattr__(self, name: str) -> Any:
        # anything else (block_status for NBD, the pool or the path for messages) is the disk's
        return getattr(self.source, name)

    # ---------------------------------------------------------------------------------- the backup's side
    def read_view(self, offset: int, buf: memoryview | bytearray) -> int:
        """Read the disk as it was when the filter went in (chunks that were not protected read as they are)."""
        mv = memoryview(buf).cast("B")
        n = len(mv)
        if offset < 0 or offset + n > self.size:
            raise BlockError(f"request [{offset}, +{n}) outside device of {self.size} bytes")
        with self.lock:
            if self.error is not None:
                raise BackupError(self.error)
            if n == 0:
                return 0
            c0, c1 = offset >> self.shift, ((offset + n - 1) >> self.shift) + 1
            sv = self.saved[c0:c1]
            if not sv.any():
                return self.source.readinto(offset, mv)
            edges = np.flatnonzero(np.diff(sv.view(np.int8))).tolist() + [len(sv) - 1]
            pos = offset
            for e in edges:
                hi = min(offset + n, (c0 + e + 1) << self.shift)
                piece = mv[pos - offset:hi - offset]
                if sv[e]:
                    got = os.preadv(self._sfd, [piece], pos)
                    if got < len(piece):
                        piece[got:] = bytes(len(piece) - got)
                else:
                    self.source.readinto(pos, piece)
                pos = hi
            return n

    def release(self, offset: int, length: int) -> None:
        """The backup has what it needs of ``[offset, offset+length)`` (chunk aligned): stop protecting it."""
        with self.lock:
            c0, c1 = offset >> self.shift, ((offset + length - 1) >> self.shift) + 1
            self.protect[c0:c1] = False

    def release_scratch(self) -> None:
        """End the view: nothing is protected any more and the scratch file is gone."""
        with self.lock:
            self.protect[:] = False
            if self._sfd >= 0:
                self._scratch.close()
                self._sfd = -1


class ViewBackend:
    """The point-in-time view as a read-only :class:`BlockBackend` (what a pull-mode NBD export serves)."""

    read_only = True

    def __init__(self, pit: PointInTime, bitmaps: dict[str, Any] | None = None) -> None:
        self.pit, self.size, self.path = pit, pit.size, pit.path
        self.bitmaps = dict(bitmaps or {})  # frozen dirty bitmaps, for the qemu:dirty-bitmap: contexts

    def readinto(self, offset: int, buf: memoryview | bytearray) -> int:
        return self.pit.read_view(offset, buf)

    def write(self, offset: int, data: bytes | memoryview) -> int:
        raise BlockError("a point-in-time view is read-only")

    def write_zeroes(self, offset: int, length: int) -> None:
        raise BlockError("a point-in-time view is read-only")

    discard = write_zeroes

    def flush(self) -> None:
        """Nothing to flush."""

    def close(self) -> None:
        """The view belongs to the VM's disk: closing an export does not close it."""


def allocated_runs(backend: BlockBackend) -> list[tuple[int, int]]:
    """``(offset, length)`` of what may hold data (zero and unallocated ranges left out), for a full copy."""
    size = backend.size
    status = getattr(backend, "block_status", None)
    if status is not None:
        out: list[tuple[int, int]] = []
        for off, n, kind in status(0, size):
            if kind == "zero":
                continue
            if out and out[-1][0] + out[-1][1] == off:
                out[-1] = (out[-1][0], out[-1][1] + n)
            else:
                out.append((off, n))
        return out
    if isinstance(backend, RawFile) and os.path.isfile(backend.path):
        return [(pos, n) for pos, n, data in backend.extents(0, size) if data]
    return [(0, size)] if size else []


def runs_to_chunks(runs: list[tuple[int, int]], size: int, chunk: int) -> np.ndarray:
    """A bool per ``chunk`` bytes: set where a run touches."""
    shift = chunk.bit_length() - 1
    out = np.zeros((size + chunk - 1) >> shift, dtype=bool)
    for off, n in runs:
        if n > 0:
            out[off >> shift:((off + n - 1) >> shift) + 1] = True
    return out


def chunk_runs(chunks: np.ndarray, size: int, chunk: int) -> list[tuple[int, int]]:
    """Inverse of :func:`runs_to_chunks`: byte runs of the set chunks (the last one ends at ``size``)."""
    shift = chunk.bit_length() - 1
    return [(a << shift, min(size, (a + k) << shift) - (a << shift)) for a, k in true_runs(chunks)]


class BackupJob:
    """Copy the chunks ``runs`` of a point-in-time view to ``target`` in a thread; :attr:`status` says how far."""

    def __init__(self, pit: PointInTime, target: BlockBackend, runs: list[tuple[int, int]],
                 on_end: Callable[[BackupJob], None] | None = None, speed: float | None = None,
                 over_older: bool = False) -> None:
        self.pit, self.target, self.runs = pit, target, runs
        self.on_end = on_end
        self.speed = speed  # bytes per second read from the view (QEMU's backup ``speed``); None: no limit
        # the target lies over an older backup (an incremental): zeros must be written as zeros, not skipped
        self.over_older = over_older
        self.total = sum(n for _, n in runs)
        self.done = 0
        self.written = 0
        self.state = "running"
        self.error: str | None = None
        self.started = time.monotonic()
        self.seconds = 0.0
        self.ended = threading.Event()
        self._cancel = False
        self._thread = threading.Thread(target=self._run, name="virtkit-backup", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        """Stop copying; the job ends ``cancelled``."""
        self._cancel = True

    def wait(self, timeout: float | None = None) -> bool:
        return self.ended.wait(timeout)

    @property
    def status(self) -> dict[str, Any]:
        elapsed = (self.seconds if self.ended.is_set() else time.monotonic() - self.started) or 1e-9
        return {"state": self.state, "total": self.total, "done": self.done, "written": self.written,
                "saved_by_cbw": self.pit.saved_bytes, "seconds": round(elapsed, 3),
                "rate": round(self.done / elapsed), "error": self.error}

    def _run(self) -> None:
        buf = bytearray(COPY_BYTES)
        mv = memoryview(buf)
        try:
            for off, n in self.runs:
                pos, end = off, off + n
                while pos < end:
                    if self._cancel:
                        raise BackupError("cancelled")
                    k = min(COPY_BYTES, end - pos)
                    piece = mv[:k]
                    self.pit.read_view(pos, piece)
                    if np.frombuffer(piece, dtype=np.uint8).any():
                        self.target.write(pos, piece)
                        self.written += k
                    elif self.over_older:
                        self.target.write_zeroes(pos, k)
                    self.pit.release(pos, k)
                    pos += k
                    self.done += k
                    if self.speed:
                        ahead = self.started + self.done / self.speed - time.monotonic()
                        while ahead > 0 and not self._cancel:
                            time.sleep(min(ahead, 0.1))
                            ahead = self.started + self.done / self.speed - time.monotonic()
            self.target.flush()
            self.state = "completed"
        except (VirtkitError, OSError) as err:
            msg = str(err)
            if getattr(err, "errno", None) == errno.ENOSPC or "No space" in msg:
                msg = f"the backup target is full: {msg}"
            self.state = "cancelled" if msg == "cancelled" else "failed"
            self.error = msg
        except Exception as err:  # a bug: the guest goes on, the backup reports it
            self.state, self.error = "failed", f"{type(err).__name__}: {err}"
        finally:
            if self.state == "completed" and self.pit.error is not None:
                self.state, self.error = "failed", self.pit.error
            self.seconds = time.monotonic() - self.started
            try:
                if self.on_end is not None:
                    self.on_end(self)
            finally:
                self.ended.set()
