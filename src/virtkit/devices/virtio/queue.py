"""The virtio 1.x split virtqueue, read defensively (the guest is hostile).

Layout in guest memory (virtio spec 2.7): a descriptor table of ``num`` 16-byte entries
(addr u64, len u32, flags u16, next u16), the driver ("available") ring
(flags, idx, ring[num], used_event) and the device ("used") ring
(flags, idx, ring[num] of (id u32, len u32), avail_event).

Every address, length and index the guest supplies is checked before use: a descriptor whose
buffer leaves RAM, a chain longer than the queue (a loop), a bad indirect table, a nested
indirect descriptor or an avail index running ahead by more than ``num`` raises
:class:`VirtioError`; the transport then marks the device NEEDS_RESET. Buffers are handed to
devices as zero-copy ``memoryview`` slices of guest RAM that are known to lie inside it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from virtkit.errors import GuestMemoryError, VirtkitError
from virtkit.machine.memory import GuestMemory
from virtkit.machine.state import Fields, StateError

VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_USED_F_NO_NOTIFY = 1
MAX_QUEUE_SIZE = 32768
MAX_INDIRECT = 1024  # entries in one indirect table (Linux never uses more than a queue's worth)
_DESC = struct.Struct("<QIHH")


class VirtioError(VirtkitError):
    """The driver broke the virtio protocol (bad descriptor, address, index): the device needs a reset."""


@dataclass
class Chain:
    """One descriptor chain popped from the available ring: guest buffers, readable then writable."""

    head: int
    readable: list[memoryview] = field(default_factory=list)
    writable: list[memoryview] = field(default_factory=list)

    @property
    def readable_len(self) -> int:
        return sum(len(b) for b in self.readable)

    @property
    def writable_len(self) -> int:
        return sum(len(b) for b in self.writable)

    def read_all(self, limit: int | None = None) -> bytes:
        """The device-readable bytes, concatenated (at most ``limit``)."""
        out = bytearray()
        for b in self.readable:
            if limit is not None and len(out) + len(b) > limit:
                out += b[: limit - len(out)]
                break
            out += b
        return bytes(out)

    def write_all(self, data: bytes | bytearray | memoryview, skip: int = 0) -> int:
        """Scatter ``data`` into the device-writable buffers starting ``skip`` bytes in; returns bytes written."""
        data = memoryview(data)
        done = 0
        for b in self.writable:
            if skip >= len(b):
                skip -= len(b)
                continue
            n = min(len(b) - skip, len(data) - done)
            b[skip : skip + n] = data[done : done + n]
            done += n
            skip = 0
            if done == len(data):
                break
        return done


def split_views(views: list[memoryview], start: int, end: int | None = None) -> list[memoryview]:
    """The byte range ``[start, end)`` of a scatter list, as a list of sub-views."""
    out = []
    pos = 0
    for b in views:
        lo, hi = pos, pos + len(b)
        pos = hi
        a = max(start, lo)
        z = hi if end is None else min(end, hi)
        if a < z:
            out.append(b[a - lo : z - lo])
    return out


class Virtqueue:
    """One split virtqueue of a device, configured by the transport and drained by the device."""

    def __init__(self, mem: GuestMemory, max_size: int = 256) -> None:
        self.mem = mem
        self.max_size = max_size
        self.event_idx = False
        self.reset()

    def reset(self) -> None:
        """Back to the unconfigured state (device reset)."""
        self.num = self.max_size
        self.ready = False
        self.desc_addr = 0
        self.avail_addr = 0
        self.used_addr = 0
        self.last_avail = 0
        self.used_idx = 0
        self.signalled_used = 0
        self.signalled_valid = False
        self.pops = 0

    # -- configuration --------------------------------------------------------------------------
    def save(self) -> dict:
        """Size, ring addresses and the device's indices (what the driver cannot tell it again)."""
        return {"num": self.num, "ready": self.ready, "desc": self.desc_addr, "avail": self.avail_addr,
                "used": self.used_addr, "last_avail": self.last_avail, "used_idx": self.used_idx,
                "signalled_used": self.signalled_used, "signalled_valid": self.signalled_valid,
                "event_idx": self.event_idx, "pops": self.pops}

    def restore(self, state: object, what: str = "virtqueue") -> None:
        """Take a saved queue state; a ready queue must still lie inside guest RAM (checked as when set up)."""
        if not isinstance(state, dict):
            raise StateError(f"{what} state must be an object")
        f = Fields(what, state)
        num = f.int("num", 0, self.max_size)
        regs = {k: f.int(k, 0, (1 << 64) - 1) for k in ("desc", "avail", "used")}
        idx = {k: f.int(k, 0, 0xFFFF) for k in ("last_avail", "used_idx", "signalled_used")}
        ready, sv, ev, pops = f.bool("ready"), f.bool("signalled_valid"), f.bool("event_idx"), f.int("pops", 0)
        self.num, self.ready = num, False
        self.desc_addr, self.avail_addr, self.used_addr = regs["desc"], regs["avail"], regs["used"]
        if ready:
            try:
                self.validate()
            except VirtioError as err:
                raise StateError(f"{what}: {err}") from None
        self.ready = ready
        self.last_avail, self.used_idx, self.signalled_used = idx["last_avail"], idx["used_idx"], idx["signalled_used"]
        self.signalled_valid, self.event_idx, self.pops = sv, ev, pops

    def validate(self) -> None:
        """Check the driver's queue configuration before the queue goes live."""
        n = self.num
        if not 1 <= n <= self.max_size or n & (n - 1):
            raise VirtioError(f"queue size {n} is not a power of two in 1..{self.max_size}")
        for what, addr, size, align in (
            ("descriptor table", self.desc_addr, 16 * n, 16),
            ("driver ring", self.avail_addr, 6 + 2 * n, 2),
            ("device ring", self.used_addr, 6 + 8 * n, 4),
        ):
            if addr % align or not self.mem.contains(addr, size):
                raise VirtioError(f"virtqueue {what} at {addr:#x} (+{size:#x}) is misaligned or outside RAM")

    # -- driver ring ----------------------------------------------------------------------------
    def _u16(self, gpa: int) -> int:
        try:
            return self.mem.read_u16(gpa)
        except GuestMemoryError as err:
            raise VirtioError(str(err)) from None

    def avail_idx(self) -> int:
        return self._u16(self.avail_addr + 2)

    def has_work(self) -> bool:
        """True when the driver has made buffers available that the device has not popped."""
        return self.ready and self.avail_idx() != self.last_avail

    def pop(self) -> Chain | None:
        """The next available descriptor chain, or None when the ring is empty."""
        if not self.ready:
            return None
        idx = self.avail_idx()
        pending = (idx - self.last_avail) & 0xFFFF
        if pending == 0:
            return None
        if pending > self.num:
            raise VirtioError(f"driver ring index {idx} ran {pending} ahead of the device (queue size {self.num})")
        head = self._u16(self.avail_addr + 4 + 2 * (self.last_avail % self.num))
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        if self.event_idx:  # avail_event: "notify me when you pass this index"
            self.mem.write_u16(self.used_addr + 4 + 8 * self.num, self.last_avail)
        self.pops += 1
        return self.walk(head)

    def unpop(self) -> None:
        """Give the last popped chain back (the device could not use it yet)."""
        self.last_avail = (self.last_avail - 1) & 0xFFFF

    def walk(self, head: int) -> Chain:
        """Follow the descriptor chain starting at ``head``, checking everything."""
        if head >= self.num:
            raise VirtioError(f"descriptor head {head} outside queue of size {self.num}")
        chain = Chain(head)
        table, size = self.desc_addr, self.num
        i, count, indirect, total = head, 0, False, 0
        while True:
            count += 1
            if count > size:
                raise VirtioError(f"descriptor chain from head {head} is longer than its table ({size}): a loop")
            try:
                addr, length, flags, nxt = _DESC.unpack(self.mem.read(table + 16 * i, 16))
            except GuestMemoryError as err:
                raise VirtioError(str(err)) from None
            if flags & VIRTQ_DESC_F_INDIRECT:
                if indirect:
                    raise VirtioError("nested indirect descriptor table")
                if flags & VIRTQ_DESC_F_NEXT:
                    raise VirtioError("indirect descriptor with the NEXT flag")
                if length == 0 or length % 16 or length // 16 > MAX_INDIRECT:
                    raise VirtioError(f"indirect descriptor table of bad size {length}")
                if not self.mem.contains(addr, length):
                    raise VirtioError(f"indirect table at {addr:#x} (+{length:#x}) outside RAM")
                table, size, i, count, indirect = addr, length // 16, 0, 0, True
                continue
            if not self.mem.contains(addr, length):
                raise VirtioError(f"descriptor buffer at {addr:#x} (+{length:#x}) outside RAM")
            total += length
            if total > 0xFFFFFFFF:
                raise VirtioError("descriptor chain longer than 4 GiB")
            buf = self.mem.view(addr, length)
            if flags & VIRTQ_DESC_F_WRITE:
                chain.writable.append(buf)
            elif chain.writable:
                raise VirtioError("device-readable descriptor after a device-writable one")
            else:
                chain.readable.append(buf)
            if not flags & VIRTQ_DESC_F_NEXT:
                return chain
            i = nxt
            if i >= size:
                raise VirtioError(f"descriptor next index {i} outside table of size {size}")

    # -- device ring ----------------------------------------------------------------------------
    def push(self, head: int, written: int) -> None:
        """Return chain ``head`` to the driver with ``written`` bytes written into it."""
        slot = self.used_addr + 4 + 8 * (self.used_idx % self.num)
        self.mem.write(slot, struct.pack("<II", head, written))
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self.mem.write_u16(self.used_addr + 2, self.used_idx)  # publish after the element

    def should_notify(self) -> bool:
        """Whether the driver wants an interrupt for the buffers pushed since the last one."""
        if self.event_idx:
            old, new = self.signalled_used, self.used_idx
            valid = self.signalled_valid
            self.signalled_used, self.signalled_valid = new, True
            used_event = self._u16(self.avail_addr + 4 + 2 * self.num)
            return not valid or ((new - used_event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
        return not self._u16(self.avail_addr) & VIRTQ_AVAIL_F_NO_INTERRUPT
