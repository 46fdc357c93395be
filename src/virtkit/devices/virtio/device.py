"""What every virtio device has in common, independent of the transport (MMIO, later PCI).

A device declares its ID, feature bits, queues and config space; the transport tells it when
the driver has finished setting up (:meth:`activate`), when a queue is notified
(:meth:`notify`) and when the driver resets it (:meth:`reset`). The device returns buffers
with :meth:`complete` and raises a used-buffer interrupt through the transport.
"""

from __future__ import annotations

import struct
import threading
from typing import Protocol

from virtkit.devices.virtio.queue import VirtioError, Virtqueue
from virtkit.errors import GuestMemoryError
from virtkit.machine.memory import GuestMemory
from virtkit.machine.state import Fields, StateError, fields, record


class Transport(Protocol):
    """What a device calls on its transport (virtio-mmio today, PCI later): the device never sees which one."""

    def raise_used(self) -> None:
        """Signal a used-buffer notification to the driver."""

    def raise_config(self) -> None:
        """Signal a configuration change."""

    def fail(self, err: Exception) -> None:
        """The driver broke the protocol: mark the device NEEDS_RESET and tell the driver."""

VIRTIO_F_RING_INDIRECT_DESC = 28
VIRTIO_F_RING_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32

VIRTIO_ID_NET = 1
VIRTIO_ID_BLOCK = 2
VIRTIO_ID_CONSOLE = 3
VIRTIO_ID_RNG = 4


class VirtioDevice:
    """Base class: ``device_id``, ``features`` (device side), queues and a config-space bytearray."""

    device_id = 0
    name = "virtio"
    STATE_KIND = "virtio"
    STATE_VERSION = 1

    def __init__(self, mem: GuestMemory, num_queues: int, queue_size: int = 256, features: int = 0) -> None:
        self.mem = mem
        self.features = (features | 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_F_RING_INDIRECT_DESC
                         | 1 << VIRTIO_F_RING_EVENT_IDX)
        self.driver_features = 0
        self.queues = [Virtqueue(mem, queue_size) for _ in range(num_queues)]
        self.config = bytearray()
        self.transport: Transport | None = None
        #: Held while the device runs (transport register access, host-side input from the I/O thread).
        self.lock = threading.RLock()
        self.active = False
        self.errors = 0

    # -- state ---------------------------------------------------------------------------------
    def save(self) -> dict:
        """Negotiated features, config space, every queue and what the device model keeps (:meth:`save_extra`)."""
        with self.lock:
            return record(self, device_id=self.device_id, features=self.features,
                          driver_features=self.driver_features, active=self.active, errors=self.errors,
                          config=self.config.hex(), queues=[q.save() for q in self.queues], **self.save_extra())

    def restore(self, state: dict) -> None:
        """Take a saved state: same device type and queues; the device's own fields through :meth:`restore_extra`."""
        f = fields(self, state)
        f.int("device_id", self.device_id, self.device_id)
        feats = f.int("features", 0)
        if feats & ~self.features:
            raise StateError(f"{self.STATE_KIND} state offers features {feats & ~self.features:#x} this device lacks")
        drv = f.int("driver_features", 0)
        if drv & ~self.features:
            raise StateError(f"{self.STATE_KIND} state: the driver accepted features the device does not offer")
        config = f.bytes("config", max_len=4096)
        if len(config) != len(self.config):
            raise StateError(f"{self.STATE_KIND} state: config space of {len(config)} bytes, expected "
                             f"{len(self.config)}")
        queues = f.list("queues", len(self.queues))
        active, errors = f.bool("active"), f.int("errors", 0)
        fresh = []  # restored into new queues first: a bad record leaves the device as it was
        for i, (q, qs) in enumerate(zip(self.queues, queues, strict=True)):
            nq = Virtqueue(self.mem, q.max_size)
            nq.restore(qs, f"{self.STATE_KIND} queue {i}")
            fresh.append(nq)
        with self.lock:
            self.driver_features = drv
            self.queues[:] = fresh
            self.config[:] = config
            self.active, self.errors = active, errors
            self.restore_extra(f)

    def save_extra(self) -> dict:
        """Fields a device model adds to its record (in-flight requests, backlogs)."""
        return {}

    def restore_extra(self, f: Fields) -> None:
        """Read back what :meth:`save_extra` added (called under the device lock, queues already restored)."""

    def has_feature(self, bit: int) -> bool:
        """Whether the driver accepted feature ``bit``."""
        return bool(self.driver_features >> bit & 1)

    # -- lifecycle (called by the transport) ---------------------------------------------------
    def activate(self) -> None:
        """The driver set DRIVER_OK: the device may start using its queues."""
        self.active = True
        for q in self.queues:
            q.event_idx = self.has_feature(VIRTIO_F_RING_EVENT_IDX)

    def reset(self) -> None:
        """The driver wrote 0 to status: forget everything negotiated."""
        self.active = False
        self.driver_features = 0
        for q in self.queues:
            q.reset()

    def notify(self, index: int) -> None:
        """The driver made buffers available on queue ``index``."""

    # -- config space ---------------------------------------------------------------------------
    def read_config(self, offset: int, size: int) -> int:
        """Little-endian read of the device config space (out of range reads as zero)."""
        if offset < 0 or offset + size > len(self.config):
            return 0
        return int.from_bytes(self.config[offset : offset + size], "little")

    def write_config(self, offset: int, size: int, value: int) -> None:
        """Drivers may write some config fields; by default writes are ignored."""

    # -- returning buffers ----------------------------------------------------------------------
    def complete(self, qi: int, head: int, written: int) -> None:
        """Put a chain on queue ``qi``'s used ring (call :meth:`interrupt` after a batch)."""
        self.queues[qi].push(head, written)

    def interrupt(self, qi: int) -> None:
        """Raise the used-buffer interrupt if the driver wants one for queue ``qi``."""
        if self.transport is not None and self.queues[qi].should_notify():
            self.transport.raise_used()

    def config_changed(self) -> None:
        """Tell the driver the config space changed."""
        if self.transport is not None:
            self.transport.raise_config()

    def host_call(self, fn, *args) -> None:
        """Run ``fn(*args)`` from host context (I/O thread) under the device lock; protocol errors reset."""
        with self.lock:
            if not self.active:
                return
            try:
                fn(*args)
            except (VirtioError, GuestMemoryError) as err:
                if self.transport is not None:
                    self.transport.fail(err)

    def stats(self) -> dict[str, int]:
        """Counters for ``--stats``."""
        return {"pops": sum(q.pops for q in self.queues), "errors": self.errors}


def le(fmt: str, *values: int) -> bytes:
    """Pack little-endian config-space fields."""
    return struct.pack("<" + fmt, *values)
