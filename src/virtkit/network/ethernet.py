"""Ethernet frames and IEEE 802.1Q / 802.1ad tags: parse, push, pop.

Frames here carry no preamble and no FCS (what TAP devices, AF_PACKET sockets and UDP links
deliver). A tag is the 4 bytes after the source MAC: TPID (0x8100 C-tag, 0x88a8 S-tag) and the
TCI = PCP (3 bits) | DEI (1 bit) | VID (12 bits). VID 0 marks a priority-tagged frame, VID 4095
is reserved and never forwarded.
"""

from __future__ import annotations

from dataclasses import dataclass

from virtkit.errors import VirtkitError

TPID_8021Q = 0x8100
TPID_8021AD = 0x88A8
ETH_HLEN = 14
TAG_LEN = 4
VID_PRIORITY = 0
VID_RESERVED = 4095
MAX_VID = 4094
DEFAULT_MTU = 1500
BROADCAST = b"\xff" * 6

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_IPV6 = 0x86DD


class FrameError(VirtkitError):
    """A frame the switch must drop; ``reason`` is the drop counter it is charged to."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Frame:
    """A parsed frame: addresses, the outer tag (if any) and where the untagged rest starts."""

    dst: bytes
    src: bytes
    tagged: bool
    tpid: int
    pcp: int
    dei: int
    vid: int
    ethertype: int
    #: the frame with the outer tag removed (what an access port sends)
    untagged: bytes

    @property
    def priority_tagged(self) -> bool:
        """True for a tag that only carries a priority (VID 0)."""
        return self.tagged and self.vid == VID_PRIORITY


def parse(frame: bytes, tpid: int = TPID_8021Q, mtu: int = DEFAULT_MTU) -> Frame:
    """Parse one frame whose outer tag (if any) uses ``tpid``; raise :class:`FrameError` to drop it."""
    n = len(frame)
    if n < ETH_HLEN:
        raise FrameError("runt", f"runt frame: {n} bytes, an Ethernet header needs {ETH_HLEN}")
    etype = (frame[12] << 8) | frame[13]
    if etype == tpid:
        if n < ETH_HLEN + TAG_LEN:
            raise FrameError("bad_tag", f"truncated 802.1Q tag: frame of {n} bytes")
        tci = (frame[14] << 8) | frame[15]
        vid = tci & 0xFFF
        if vid == VID_RESERVED:
            raise FrameError("reserved_vid", "VID 4095 is reserved")
        inner = (frame[16] << 8) | frame[17]
        if n - ETH_HLEN - TAG_LEN > mtu + (TAG_LEN if inner in (TPID_8021Q, TPID_8021AD) else 0):
            raise FrameError("oversize", f"oversize frame: {n} bytes (MTU {mtu})")
        return Frame(frame[0:6], frame[6:12], True, tpid, tci >> 13, (tci >> 12) & 1, vid, inner,
                     frame[:12] + frame[16:])
    if n - ETH_HLEN > mtu + (TAG_LEN if etype in (TPID_8021Q, TPID_8021AD) else 0):
        raise FrameError("oversize", f"oversize frame: {n} bytes (MTU {mtu})")
    return Frame(frame[0:6], frame[6:12], False, 0, 0, 0, 0, etype, frame)


def push_tag(untagged: bytes, vid: int, pcp: int = 0, dei: int = 0, tpid: int = TPID_8021Q) -> bytes:
    """Insert a tag after the source MAC (the inverse of :func:`pop_tag`)."""
    tci = ((pcp & 7) << 13) | ((dei & 1) << 12) | (vid & 0xFFF)
    return b"".join((untagged[:12], bytes((tpid >> 8, tpid & 0xFF, tci >> 8, tci & 0xFF)), untagged[12:]))


def pop_tag(frame: bytes) -> bytes:
    """Remove the outer tag of a tagged frame."""
    return frame[:12] + frame[16:]


def mac_str(mac: bytes) -> str:
    """``aa:bb:cc:dd:ee:ff`` form of a 6-byte MAC."""
    return ":".join(f"{b:02x}" for b in mac)


def build(dst: bytes, src: bytes, ethertype: int, payload: bytes = b"", vid: int | None = None,
          pcp: int = 0, dei: int = 0, tpid: int = TPID_8021Q) -> bytes:
    """Build a frame (tagged when ``vid`` is given); used by tests and the benchmark generator."""
    frame = dst + src + ethertype.to_bytes(2, "big") + payload
    return frame if vid is None else push_tag(frame, vid, pcp, dei, tpid)
