"""The few PC devices on port I/O a microVM needs (Firecracker's set): QEMU's ``isa-debug-exit`` (how test
kernels report), an i8042 that can only reset the machine, a CMOS real-time clock, and the POST-code
port. The 16550, the virtio devices and the interrupt controllers are the shared ones (or KVM's)."""

from __future__ import annotations

import time
from collections.abc import Callable

from virtkit.machine.state import fields, record


class DebugExit:
    """QEMU's ``isa-debug-exit``: a write of V ends the VM with exit status ``(V << 1) | 1`` (so no test
    can claim success by status 0 by accident); reads give all ones."""

    STATE_KIND = "isa-debug-exit"
    STATE_VERSION = 1

    def __init__(self, on_exit: Callable[[int], None]) -> None:
        self.on_exit = on_exit

    def read(self, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        self.on_exit(((value & 0xFF) << 1) | 1)  # (QEMU takes the written value; status codes are 8 bits)

    def save(self) -> dict:
        return record(self)

    def restore(self, state: dict) -> None:
        fields(self, state)


class I8042:
    """The keyboard controller, only as far as a reset goes: status reads as "ready, empty"; the command
    0xFE (pulse the reset line) resets the machine, as Linux's ``reboot=k`` does."""

    STATE_KIND = "i8042"
    STATE_VERSION = 1

    def __init__(self, on_reset: Callable[[], None]) -> None:
        self.on_reset = on_reset

    def read(self, offset: int, size: int) -> int:
        return 0 if offset == 4 else 0  # data 0; status: output buffer empty, input buffer empty

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 4 and value & 0xFF == 0xFE:
            self.on_reset()

    def save(self) -> dict:
        return record(self)

    def restore(self, state: dict) -> None:
        fields(self, state)


def _bcd(v: int) -> int:
    return (v // 10) << 4 | v % 10


class CmosRtc:
    """The MC146818 real-time clock and CMOS RAM on ports 0x70 (index, bit 7: NMI off) and 0x71 (data): the
    time of day in BCD from the host's clock (UTC), status registers that say "no update in progress,
    24-hour BCD", and 128 bytes of CMOS RAM (the base and extended memory sizes where a loader looks)."""

    STATE_KIND = "cmos-rtc"
    STATE_VERSION = 1

    def __init__(self, memory_size: int, clock: Callable[[], float] = time.time) -> None:
        self.index = 0
        self.clock = clock
        self.ram = bytearray(128)
        self.ram[0x0A], self.ram[0x0B], self.ram[0x0D] = 0x26, 0x02, 0x80  # 32 kHz base, 24 h BCD, power good
        ext = max(0, min(memory_size - (1 << 20), 0xFFFF << 10)) >> 10  # KiB above 1 MiB (at most 64 MiB here)
        self.ram[0x15], self.ram[0x16] = 640 & 0xFF, 640 >> 8
        self.ram[0x17], self.ram[0x18] = ext & 0xFF, ext >> 8
        self.ram[0x30], self.ram[0x31] = ext & 0xFF, ext >> 8
        above16 = max(0, memory_size - (16 << 20)) >> 16  # 64 KiB blocks above 16 MiB
        self.ram[0x34], self.ram[0x35] = above16 & 0xFF, (above16 >> 8) & 0xFF

    def read(self, offset: int, size: int) -> int:
        if offset == 0:
            return self.index
        i = self.index & 0x7F
        t = time.gmtime(self.clock())
        now = {0x00: t.tm_sec, 0x02: t.tm_min, 0x04: t.tm_hour, 0x06: (t.tm_wday + 1) % 7 + 1, 0x07: t.tm_mday,
               0x08: t.tm_mon, 0x09: t.tm_year % 100, 0x32: t.tm_year // 100}
        if i in now:
            return _bcd(now[i])
        return self.ram[i]

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.index = value & 0xFF
        elif (self.index & 0x7F) >= 0x0E or self.index & 0x7F == 0x0B:  # CMOS RAM and the mode register
            self.ram[self.index & 0x7F] = value & 0xFF

    def save(self) -> dict:
        return record(self, index=self.index, ram=self.ram.hex())

    def restore(self, state: dict) -> None:
        f = fields(self, state)
        self.index = f.int("index", 0, 255)
        ram = bytes.fromhex(f.str("ram"))
        if len(ram) == 128:
            self.ram[:] = ram


class Sink:
    """A port whose writes are dropped and reads give all ones (the POST-code port 0x80, which kernels use
    for short I/O delays)."""

    STATE_KIND = "port-sink"
    STATE_VERSION = 1

    def read(self, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        pass

    def save(self) -> dict:
        return record(self)

    def restore(self, state: dict) -> None:
        fields(self, state)
