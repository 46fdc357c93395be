"""Address maps from guest-physical MMIO (or port-I/O) addresses to device models.

A device model implements ``read(offset, size) -> int`` and ``write(offset, size, value)``;
offsets are relative to the region's base. Accesses that hit no device read as zero and
are counted, as on real buses without a responder (the engine decides whether to raise
an access fault instead: see :meth:`Bus.find`).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Protocol

from virtkit.errors import ConfigError


class MmioDevice(Protocol):
    """What the bus calls: register reads and writes at an offset inside the device."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


@dataclass(frozen=True)
class Region:
    base: int
    size: int
    device: MmioDevice
    name: str


class Bus:
    """A sorted, non-overlapping set of regions."""

    def __init__(self) -> None:
        self._bases: list[int] = []
        self._regions: list[Region] = []
        self.unhandled = 0

    def register(self, base: int, size: int, device: MmioDevice, name: str = "") -> None:
        """Map ``device`` at ``[base, base+size)``; overlapping regions are a configuration error."""
        for r in self._regions:
            if base < r.base + r.size and r.base < base + size:
                raise ConfigError(f"MMIO region {name or device!r} at {base:#x} overlaps {r.name} at {r.base:#x}")
        i = bisect.bisect(self._bases, base)
        self._bases.insert(i, base)
        self._regions.insert(i, Region(base, size, device, name or type(device).__name__))

    def find(self, addr: int) -> Region | None:
        """The region containing ``addr``, or None."""
        i = bisect.bisect(self._bases, addr) - 1
        if i >= 0:
            r = self._regions[i]
            if addr < r.base + r.size:
                return r
        return None

    def read(self, addr: int, size: int) -> int:
        r = self.find(addr)
        if r is None:
            self.unhandled += 1
            return 0
        return r.device.read(addr - r.base, size)

    def write(self, addr: int, size: int, value: int) -> None:
        r = self.find(addr)
        if r is None:
            self.unhandled += 1
            return
        r.device.write(addr - r.base, size, value)

    @property
    def regions(self) -> list[Region]:
        return list(self._regions)
