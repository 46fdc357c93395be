"""The emulated OpenCores Ethernet MAC (``devices/ethoc.py``): registers, buffer descriptors, DMA, the PHY,
hostile descriptors, state. The Linux driver talking to it is in tests/integration/test_legacy_nic.py."""

from __future__ import annotations

import json
import struct
import zlib

import pytest

from virtkit.devices.ethoc import (
    BD_BASE,
    INT_MASK,
    INT_SOURCE,
    MAC_ADDR0,
    MAC_ADDR1,
    MIIADDRESS,
    MIICOMMAND,
    MIIRX_DATA,
    MODER,
    TX_BD_NUM,
    Ethoc,
)
from virtkit.machine.memory import GuestMemory
from virtkit.machine.state import StateError

RAM = 0x8000_0000
MAC = bytes.fromhex("525400123456")


class Wire:
    """The far end of the cable: frames the NIC sent, and a receiver the NIC registers."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.receiver = None

    def send(self, frame) -> None:
        self.sent.append(bytes(frame))

    def recv(self):
        return None

    def fileno(self) -> int:
        return -1

    def set_receiver(self, cb) -> None:
        self.receiver = cb

    def close(self) -> None:
        pass


def nic():
    mem = GuestMemory(1 << 20, RAM)
    wire = Wire()
    levels: list[bool] = []
    dev = Ethoc(mem, wire, MAC, levels.append)
    return dev, mem, wire, levels


def bd(dev: Ethoc, i: int, stat: int, addr: int) -> None:
    dev.write(BD_BASE + 8 * i + 4, 4, addr)
    dev.write(BD_BASE + 8 * i, 4, stat)


def test_mac_phy_and_interrupt_registers():
    dev, _, _, levels = nic()
    assert dev.read(MAC_ADDR1, 4) == 0x5254 and dev.read(MAC_ADDR0, 4) == 0x00123456
    dev.write(MIIADDRESS, 4, 1 | (1 << 8))  # PHY 1, BMSR
    dev.write(MIICOMMAND, 4, 2)
    assert dev.read(MIIRX_DATA, 4) & 0x24 == 0x24  # link up, autonegotiation complete
    dev.write(MIIADDRESS, 4, 5 | (2 << 8))  # no PHY at address 5
    dev.write(MIICOMMAND, 4, 2)
    assert dev.read(MIIRX_DATA, 4) == 0xFFFF
    assert dev.read(TX_BD_NUM, 4) == 0x40 and dev.read(0x7FC, 1) == 0
    dev.write(INT_MASK, 4, 0x7F)
    dev.regs[INT_SOURCE // 4] = 5
    dev.write(INT_MASK, 4, 0x7F)
    assert levels[-1] is True
    dev.write(INT_SOURCE, 4, 1)  # write 1 to clear
    assert dev.read(INT_SOURCE, 4) == 4 and levels[-1] is True
    dev.write(INT_SOURCE, 4, 4)
    assert levels[-1] is False


def test_transmit_and_receive_by_dma():
    dev, mem, wire, levels = nic()
    dev.write(TX_BD_NUM, 4, 2)
    dev.write(INT_MASK, 4, 0x7F)
    frame = bytes(range(6)) + MAC + b"\x08\x00" + b"payload"
    mem.write(RAM + 0x1000, frame)
    dev.write(MODER, 4, 0xA003)  # PAD | CRC | TXEN | RXEN
    bd(dev, 0, (len(frame) << 16) | (1 << 15) | (1 << 14), RAM + 0x1000)  # READY | IRQ
    assert wire.sent == [frame.ljust(60, b"\0")]  # padded to the minimum frame
    assert dev.read(BD_BASE, 4) & (1 << 15) == 0 and dev.read(INT_SOURCE, 4) & 1 and levels[-1]
    bd(dev, 2, (1 << 15) | (1 << 14) | (1 << 13), RAM + 0x2000)  # the first RX BD: EMPTY | IRQ | WRAP
    wire.receiver(b"\xaa" * 64)
    stat = dev.read(BD_BASE + 16, 4)
    assert stat >> 16 == 68 and not stat & (1 << 15)  # length counts the CRC the hardware stores
    assert mem.read(RAM + 0x2000, 68) == b"\xaa" * 64 + struct.pack("<I", zlib.crc32(b"\xaa" * 64))
    assert dev.read(INT_SOURCE, 4) & 4
    wire.receiver(b"\xbb" * 64)  # no empty BD: the frame waits for one
    assert dev.stats()["rx_frames"] == 1 and len(dev.backlog) == 1
    bd(dev, 2, (1 << 15) | (1 << 14) | (1 << 13), RAM + 0x2000)
    assert mem.read(RAM + 0x2000, 4) == b"\xbb" * 4 and dev.stats()["rx_frames"] == 2


def test_hostile_descriptors_get_errors_never_host_memory():
    dev, mem, wire, _ = nic()
    dev.write(TX_BD_NUM, 4, 1)
    dev.write(MODER, 4, 3)
    for addr, length in ((0x1000, 64), (RAM + (1 << 20) - 8, 64), (RAM, 0xFFFF), (RAM, 3), ((1 << 32) - 4, 64)):
        bd(dev, 0, (length << 16) | (1 << 15) | (1 << 13), addr)
    assert wire.sent == [] and dev.stats()["tx_dropped"] == 5 and dev.read(INT_SOURCE, 4) & 2
    bd(dev, 1, (1 << 15) | (1 << 13), 0xFFFF_FFF0)  # an RX buffer outside RAM
    wire.receiver(b"\xcc" * 100)
    assert dev.stats()["rx_dropped"] == 1 and dev.read(INT_SOURCE, 4) & 8
    wire.receiver(b"\xdd" * 5000)  # larger than any buffer: dropped at the door
    assert dev.stats()["rx_dropped"] == 2
    dev.write(TX_BD_NUM, 4, 0xFFFF)  # more TX BDs than there are: clamped
    assert dev.read(TX_BD_NUM, 4) == 128
    for off in range(0, 0x1000, 4):  # every register and BD with garbage: no exception
        dev.write(off, 4, 0xFFFF_FFFF)
        dev.read(off, 4)


def test_state_round_trip_and_bad_state():
    dev, mem, wire, _ = nic()
    dev.write(TX_BD_NUM, 4, 8)
    bd(dev, 9, (1 << 15), RAM + 0x3000)
    dev.write(MODER, 4, 0xA002)  # RX off: a frame waits in the backlog
    wire.receiver(b"\x11" * 60)
    saved = json.loads(json.dumps(dev.save()))
    other, *_ = nic()
    other.restore(saved)
    assert other.save() == saved and other.backlog == [b"\x11" * 60]
    with pytest.raises(StateError):
        other.restore({**saved, "tx_cur": 500})
    with pytest.raises(StateError):
        other.restore({**saved, "phy": [[40, 1]]})


def test_nic_model_flag():
    from virtkit.errors import ConfigError
    from virtkit.machine.config import NicConfig

    n = NicConfig.parse("switch:lab,vlan=7,model=ethoc")
    assert n.model == "ethoc" and NicConfig.parse(n.to_flag()) == n
    assert NicConfig.parse("tap:tap0").model == "virtio" and "model" not in NicConfig.parse("tap:tap0").to_flag()
    with pytest.raises(ConfigError, match="'e1000' is not one of virtio, ethoc"):
        NicConfig.parse("switch:lab,model=e1000")
