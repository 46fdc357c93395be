"""Guest memory bounds checks and the MMIO bus."""

import pytest

from virtkit.errors import ConfigError, GuestMemoryError
from virtkit.machine.bus import Bus
from virtkit.machine.memory import GuestMemory


def test_memory_roundtrip_and_array_shares_storage():
    m = GuestMemory(1 << 20, base=0x8000_0000)
    m.write(0x8000_0010, b"hello")
    assert m.read(0x8000_0010, 5) == b"hello"
    assert bytes(m.array[0x10:0x15]) == b"hello"
    m.array[0x20] = 7
    assert m.read(0x8000_0020, 1) == b"\x07"
    m.write_u64(0x8000_0100, 0x1122334455667788)
    assert m.read_u32(0x8000_0100) == 0x55667788


@pytest.mark.parametrize("gpa,n", [(0x7FFF_FFFF, 1), (0x8010_0000, 1), (0x800F_FFFF, 2), (0x8000_0000, -1),
                                   (0, 8), (2**64 - 1, 2)])
def test_memory_rejects_out_of_ram(gpa, n):
    m = GuestMemory(1 << 20, base=0x8000_0000)
    with pytest.raises(GuestMemoryError):
        m.read(gpa, n) if n >= 0 else m.view(gpa, n)


def test_memory_bad_size():
    with pytest.raises(GuestMemoryError):
        GuestMemory(1000)


class Reg:
    def __init__(self):
        self.last = None

    def read(self, offset, size):
        return offset + size

    def write(self, offset, size, value):
        self.last = (offset, size, value)


def test_bus_dispatch_and_overlap():
    b = Bus()
    d = Reg()
    b.register(0x1000_0000, 0x100, d, "uart")
    assert b.read(0x1000_0010, 4) == 0x14
    b.write(0x1000_0004, 1, 0x41)
    assert d.last == (4, 1, 0x41)
    assert b.read(0x2000_0000, 4) == 0 and b.unhandled == 1
    with pytest.raises(ConfigError):
        b.register(0x1000_0080, 0x100, Reg(), "clash")
