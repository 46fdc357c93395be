"""virtio-net (over a socketpair link and a real TAP), virtio-rng and virtio-console."""

import os
import socket
import subprocess
import time

import pytest

from tests.helpers import require_root, require_tool
from tests.helpers.netlink import SocketLink
from tests.helpers.virtio_driver import RAM_BASE, Driver
from virtkit.devices.virtio import mmio as M
from virtkit.devices.virtio.console import VirtioConsole
from virtkit.devices.virtio.mmio import MmioTransport
from virtkit.devices.virtio.net import HDR_LEN, VirtioNet
from virtkit.devices.virtio.rng import VirtioRng
from virtkit.errors import ConfigError
from virtkit.machine.config import parse_mac
from virtkit.machine.memory import GuestMemory
from virtkit.network.tap import Tap

FRAME = bytes.fromhex("ffffffffffff525400123456") + b"\x08\x06" + b"payload!" * 8


def make_net():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    mem = GuestMemory(1 << 20, RAM_BASE)
    dev = VirtioNet(mem, SocketLink(a), mac=parse_mac("52:54:00:12:34:56"))
    d = Driver(mem, MmioTransport(dev))
    d.setup(2)
    return dev, d, b


def test_net_config_mac_and_link():
    dev, d, _ = make_net()
    mac = bytes(d.t.read(M.CONFIG + i, 1) for i in range(6))
    assert mac == bytes.fromhex("525400123456")
    assert d.t.read(M.CONFIG + 6, 2) == 1  # link up


def test_net_transmit_strips_header():
    dev, d, peer = make_net()
    d.add(1, [bytes(HDR_LEN), FRAME[:20], FRAME[20:]], [])
    d.kick(1)
    assert peer.recv(65536) == FRAME
    assert d.used(1) and dev.stats()["tx_frames"] == 1


def test_net_announce_is_a_rarp_request_from_its_mac():
    """After a migration or a restore the NIC announces its MAC on the wire (QEMU's announce-self format)."""
    import struct

    dev, _, peer = make_net()
    assert dev.announce()
    f = peer.recv(65536)
    mac = bytes.fromhex("525400123456")
    assert len(f) == 60 and f[:6] == b"\xff" * 6 and f[6:12] == mac and f[12:14] == b"\x80\x35"
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", f[14:22])
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 3)  # Ethernet/IPv4, "reverse request"
    assert f[22:28] == mac and f[32:38] == mac
    peer.close()  # a backend that refuses: announce says so, nothing raises
    assert not dev.announce()


def test_net_receive_with_and_without_buffers():
    dev, d, peer = make_net()
    peer.send(FRAME)
    dev.poll_backend()  # no buffers yet: backlog
    assert dev.stats()["rx_frames"] == 0
    head, ins = d.add(0, [], [2048])
    d.kick(0)  # new buffers deliver the backlog
    used = d.used(0)
    assert used == [(head, HDR_LEN + len(FRAME))]
    got = d.mem.read(ins[0], HDR_LEN + len(FRAME))
    assert got[HDR_LEN:] == FRAME and got[10:12] == b"\x01\x00"  # num_buffers = 1
    # a buffer too small drops the frame but returns the buffer
    head, _ = d.add(0, [], [20])
    peer.send(FRAME)
    dev.poll_backend()
    assert d.used(0) == [(head, 0)] and dev.stats()["rx_dropped"] == 1


def test_net_backlog_is_bounded():
    dev, d, peer = make_net()
    for _ in range(300):
        dev.receive(FRAME)
    assert dev.stats()["rx_dropped"] == 300 - 256


def test_bad_mac_strings():
    for bad in ("", "52:54:00:12:34", "zz:54:00:12:34:56", "01:00:5e:00:00:01", "5254.0012.3456"):
        with pytest.raises(ConfigError):
            parse_mac(bad)


def test_net_over_real_tap():
    require_root()
    require_tool("ip")
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("needs /dev/net/tun")
    name = f"vktest{os.getpid() % 10000}"
    tap = Tap(name)
    try:
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        mem = GuestMemory(1 << 20, RAM_BASE)
        dev = VirtioNet(mem, tap)
        d = Driver(mem, MmioTransport(dev))
        d.setup(2)
        for _ in range(8):
            d.add(0, [], [2048])
        d.kick(0)
        # the host's IPv6 stack sends router solicitations / MLD on a fresh link; wait for any frame
        deadline = time.monotonic() + 10
        while not dev.stats()["rx_frames"] and time.monotonic() < deadline:
            dev.poll_backend()
            time.sleep(0.1)
        if not dev.stats()["rx_frames"]:
            pytest.skip("host sent no frame on the fresh TAP (IPv6 disabled?)")
        (head, n), *_ = d.used(0)
        assert n > HDR_LEN + 14
        # and a frame the guest transmits shows up on the host interface counters
        d.add(1, [bytes(HDR_LEN) + FRAME], [])
        d.kick(1)
        rx = int(open(f"/sys/class/net/{name}/statistics/rx_packets").read())
        assert rx >= 1
    finally:
        tap.close()


def test_rng_fills_buffers():
    mem = GuestMemory(1 << 20, RAM_BASE)
    dev = VirtioRng(mem)
    d = Driver(mem, MmioTransport(dev))
    d.setup(1)
    assert d.r(M.DEVICE_ID) == 4
    head, ins = d.add(0, [], [64, 64])
    d.kick(0)
    assert d.used(0) == [(head, 128)]
    assert mem.read(ins[0], 64) != mem.read(ins[1], 64)
    assert dev.stats()["bytes"] == 128


def test_console_both_directions_nothing_lost():
    mem = GuestMemory(1 << 20, RAM_BASE)
    out = bytearray()
    dev = VirtioConsole(mem, out.extend)
    d = Driver(mem, MmioTransport(dev))
    d.setup(2)
    assert d.r(M.DEVICE_ID) == 3
    d.add(1, [b"hello ", b"world"], [])
    d.kick(1)
    assert bytes(out) == b"hello world"
    dev.feed(b"typed before buffers")
    head, ins = d.add(0, [], [8])
    d.kick(0)
    assert d.used(0) == [(head, 8)] and mem.read(ins[0], 8) == b"typed be"
    head, ins = d.add(0, [], [64])
    d.kick(0)
    assert d.used(0) == [(head, 12)] and mem.read(ins[0], 12) == b"fore buffers"
