"""The VM generation ID (``microsoft,vmgenid``): 16 bytes the guest reads that change whenever the VM may
have been duplicated or rewound (a clone, a snapshot restored), never on a live migration.

A guest that caches secrets or random state (the kernel's entropy pool, a TLS session cache, a UUID
generator) reads the ID, and when it changes it knows it is a copy and must reseed: Hyper-V's
VMGenID, QEMU's ``-device vmgenid``. On this board the ID is a 4 KiB MMIO window holding the 16 bytes
(little-endian, as the device-tree binding ``microsoft,vmgenid`` describes; Linux reads it there
from 6.10 on) and an edge on its interrupt line announces a new one. Older guests can still read it
(``devmem 0x102000 64``).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from virtkit.machine.state import StateError, fields, record

SIZE = 16


class VmGenId:
    """The generation ID window; :meth:`new_generation` draws a new ID and pulses the interrupt."""

    STATE_KIND = "vmgenid"
    STATE_VERSION = 1
    STATE_OPTIONAL = True  # a snapshot from before this device existed restores with a fresh ID

    def __init__(self, irq: Callable[[bool], None] | None = None) -> None:
        self.irq = irq or (lambda level: None)
        self.guid = os.urandom(SIZE)
        self.generations = 0  # changes seen by this process (for messages and tests)

    def save(self) -> dict:
        """The current ID (a migrated guest keeps it: it is the same VM, not a copy)."""
        return record(self, guid=self.guid.hex())

    def restore(self, state: dict) -> None:
        """Take a saved ID (a clone or a restored snapshot then calls :meth:`new_generation`)."""
        f = fields(self, state)
        guid = f.bytes("guid", SIZE)
        if len(guid) != SIZE:
            raise StateError(f"vmgenid state: the ID has {len(guid)} bytes, not {SIZE}")
        self.guid = guid

    def new_generation(self) -> bytes:
        """A new random ID, announced by an edge on the interrupt line; returns it."""
        self.guid = os.urandom(SIZE)
        self.generations += 1
        self.irq(True)
        self.irq(False)
        return self.guid

    def read(self, offset: int, size: int) -> int:
        """Bytes of the ID (any width, little-endian); zeros past it."""
        if offset >= SIZE:
            return 0
        return int.from_bytes(self.guid[offset:offset + size].ljust(size, b"\0"), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        """The window is read-only: writes are ignored."""
