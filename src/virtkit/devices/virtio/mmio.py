"""The virtio-mmio transport, version 2 (virtio spec 4.2): registers in a 4 KiB MMIO window.

An empty slot (no device) answers with device ID 0, so Linux probes and skips it, as on QEMU's
``virt`` board which always has eight slots. A driver that breaks the protocol (bad queue
setup, bad descriptor) gets the device marked NEEDS_RESET and a config-change interrupt; the
device then ignores notifications until it is reset.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from virtkit.devices.virtio.device import VIRTIO_F_VERSION_1, VirtioDevice
from virtkit.devices.virtio.queue import VirtioError
from virtkit.errors import GuestMemoryError
from virtkit.machine.state import StateError, fields, record

MAGIC_VALUE = 0x000
VERSION = 0x004
DEVICE_ID = 0x008
VENDOR_ID = 0x00C
DEVICE_FEATURES = 0x010
DEVICE_FEATURES_SEL = 0x014
DRIVER_FEATURES = 0x020
DRIVER_FEATURES_SEL = 0x024
QUEUE_SEL = 0x030
QUEUE_NUM_MAX = 0x034
QUEUE_NUM = 0x038
QUEUE_READY = 0x044
QUEUE_NOTIFY = 0x050
INTERRUPT_STATUS = 0x060
INTERRUPT_ACK = 0x064
STATUS = 0x070
QUEUE_DESC_LOW = 0x080
QUEUE_DESC_HIGH = 0x084
QUEUE_DRIVER_LOW = 0x090
QUEUE_DRIVER_HIGH = 0x094
QUEUE_DEVICE_LOW = 0x0A0
QUEUE_DEVICE_HIGH = 0x0A4
SHM_SEL = 0x0AC
SHM_LEN_LOW = 0x0B0
SHM_LEN_HIGH = 0x0B4
CONFIG_GENERATION = 0x0FC
CONFIG = 0x100

MAGIC = 0x74726976  # "virt"
VENDOR = 0x554D4551  # "QEMU", what Linux and QEMU use
STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK = 1, 2, 4
STATUS_FEATURES_OK, STATUS_NEEDS_RESET, STATUS_FAILED = 8, 0x40, 0x80
INT_USED_RING, INT_CONFIG = 1, 2
WINDOW = 0x1000


class MmioTransport:
    """One virtio-mmio slot; ``device`` may be None (an empty slot)."""

    STATE_KIND = "virtio-mmio"
    STATE_VERSION = 1

    def __init__(self, device: VirtioDevice | None, irq: Callable[[bool], None] | None = None) -> None:
        self.device = device
        self.irq = irq or (lambda level: None)
        self.lock = device.lock if device is not None else threading.RLock()
        if device is not None:
            device.transport = self
        self.status = 0
        self.isr = 0
        self.dev_features_sel = 0
        self.drv_features_sel = 0
        self.queue_sel = 0
        self.config_generation = 0
        self.notifies = 0
        self.last_error = ""

    # -- state -----------------------------------------------------------------------------------
    def save(self) -> dict:
        """Transport registers, then the device's own record (None for an empty slot)."""
        with self.lock:
            return record(self, status=self.status, isr=self.isr, dev_features_sel=self.dev_features_sel,
                          drv_features_sel=self.drv_features_sel, queue_sel=self.queue_sel,
                          config_generation=self.config_generation, notifies=self.notifies,
                          last_error=self.last_error,
                          device=self.device.save() if self.device is not None else None)

    def restore(self, state: dict) -> None:
        """Take a saved state (the slot must hold the same kind of device) and drive the interrupt line."""
        f = fields(self, state)
        regs = {k: f.int(k, 0, 0xFFFFFFFF) for k in ("status", "isr", "dev_features_sel", "drv_features_sel",
                                                      "queue_sel", "config_generation")}
        notifies, last_error = f.int("notifies", 0), f.str("last_error")
        dev = state.get("device")
        if (dev is None) != (self.device is None):
            raise StateError("virtio-mmio state: " + ("an empty slot saved where this machine has a "
                                                      f"{self.device.name}" if dev is None and self.device
                                                      else "a device saved in a slot this machine leaves empty"))
        with self.lock:
            if self.device is not None:
                self.device.restore(dev)
            for k, v in regs.items():
                setattr(self, k, v)
            self.notifies, self.last_error = notifies, last_error
            self.irq(bool(self.isr))

    # -- interrupts ------------------------------------------------------------------------------
    def raise_used(self) -> None:
        """Signal a used-buffer notification."""
        with self.lock:
            self.isr |= INT_USED_RING
            self.irq(True)

    def raise_config(self) -> None:
        """Signal a configuration change (also how NEEDS_RESET is announced)."""
        with self.lock:
            self.config_generation = (self.config_generation + 1) & 0xFFFFFFFF
            self.isr |= INT_CONFIG
            self.irq(True)

    def fail(self, err: Exception) -> None:
        """The driver broke the protocol: mark the device NEEDS_RESET, stop serving it until reset."""
        self.last_error = str(err)
        if self.device is not None:
            self.device.errors += 1
            self.device.active = False
        self.status |= STATUS_NEEDS_RESET
        self.raise_config()

    def _reset(self) -> None:
        self.status = 0
        self.isr = 0
        self.dev_features_sel = self.drv_features_sel = self.queue_sel = 0
        self.irq(False)
        if self.device is not None:
            self.device.reset()

    # -- registers ---------------------------------------------------------------------------------
    def _queue(self):
        d = self.device
        if d is None or self.queue_sel >= len(d.queues):
            return None
        return d.queues[self.queue_sel]

    def read(self, offset: int, size: int) -> int:
        """Guest register read."""
        with self.lock:
            d = self.device
            if offset >= CONFIG:
                return d.read_config(offset - CONFIG, size) if d is not None else 0
            if offset == MAGIC_VALUE:
                return MAGIC
            if offset == VERSION:
                return 2
            if offset == DEVICE_ID:
                return d.device_id if d is not None else 0
            if d is None:
                return 0
            if offset == VENDOR_ID:
                return VENDOR
            if offset == DEVICE_FEATURES:
                return (d.features >> (32 * self.dev_features_sel)) & 0xFFFFFFFF if self.dev_features_sel < 2 else 0
            q = self._queue()
            if offset == QUEUE_NUM_MAX:
                return q.max_size if q is not None else 0
            if offset == QUEUE_READY:
                return int(q.ready) if q is not None else 0
            if offset == INTERRUPT_STATUS:
                return self.isr
            if offset == STATUS:
                return self.status
            if offset in (SHM_LEN_LOW, SHM_LEN_HIGH):
                return 0xFFFFFFFF  # no shared memory regions
            if offset == CONFIG_GENERATION:
                return self.config_generation
            if q is not None:
                regs = {QUEUE_NUM: q.num, QUEUE_DESC_LOW: q.desc_addr, QUEUE_DESC_HIGH: q.desc_addr >> 32,
                        QUEUE_DRIVER_LOW: q.avail_addr, QUEUE_DRIVER_HIGH: q.avail_addr >> 32,
                        QUEUE_DEVICE_LOW: q.used_addr, QUEUE_DEVICE_HIGH: q.used_addr >> 32}
                if offset in regs:
                    return regs[offset] & 0xFFFFFFFF
            return 0

    def write(self, offset: int, size: int, value: int) -> None:
        """Guest register write."""
        value &= 0xFFFFFFFF
        with self.lock:
            d = self.device
            if d is None:
                return
            if offset >= CONFIG:
                d.write_config(offset - CONFIG, size, value)
            elif offset == DEVICE_FEATURES_SEL:
                self.dev_features_sel = value
            elif offset == DRIVER_FEATURES_SEL:
                self.drv_features_sel = value
            elif offset == DRIVER_FEATURES:
                if self.drv_features_sel < 2 and not self.status & STATUS_FEATURES_OK:
                    shift = 32 * self.drv_features_sel
                    d.driver_features = (d.driver_features & ~(0xFFFFFFFF << shift)) | (value << shift)
            elif offset == QUEUE_SEL:
                self.queue_sel = value
            elif offset == QUEUE_NOTIFY:
                self._notify(value & 0xFFFF)
            elif offset == INTERRUPT_ACK:
                self.isr &= ~value
                if not self.isr:
                    self.irq(False)
            elif offset == STATUS:
                self._write_status(value)
            else:
                self._write_queue(offset, value)

    def _write_queue(self, offset: int, value: int) -> None:
        q = self._queue()
        if q is None or (self.status & STATUS_DRIVER_OK or q.ready) and offset != QUEUE_READY:
            return  # a live queue's size and addresses cannot change (they were checked when it went ready)
        if offset == QUEUE_NUM:
            q.num = value
        elif offset == QUEUE_READY:
            if value & 1 and not q.ready:
                try:
                    q.validate()
                except VirtioError as err:
                    self.fail(err)
                    return
                q.ready = True
            elif not value & 1:
                q.ready = False
        elif offset == QUEUE_DESC_LOW:
            q.desc_addr = (q.desc_addr & ~0xFFFFFFFF) | value
        elif offset == QUEUE_DESC_HIGH:
            q.desc_addr = (q.desc_addr & 0xFFFFFFFF) | value << 32
        elif offset == QUEUE_DRIVER_LOW:
            q.avail_addr = (q.avail_addr & ~0xFFFFFFFF) | value
        elif offset == QUEUE_DRIVER_HIGH:
            q.avail_addr = (q.avail_addr & 0xFFFFFFFF) | value << 32
        elif offset == QUEUE_DEVICE_LOW:
            q.used_addr = (q.used_addr & ~0xFFFFFFFF) | value
        elif offset == QUEUE_DEVICE_HIGH:
            q.used_addr = (q.used_addr & 0xFFFFFFFF) | value << 32

    def _write_status(self, value: int) -> None:
        d = self.device
        assert d is not None
        if value == 0:
            self._reset()
            return
        new = value & 0xFF & ~STATUS_NEEDS_RESET
        if new & STATUS_FEATURES_OK and not self.status & STATUS_FEATURES_OK:
            ok = not d.driver_features & ~d.features and d.driver_features >> VIRTIO_F_VERSION_1 & 1
            if not ok:
                new &= ~STATUS_FEATURES_OK  # the driver reads it back and gives up
        if new & STATUS_DRIVER_OK and not self.status & STATUS_DRIVER_OK:
            if not new & STATUS_FEATURES_OK:
                new &= ~STATUS_DRIVER_OK
            else:
                self.status = new | (self.status & STATUS_NEEDS_RESET)
                if not self.status & STATUS_NEEDS_RESET:
                    d.activate()
                return
        self.status = new | (self.status & STATUS_NEEDS_RESET)

    def _notify(self, index: int) -> None:
        d = self.device
        self.notifies += 1
        if d is None or not d.active or index >= len(d.queues) or self.status & STATUS_NEEDS_RESET:
            return
        try:
            d.notify(index)
        except (VirtioError, GuestMemoryError) as err:
            self.fail(err)

    def kick(self, index: int) -> None:
        """Run queue ``index`` from host context (e.g. after a backend became writable)."""
        with self.lock:
            self._notify(index)
