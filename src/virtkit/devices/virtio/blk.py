"""virtio-blk (virtio spec 5.2) on the block backend seam (raw files, qcow2, pool volumes).

Each request is a header (type, reserved, sector), data buffers and a one-byte status the
device writes last. Data moves between the backend and guest RAM through zero-copy views.
A request the device cannot serve (out of range, read-only disk, odd length, backend error)
gets ``VIRTIO_BLK_S_IOERR``; an unknown type gets ``VIRTIO_BLK_S_UNSUPP``.
"""

from __future__ import annotations

import struct

from virtkit.devices.virtio.device import VIRTIO_ID_BLOCK, VirtioDevice, le
from virtkit.devices.virtio.queue import Chain, VirtioError, split_views
from virtkit.errors import VirtkitError
from virtkit.machine.memory import GuestMemory
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


class VirtioBlk(VirtioDevice):
    """A virtio block device over ``backend``; ``serial`` answers GET_ID."""

    device_id = VIRTIO_ID_BLOCK
    name = "virtio-blk"

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
        self.counts = {"read": 0, "write": 0, "flush": 0, "other": 0, "ioerr": 0, "bytes_read": 0, "bytes_written": 0}

    def notify(self, index: int) -> None:
        """Serve every available request, then interrupt once."""
        q = self.queues[0]
        done = False
        while (chain := q.pop()) is not None:
            written = self.handle(chain)
            q.push(chain.head, written)
            done = True
        if done:
            self.interrupt(0)

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
        except (VirtkitError, OSError):
            status = VIRTIO_BLK_S_IOERR
        if status == VIRTIO_BLK_S_IOERR:
            self.counts["ioerr"] += 1
        status_view[0] = status
        return written + 1

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
