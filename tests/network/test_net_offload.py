"""TSO super-frames and partial checksums (virtio-net header) turned into real frames in software."""

from __future__ import annotations

import ipaddress
import os
import struct

from virtkit.network import offload
from virtkit.network.offload import GsoFrame, finish, sum16, wrap

ETH = bytes.fromhex("020000000002" "020000000001")


def tcp_super(v6: bool, payload: bytes, mss: int, flags: int = 0x18) -> GsoFrame:
    src = ipaddress.ip_address("fd00::1" if v6 else "10.0.0.1").packed
    dst = ipaddress.ip_address("fd00::2" if v6 else "10.0.0.2").packed
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 80, 1000, 77, 0x50, flags, 512, 0, 0))
    seg_len = len(tcp) + len(payload)
    if v6:
        ip = struct.pack("!IHBB16s16s", 0x60000000, seg_len, 6, 64, src, dst)
        pseudo = src + dst + struct.pack("!IxxxB", seg_len, 6)
        et = b"\x86\xdd"
    else:
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + seg_len, 500, 0x4000, 64, 6, 0, src, dst))
        et = b"\x08\x00"
        pseudo = src + dst + struct.pack("!xBH", 6, seg_len)
    # what the kernel leaves for the device: the pseudo-header sum, not inverted, in the checksum field
    s = sum16(pseudo)
    struct.pack_into("!H", tcp, 16, s)
    frame = ETH + et + bytes(ip) + bytes(tcp) + payload
    csum_start = 14 + len(ip)
    hdr = struct.pack("<BBHHHH", offload.F_NEEDS_CSUM, offload.GSO_TCPV6 if v6 else offload.GSO_TCPV4,
                      csum_start + 20, mss, csum_start, 16)
    return wrap(hdr + frame)


def tcp_ok(seg: bytes, v6: bool) -> tuple[int, int, bytes]:
    """Validate a segment's IP and TCP checksums; return (seq, flags, payload)."""
    if v6:
        ip_len, plen = 40, struct.unpack_from("!H", seg, 18)[0]
        pseudo = seg[22:54] + struct.pack("!IxxxB", plen, 6)
        l4 = seg[54:54 + plen]
    else:
        ip_len = 20
        assert ~sum16(seg[14:34]) & 0xFFFF == 0  # IPv4 header checksum
        total = struct.unpack_from("!H", seg, 16)[0]
        l4 = seg[34:14 + total]
        pseudo = seg[26:34] + struct.pack("!xBH", 6, len(l4))
    assert len(seg) == 14 + ip_len + len(l4)
    total = sum16(pseudo) + sum16(l4)
    total = (total & 0xFFFF) + (total >> 16)
    assert total == 0xFFFF  # a correct checksum makes the ones'-complement sum all ones
    seq = struct.unpack_from("!I", l4, 4)[0]
    return seq, l4[13], l4[20:]


def test_plain_frames_pass_untouched():
    f = ETH + b"\x08\x00" + bytes(50)
    assert wrap(bytes(10) + f) == f and type(wrap(bytes(10) + f)) is bytes
    assert finish(f) == [f]


def test_tso_v4_and_v6_segmentation():
    for v6 in (False, True):
        payload = os.urandom(10000)
        segs = finish(tcp_super(v6, payload, 1448, flags=0x19))  # PSH|FIN|ACK... (0x19 = FIN|PSH|ACK)
        assert len(segs) == 7
        got = b""
        for i, s in enumerate(segs):
            seq, flags, data = tcp_ok(s, v6)
            assert seq == 1000 + len(got)
            assert len(data) == (1448 if i < 6 else 10000 - 6 * 1448)
            assert (flags & 0x09 != 0) == (i == 6)  # FIN/PSH only on the last
            got += data
        assert got == payload


def test_partial_checksum_completed():
    payload = os.urandom(333)
    segs = finish(tcp_super(False, payload, 1448))  # fits in one segment
    assert len(segs) == 1
    _, _, data = tcp_ok(segs[0], False)
    assert data == payload


def test_malformed_gso_frames_do_not_crash():
    for junk in (b"\x01\x01" + bytes(8) + ETH + b"\x08\x00" + bytes(10),
                 b"\x01\x04" + struct.pack("<HHHH", 0, 100, 9000, 9000) + ETH + b"\x86\xdd" + bytes(30),
                 b"\x00\x01" + struct.pack("<HHHH", 60, 0, 0, 0) + ETH + b"\x08\x00" + os.urandom(100)):
        out = finish(wrap(junk))
        assert all(isinstance(f, bytes) for f in out)
