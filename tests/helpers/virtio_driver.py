"""A minimal virtio-mmio *driver* for tests: the guest side, laid out in real guest memory.

It does what Linux's virtio_mmio + virtio_ring do (status handshake, feature negotiation,
queue setup, descriptor chains, notify, used-ring reads) so device models are exercised
through their real register interface.
"""

from __future__ import annotations

import struct

from virtkit.devices.virtio import mmio as M
from virtkit.machine.memory import GuestMemory

RAM_BASE = 0x8000_0000


class Driver:
    def __init__(self, mem: GuestMemory, transport: M.MmioTransport, queue_size: int = 16) -> None:
        self.mem = mem
        self.t = transport
        self.qsize = queue_size
        self.brk = mem.base + 0x10000
        self.queues: dict[int, dict] = {}
        self.irq_count = 0

    def alloc(self, n: int, align: int = 16) -> int:
        self.brk = (self.brk + align - 1) // align * align
        a = self.brk
        self.brk += n
        assert self.mem.contains(a, n)
        return a

    def r(self, off: int) -> int:
        return self.t.read(off, 4)

    def w(self, off: int, v: int) -> None:
        self.t.write(off, 4, v)

    def setup(self, nqueues: int, features: int | None = None, event_idx: bool = False,
              driver_ok: bool = True) -> int:
        assert self.r(M.MAGIC_VALUE) == M.MAGIC and self.r(M.VERSION) == 2
        self.w(M.STATUS, 0)
        self.w(M.STATUS, M.STATUS_ACKNOWLEDGE)
        self.w(M.STATUS, M.STATUS_ACKNOWLEDGE | M.STATUS_DRIVER)
        self.w(M.DEVICE_FEATURES_SEL, 0)
        lo = self.r(M.DEVICE_FEATURES)
        self.w(M.DEVICE_FEATURES_SEL, 1)
        hi = self.r(M.DEVICE_FEATURES)
        dev = lo | hi << 32
        if features is None:
            features = dev if event_idx else dev & ~(1 << 29)
        self.w(M.DRIVER_FEATURES_SEL, 0)
        self.w(M.DRIVER_FEATURES, features & 0xFFFFFFFF)
        self.w(M.DRIVER_FEATURES_SEL, 1)
        self.w(M.DRIVER_FEATURES, features >> 32)
        self.w(M.STATUS, M.STATUS_ACKNOWLEDGE | M.STATUS_DRIVER | M.STATUS_FEATURES_OK)
        if not self.r(M.STATUS) & M.STATUS_FEATURES_OK:
            return 0
        for qi in range(nqueues):
            self.setup_queue(qi)
        if driver_ok:
            self.w(M.STATUS, M.STATUS_ACKNOWLEDGE | M.STATUS_DRIVER | M.STATUS_FEATURES_OK | M.STATUS_DRIVER_OK)
        return features

    def setup_queue(self, qi: int, desc: int | None = None, avail: int | None = None, used: int | None = None,
                    num: int | None = None) -> None:
        n = num or self.qsize
        self.w(M.QUEUE_SEL, qi)
        desc = self.alloc(16 * n) if desc is None else desc
        avail = self.alloc(6 + 2 * n, 2) if avail is None else avail
        used = self.alloc(6 + 8 * n, 4) if used is None else used
        self.w(M.QUEUE_NUM, n)
        for lo, v in ((M.QUEUE_DESC_LOW, desc), (M.QUEUE_DRIVER_LOW, avail), (M.QUEUE_DEVICE_LOW, used)):
            self.w(lo, v & 0xFFFFFFFF)
            self.w(lo + 4, v >> 32)
        self.w(M.QUEUE_READY, 1)
        self.queues[qi] = {"desc": desc, "avail": avail, "used": used, "num": n, "next_desc": 0, "avail_idx": 0,
                           "used_seen": 0}

    def write_desc(self, table: int, i: int, addr: int, length: int, flags: int, nxt: int) -> None:
        self.mem.write(table + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))

    def add(self, qi: int, out: list[bytes], in_lens: list[int], indirect: bool = False) -> tuple[int, list[int]]:
        """Queue a chain of readable buffers ``out`` and writable buffers of ``in_lens``; returns (head, in gpas)."""
        q = self.queues[qi]
        bufs = []
        for data in out:
            a = self.alloc(max(len(data), 1))
            self.mem.write(a, data)
            bufs.append((a, len(data), 0))
        ins = []
        for n in in_lens:
            a = self.alloc(max(n, 1))
            ins.append(a)
            bufs.append((a, n, 2))
        if indirect:
            table = self.alloc(16 * len(bufs))
            for i, (a, n, f) in enumerate(bufs):
                self.write_desc(table, i, a, n, f | (1 if i + 1 < len(bufs) else 0), i + 1)
            head = q["next_desc"] % q["num"]
            q["next_desc"] += 1
            self.write_desc(q["desc"], head, table, 16 * len(bufs), 4, 0)
        else:
            idxs = [(q["next_desc"] + i) % q["num"] for i in range(len(bufs))]
            q["next_desc"] += len(bufs)
            for k, (a, n, f) in enumerate(bufs):
                last = k + 1 == len(bufs)
                self.write_desc(q["desc"], idxs[k], a, n, f | (0 if last else 1), 0 if last else idxs[k + 1])
            head = idxs[0]
        self.publish(qi, head)
        return head, ins

    def publish(self, qi: int, head: int) -> None:
        q = self.queues[qi]
        self.mem.write_u16(q["avail"] + 4 + 2 * (q["avail_idx"] % q["num"]), head)
        q["avail_idx"] = (q["avail_idx"] + 1) & 0xFFFF
        self.mem.write_u16(q["avail"] + 2, q["avail_idx"])

    def kick(self, qi: int) -> None:
        self.w(M.QUEUE_NOTIFY, qi)

    def used(self, qi: int) -> list[tuple[int, int]]:
        """New used-ring entries since the last call."""
        q = self.queues[qi]
        idx = self.mem.read_u16(q["used"] + 2)
        out = []
        while q["used_seen"] != idx:
            slot = q["used"] + 4 + 8 * (q["used_seen"] % q["num"])
            out.append(struct.unpack("<II", self.mem.read(slot, 8)))
            q["used_seen"] = (q["used_seen"] + 1) & 0xFFFF
        return out

    def ack_irq(self) -> int:
        isr = self.r(M.INTERRUPT_STATUS)
        self.w(M.INTERRUPT_ACK, isr)
        return isr

    @property
    def needs_reset(self) -> bool:
        return bool(self.r(M.STATUS) & M.STATUS_NEEDS_RESET)
