"""virtio-blk (virtio spec 5.2) on the block backend seam (raw files, qcow2, pool volumes).

Each request is a header (type, reserved, sector), data buffers and a one-byte status the
device writes last. Data moves between the backend and guest RAM through zero-copy views.
A request the device cannot serve (out of range, read-only disk, odd length) gets
``VIRTIO_BLK_S_IOERR``; an unknown type gets ``VIRTIO_BLK_S_UNSUPP``.

A failing backend follows the disk's error policy, as QEMU's ``werror``/``rerror``: ``report`` (an I/O
error for the guest), ``ignore`` (a failed write is reported done) or ``stop``: the request is held, the VM
pauses with the reason (a full thin pool, a full file system), and when the VM is resumed the held
request and those queued behind it are tried again, so the guest loses nothing. When the backend grows
(a pool volume resized by another process) the device updates its capacity and sends a
configuration-change interrupt: Linux re-reads the size (``lsblk`` shows it).
"""

from __future__ import annotations

import errno
import os
import struct
import time
from collections.abc import Callable

from virtkit.devices.virtio.device import VIRTIO_ID_BLOCK, VirtioDevice, le
from virtkit.devices.virtio.queue import Chain, VirtioError, split_views
from virtkit.errors import GuestMemoryError, VirtkitError
from virtkit.machine.memory import GuestMemory
from virtkit.machine.state import Fields, StateError
from virtkit.storage.backend import BlockBackend

VIRTIO_BLK_F_SIZE_MAX = 1
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_F_BLK_SIZE = 6
VIRTIO_BLK_F_FLUSH = 9
VIRTIO_BLK_F_DISCARD = 13
VIRTIO_BLK_F_WRITE_ZEROES = 14

VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_T_DISCARD = 11
VIRTIO_BLK_T_WRITE_ZEROES = 13

VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2

SECTOR = 512
ID_BYTES = 20
SIZE_MAX = 1 << 20  # bytes per segment
MAX_DISCARD_SECTORS = 1 << 22  # 2 GiB per discard / write-zeroes segment
MAX_DISCARD_SEG = 32
_HDR = struct.Struct("<IIQ")
_SEG = struct.Struct("<QII")


class _ReqError(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class _Stop(Exception):
    """The backend failed and the disk's policy is ``stop``: hold the request, pause the VM."""

    def __init__(self, reason: str) -> None:
        self.reason = reason



class VirtioBlk(VirtioDevice):
    """A virtio block device over ``backend``; ``serial`` answers GET_ID."""

    device_id = VIRTIO_ID_BLOCK
    name = "virtio-blk"
    STATE_KIND = "virtio-blk"

    def __init__(self, mem: GuestMemory, backend: BlockBackend, serial: str = "virtkit", queue_size: int = 256,
                 werror: str = "report", rerror: str = "report") -> None:
        feats = (1 << VIRTIO_BLK_F_SIZE_MAX | 1 << VIRTIO_BLK_F_SEG_MAX | 1 << VIRTIO_BLK_F_BLK_SIZE
                 | 1 << VIRTIO_BLK_F_FLUSH)
        if backend.read_only:
            feats |= 1 << VIRTIO_BLK_F_RO
        else:
            feats |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES
        super().__init__(mem, 1, queue_size, feats)
        self.backend = backend
        self.werror, self.rerror = werror, rerror
        self.serial = serial.encode()[:ID_BYTES]
        self.capacity = backend.size // SECTOR
        self.seg_max = queue_size - 2
        self.config = bytearray(
            le("Q", self.capacity)  # 0 capacity
            + le("II", SIZE_MAX, self.seg_max)  # 8 size_max, 12 seg_max
            + le("HBB", 0, 0, 0)  # 16 geometry
            + le("I", SECTOR)  # 20 blk_size
            + le("BBHI", 0, 0, 0, 0)  # 24 topology
            + le("BBH", 0, 0, 1)  # 32 writeback, unused, num_queues
            + le("III", MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, 1)  # 36 discard limits, alignment
            + le("II", MAX_DISCARD_SECTORS, MAX_DISCARD_SEG)  # 48 write-zeroes limits
            + le("B3x", 1)  # 56 write_zeroes_may_unmap
        )
        self.counts = {"read": 0, "write": 0, "flush": 0, "other": 0, "ioerr": 0, "bytes_read": 0, "bytes_written": 0,
                       "stops": 0, "resizes": 0}
        #: called as ``on_stop(reason)`` when a request fails under the ``stop`` policy (the builder pauses the VM)
        self.on_stop: Callable[[str], None] | None = None
        self.label = serial
        self._held: Chain | None = None  # the request that stopped the VM, tried again on resume
        self._next_size_check = 0.0

    def save_extra(self) -> dict:
        """The request held by a ``stop`` error (retried when the VM runs again) and the capacity."""
        return {"held": self._held.head if self._held is not None else None, "capacity": self.capacity}

    def restore_extra(self, f: Fields) -> None:
        """Re-read the held request's descriptors from (restored) guest RAM; it is retried on resume."""
        self.capacity = f.int("capacity", 0)
        held = f.opt_int("held")
        self._held = None
        if held is not None:
            q = self.queues[0]
            if not q.ready or not 0 <= held < q.num:
                raise StateError(f"virtio-blk state: held request {held} is not in the queue")
            try:
                self._held = q.walk(held)
            except (VirtioError, GuestMemoryError) as err:
                raise StateError(f"virtio-blk state: held request {held}: {err}") from None

    def attach_vm(self, vm: object) -> None:
        """Wire the error policy to the VM: pause it on a ``stop`` error and retry when it runs again."""
        from virtkit.machine.vm import Vm

        assert isinstance(vm, Vm)

        def stop(reason: str) -> None:
            vm.pause(reason)

        def on_state(state: str, reason: str) -> None:
            if state == "running" and self._held is not None:
                with self.lock:
                    self.retry()

        self.on_stop = stop
        vm.listeners.append(on_state)
        vm.periodic.append(self.check_capacity)

    def notify(self, index: int) -> None:
        """Serve every available request, then interrupt once (stop at a held one: the VM is pausing)."""
        if self._held is not None:
            return  # the VM is pausing or paused for a failed request: the queue waits behind it
        q = self.queues[0]
        done = False
        while (chain := q.pop()) is not None:
            try:
                written = self.handle(chain)
            except _Stop as stop:
                self._held = chain
                self.counts["stops"] += 1
                if done:
                    self.interrupt(0)
                if self.on_stop is not None:
                    self.on_stop(stop.reason)
                return
            q.push(chain.head, written)
            done = True
        if done:
            self.interrupt(0)

    def retry(self) -> None:
        """The VM runs again: the held request first, then the rest of the queue (it may stop again)."""
        chain, self._held = self._held, None
        if chain is None or not self.active:
            return
        try:
            written = self.handle(chain)
        except _Stop as stop:
            self._held = chain
            self.counts["stops"] += 1
            if self.on_stop is not None:
                self.on_stop(stop.reason)
            return
        self.queues[0].push(chain.head, written)
        self.interrupt(0)
        self.notify(0)

    def check_capacity(self) -> None:
        """A grown (or shrunk) backend: new capacity in the config space and a configuration-change interrupt."""
        now = time.monotonic()
        if now < self._next_size_check:
            return
        self._next_size_check = now + 0.25
        try:
            sectors = self.backend.size // SECTOR
        except (VirtkitError, OSError):
            return
        if sectors != self.capacity:
            with self.lock:
                self.capacity = sectors
                self.config[0:8] = le("Q", sectors)
                self.counts["resizes"] += 1
                self.config_changed()

    def handle(self, chain: Chain) -> int:
        """Serve one request; returns the number of bytes written into the chain (data + status)."""
        wlen = chain.writable_len
        if wlen < 1:
            raise VirtioError("virtio-blk request without a status byte")
        data_w = split_views(chain.writable, 0, wlen - 1)
        status_view = split_views(chain.writable, wlen - 1)[0]
        hdr = chain.read_all(_HDR.size)
        written = 0
        try:
            if len(hdr) < _HDR.size:
                raise _ReqError(VIRTIO_BLK_S_IOERR)
            rtype, _, sector = _HDR.unpack(hdr)
            data_r = split_views(chain.readable, _HDR.size)
            written = self._serve(rtype, sector, data_r, data_w)
            status = VIRTIO_BLK_S_OK
        except _ReqError as e:
            status = e.status
        except (VirtkitError, OSError) as err:
            status = self._policy(hdr, err)
        if status == VIRTIO_BLK_S_IOERR:
            self.counts["ioerr"] += 1
        status_view[0] = status
        return written + 1

    def _policy(self, hdr: bytes, err: BaseException) -> int:
        """What a backend failure becomes under the disk's ``werror``/``rerror`` policy."""
        rtype = _HDR.unpack(hdr)[0] if len(hdr) >= _HDR.size else VIRTIO_BLK_T_IN
        write = rtype != VIRTIO_BLK_T_IN
        policy = self.werror if write else self.rerror
        if policy == "ignore" and write:
            return VIRTIO_BLK_S_OK
        if policy == "stop":
            code = getattr(err, "errno", None) or errno.EIO
            why = os.strerror(code) if isinstance(code, int) else str(code)
            raise _Stop(f"disk {self.label} ({getattr(self.backend, 'path', '?')}): {'write' if write else 'read'} "
                        f"failed: {why}: {err}")
        return VIRTIO_BLK_S_IOERR

    def _range(self, sector: int, nbytes: int) -> int:
        if nbytes % SECTOR:
            raise _ReqError(VIRTIO_BLK_S_IOERR)
        off = sector * SECTOR
        if off + nbytes > self.capacity * SECTOR:
            raise _ReqError(VIRTIO_BLK_S_IOERR)
        return off

    def _serve(self, rtype: int, sector: int, data_r: list[memoryview], data_w: list[memoryview]) -> int:
        b = self.backend
        if rtype == VIRTIO_BLK_T_IN:
            n = sum(len(v) for v in data_w)
            off = self._range(sector, n)
            for v in data_w:
                b.readinto(off, v)
                off += len(v)
            self.counts["read"] += 1
            self.counts["bytes_read"] += n
            return n
        if rtype == VIRTIO_BLK_T_OUT:
            n = sum(len(v) for v in data_r)
            off = self._range(sector, n)
            if b.read_only:
                raise _ReqError(VIRTIO_BLK_S_IOERR)
            for v in data_r:
                b.write(off, v)
                off += len(v)
            self.counts["write"] += 1
            self.counts["bytes_written"] += n
            return 0
        if rtype == VIRTIO_BLK_T_FLUSH:
            b.flush()
            self.counts["flush"] += 1
            return 0
        if rtype == VIRTIO_BLK_T_GET_ID:
            self.counts["other"] += 1
            ident = self.serial.ljust(ID_BYTES, b"\0")
            return Chain(0, writable=data_w).write_all(ident)
        if rtype in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
            if b.read_only:
                raise _ReqError(VIRTIO_BLK_S_IOERR)
            raw = b"".join(bytes(v) for v in data_r)
            if not raw or len(raw) % _SEG.size or len(raw) // _SEG.size > MAX_DISCARD_SEG:
                raise _ReqError(VIRTIO_BLK_S_IOERR)
            segs = [_SEG.unpack_from(raw, i) for i in range(0, len(raw), _SEG.size)]
            for s_sector, nsect, flags in segs:  # check all before touching any
                if nsect > MAX_DISCARD_SECTORS or flags & ~1 or (rtype == VIRTIO_BLK_T_DISCARD and flags):
                    raise _ReqError(VIRTIO_BLK_S_UNSUPP if flags else VIRTIO_BLK_S_IOERR)
                self._range(s_sector, nsect * SECTOR)
            for s_sector, nsect, _ in segs:
                if rtype == VIRTIO_BLK_T_DISCARD:
                    b.discard(s_sector * SECTOR, nsect * SECTOR)
                else:
                    b.write_zeroes(s_sector * SECTOR, nsect * SECTOR)
            self.counts["other"] += 1
            return 0
        raise _ReqError(VIRTIO_BLK_S_UNSUPP)

    def stats(self) -> dict[str, int]:
        """Request counters."""
        return {**super().stats(), **self.counts}
