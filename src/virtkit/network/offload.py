"""TAP offloads: frames that carry a virtio-net header (checksum still to do, TCP segmentation still to do).

With ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD`` a TAP hands the switch whole 64 KiB TCP segments
(GSO) and frames whose checksum is left partial, exactly like virtio-net does for a guest. Between
two such TAP ports the switch forwards them untouched (one read and one write per 64 KiB instead
of per 1500 bytes). Any other port gets real frames: :func:`finish` completes the checksum and
cuts TCP segments at ``gso_size``, the way a NIC does with TSO (Linux ``skb_segment``).

The header (virtio spec 5.1.6, little-endian on x86): ``flags u8, gso_type u8, hdr_len u16,
gso_size u16, csum_start u16, csum_offset u16``.
"""

from __future__ import annotations

import struct
import sys

VNET_HDR_LEN = 10
ZERO_HDR = bytes(VNET_HDR_LEN)
F_NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6 = 0, 1, 3, 4
GSO_ECN = 0x80
_HDR = struct.Struct("<BBHHHH")
_LITTLE = sys.byteorder == "little"


class GsoFrame(bytes):
    """A frame plus the virtio-net header it came with (``vnet``); plain ``bytes`` frames have none."""

    vnet: bytes


def wrap(data: bytes) -> bytes:
    """Split what a vnet-header TAP read returned: a plain frame, or a :class:`GsoFrame` needing work."""
    if data[:2] == b"\0\0" or (data[0] & F_NEEDS_CSUM == 0 and data[1] == GSO_NONE):
        return data[VNET_HDR_LEN:]
    f = GsoFrame(data[VNET_HDR_LEN:])
    f.vnet = data[:VNET_HDR_LEN]
    return f


def sum16(data: bytes | memoryview) -> int:
    """Ones'-complement sum of big-endian 16-bit words (folded), as used by IP/TCP/UDP checksums."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    s = sum(memoryview(data).cast("H"))  # native (little-endian) words: byte-swap the folded result
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ((s & 0xFF) << 8) | (s >> 8) if _LITTLE else s


def _csum(*parts: bytes) -> int:
    s = 0
    for p in parts:
        s += sum16(p)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def finish(frame: bytes) -> list[bytes]:
    """Plain Ethernet frames for ``frame``: itself, its checksum completed, or its TCP segments."""
    vnet = getattr(frame, "vnet", None)
    if vnet is None:
        return [frame]
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = _HDR.unpack(vnet)
    data = bytes(frame)
    kind = gso_type & ~GSO_ECN
    if kind in (GSO_TCPV4, GSO_TCPV6) and gso_size:
        segs = _segment_tcp(data, kind == GSO_TCPV6, gso_size)
        if segs is not None:
            return segs
    if flags & F_NEEDS_CSUM and csum_start + csum_offset + 2 <= len(data):
        buf = bytearray(data)
        pos = csum_start + csum_offset
        # the field holds the pseudo-header sum; summing from csum_start includes it
        struct.pack_into("!H", buf, pos, ~sum16(buf[csum_start:]) & 0xFFFF)
        return [bytes(buf)]
    return [data]


def _segment_tcp(data: bytes, v6: bool, mss: int) -> list[bytes] | None:
    """Cut one TCP super-frame into ``mss``-sized segments with correct lengths, IDs, sequence and checksums."""
    l3 = 14
    if v6:
        if len(data) < l3 + 40 or data[l3 + 6] != 6:
            return None
        ip_len = 40
        src, dst = data[l3 + 8: l3 + 24], data[l3 + 24: l3 + 40]
    else:
        if len(data) < l3 + 20 or data[l3 + 9] != 6:
            return None
        ip_len = (data[l3] & 0x0F) * 4
        src, dst = data[l3 + 12: l3 + 16], data[l3 + 16: l3 + 20]
    l4 = l3 + ip_len
    if len(data) < l4 + 20:
        return None
    tcp_len = (data[l4 + 12] >> 4) * 4
    body = l4 + tcp_len
    payload = memoryview(data)[body:]
    seq0 = struct.unpack_from("!I", data, l4 + 4)[0]
    ip_id = struct.unpack_from("!H", data, l3 + 4)[0] if not v6 else 0
    tcp_flags = data[l4 + 13]
    n = max(1, -(-len(payload) // mss))
    out = []
    eth = data[:l3]
    for i in range(n):
        chunk = payload[i * mss: (i + 1) * mss]
        ip = bytearray(data[l3:l4])
        tcp = bytearray(data[l4:body])
        seg_l4 = tcp_len + len(chunk)
        if v6:
            struct.pack_into("!H", ip, 4, seg_l4)
            pseudo = src + dst + struct.pack("!IxxxB", seg_l4, 6)
        else:
            struct.pack_into("!HH", ip, 2, ip_len + seg_l4, (ip_id + i) & 0xFFFF)
            struct.pack_into("!H", ip, 10, 0)
            struct.pack_into("!H", ip, 10, _csum(ip))
            pseudo = src + dst + struct.pack("!xBH", 6, seg_l4)
        struct.pack_into("!I", tcp, 4, (seq0 + i * mss) & 0xFFFFFFFF)
        f = tcp_flags
        if i < n - 1:
            f &= ~0x09  # FIN and PSH only on the last segment
        if i > 0:
            f &= ~0x80  # CWR only on the first
        tcp[13] = f
        struct.pack_into("!H", tcp, 16, 0)
        struct.pack_into("!H", tcp, 16, _csum(pseudo, tcp, chunk))
        out.append(b"".join((eth, ip, tcp, chunk)))
    return out
