"""virtio-blk over a real raw image file, driven through virtio-mmio like the Linux driver."""

import struct

import pytest

from tests.helpers.virtio_driver import RAM_BASE, Driver
from virtkit.devices.virtio import blk as B
from virtkit.devices.virtio import mmio as M
from virtkit.devices.virtio.blk import VirtioBlk
from virtkit.devices.virtio.mmio import MmioTransport
from virtkit.machine.memory import GuestMemory
from virtkit.storage.backend import RawFile

SECTORS = 64


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "disk.img"
    p.write_bytes(bytes(range(256)) * (SECTORS * 2))
    return p


def make(image, read_only=False):
    mem = GuestMemory(1 << 20, RAM_BASE)
    backend = RawFile(str(image), read_only=read_only)
    dev = VirtioBlk(mem, backend, serial="disk-serial-0123456789xyz")
    t = MmioTransport(dev)
    d = Driver(mem, t)
    feats = d.setup(1)
    return mem, dev, d, feats, backend


def req(d, rtype, sector, out=b"", in_len=0, split_header=False, indirect=False):
    hdr = struct.pack("<IIQ", rtype, 0, sector)
    outs = [hdr[:8], hdr[8:]] if split_header else [hdr]
    if out:
        outs.append(out)
    head, ins = d.add(0, outs, ([in_len] if in_len else []) + [1], indirect=indirect)
    d.kick(0)
    used = d.used(0)
    assert [u[0] for u in used] == [head]
    status = d.mem.read(ins[-1], 1)[0]
    data = d.mem.read(ins[0], in_len) if in_len else b""
    return status, data, used[0][1]


def test_config_and_features(image):
    mem, dev, d, feats, _ = make(image)
    assert d.r(M.DEVICE_ID) == 2 and d.r(M.VENDOR_ID) == M.VENDOR
    assert d.t.read(M.CONFIG, 4) | d.t.read(M.CONFIG + 4, 4) << 32 == SECTORS
    assert d.t.read(M.CONFIG + 12, 4) == 254  # seg_max = queue size - 2
    assert d.t.read(M.CONFIG + 20, 4) == 512
    assert feats >> B.VIRTIO_BLK_F_FLUSH & 1 and not feats >> B.VIRTIO_BLK_F_RO & 1
    assert feats >> B.VIRTIO_BLK_F_DISCARD & 1


def test_read_write_flush_roundtrip(image):
    mem, dev, d, _, backend = make(image)
    st, data, n = req(d, B.VIRTIO_BLK_T_IN, 2, in_len=1024)
    assert st == 0 and data == image.read_bytes()[1024:2048] and n == 1025
    payload = bytes([0xAB]) * 512 + bytes([0xCD]) * 512
    st, _, n = req(d, B.VIRTIO_BLK_T_OUT, 5, out=payload, split_header=True)
    assert st == 0 and n == 1
    assert req(d, B.VIRTIO_BLK_T_FLUSH, 0)[0] == 0
    assert image.read_bytes()[5 * 512 : 7 * 512] == payload
    st, data, _ = req(d, B.VIRTIO_BLK_T_IN, 5, in_len=1024, indirect=True)
    assert st == 0 and data == payload
    assert dev.stats()["write"] == 1 and dev.stats()["read"] == 2


def test_get_id(image):
    _, _, d, _, _ = make(image)
    st, data, n = req(d, B.VIRTIO_BLK_T_GET_ID, 0, in_len=20)
    assert st == 0 and data == b"disk-serial-01234567" and n == 21


def test_discard_and_write_zeroes(image):
    _, _, d, _, _ = make(image)
    seg = struct.pack("<QII", 1, 2, 0)
    assert req(d, B.VIRTIO_BLK_T_WRITE_ZEROES, 0, out=seg)[0] == 0
    assert image.read_bytes()[512:1536] == bytes(1024)
    assert req(d, B.VIRTIO_BLK_T_DISCARD, 0, out=struct.pack("<QII", 10, 1, 0))[0] == 0
    # out of range segment, bad flags, no segment at all
    assert req(d, B.VIRTIO_BLK_T_DISCARD, 0, out=struct.pack("<QII", SECTORS - 1, 2, 0))[0] == B.VIRTIO_BLK_S_IOERR
    assert req(d, B.VIRTIO_BLK_T_WRITE_ZEROES, 0, out=struct.pack("<QII", 0, 1, 0x80))[0] == B.VIRTIO_BLK_S_UNSUPP
    assert req(d, B.VIRTIO_BLK_T_DISCARD, 0, out=b"short")[0] == B.VIRTIO_BLK_S_IOERR


@pytest.mark.parametrize("sector,length", [(SECTORS, 512), (SECTORS - 1, 1024), (2**63, 512), (0, 100)])
def test_out_of_range_or_odd_length_is_ioerr(image, sector, length):
    before = image.read_bytes()
    _, _, d, _, _ = make(image)
    assert req(d, B.VIRTIO_BLK_T_IN, sector, in_len=length)[0] == B.VIRTIO_BLK_S_IOERR
    assert req(d, B.VIRTIO_BLK_T_OUT, sector, out=b"x" * length)[0] == B.VIRTIO_BLK_S_IOERR
    assert image.read_bytes() == before
    assert not d.needs_reset  # a bad request is not a protocol violation


def test_unknown_type_and_short_header(image):
    _, _, d, _, _ = make(image)
    assert req(d, 99, 0)[0] == B.VIRTIO_BLK_S_UNSUPP
    head, ins = d.add(0, [b"\x00\x00"], [1])
    d.kick(0)
    assert d.used(0) == [(head, 1)] and d.mem.read(ins[0], 1)[0] == B.VIRTIO_BLK_S_IOERR


def test_no_status_byte_needs_reset(image):
    _, _, d, _, _ = make(image)
    d.add(0, [struct.pack("<IIQ", 0, 0, 0)], [])
    d.kick(0)
    assert d.needs_reset


def test_read_only_disk(image):
    before = image.read_bytes()
    _, dev, d, feats, _ = make(image, read_only=True)
    assert feats >> B.VIRTIO_BLK_F_RO & 1 and not feats >> B.VIRTIO_BLK_F_DISCARD & 1
    assert req(d, B.VIRTIO_BLK_T_OUT, 0, out=bytes(512))[0] == B.VIRTIO_BLK_S_IOERR
    assert req(d, B.VIRTIO_BLK_T_WRITE_ZEROES, 0, out=struct.pack("<QII", 0, 1, 0))[0] == B.VIRTIO_BLK_S_IOERR
    assert req(d, B.VIRTIO_BLK_T_IN, 0, in_len=512)[0] == 0
    assert image.read_bytes() == before


def test_feature_negotiation_rejects_unknown_or_legacy(image):
    mem = GuestMemory(1 << 20, RAM_BASE)
    backend = RawFile(str(image))
    t = MmioTransport(VirtioBlk(mem, backend))
    d = Driver(mem, t)
    assert d.setup(1, features=1 << 60 | 1 << 32) == 0  # a feature the device does not offer
    assert d.setup(1, features=1 << B.VIRTIO_BLK_F_FLUSH) == 0  # no VERSION_1: legacy drivers refused
    assert d.setup(1) != 0
    backend.close()


def test_empty_slot_reads_device_id_zero():
    t = MmioTransport(None)
    assert t.read(M.MAGIC_VALUE, 4) == M.MAGIC and t.read(M.DEVICE_ID, 4) == 0
    t.write(M.STATUS, 4, 0xF)
    t.write(M.QUEUE_NOTIFY, 4, 0)
    assert t.read(M.STATUS, 4) == 0
