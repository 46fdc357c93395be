"""A pcapng writer (and a small reader for tests): Section Header, Interface Description, Enhanced Packet blocks.

Written from the pcapng specification (draft-ietf-opsawg-pcapng): little-endian blocks, each
``type, total_length, body, total_length`` padded to 32 bits; timestamps in microseconds
(the default ``if_tsresol``); link type 1 (Ethernet). ``tshark -r`` and Wireshark read it.
"""

from __future__ import annotations

import struct
import time
from typing import BinaryIO

from virtkit.errors import VirtkitError

BT_SHB = 0x0A0D0D0A
BT_IDB = 0x00000001
BT_EPB = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D
LINKTYPE_ETHERNET = 1
OPT_ENDOFOPT = 0
OPT_COMMENT = 1
IF_NAME = 2
EPB_FLAGS = 2


class PcapngError(VirtkitError):
    """A pcapng file that cannot be read."""


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _options(opts: list[tuple[int, bytes]]) -> bytes:
    if not opts:
        return b""
    out = b"".join(struct.pack("<HH", code, len(val)) + _pad(val) for code, val in opts)
    return out + struct.pack("<HH", OPT_ENDOFOPT, 0)


def _block(btype: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", btype, total) + body + struct.pack("<I", total)


class PcapngWriter:
    """Write Ethernet frames to a pcapng file with one interface; ``write(frame, outbound)`` per frame."""

    def __init__(self, path: str, ifname: str = "virtkit", snaplen: int = 65535, comment: str = "") -> None:
        self.path = path
        try:
            self.f: BinaryIO = open(path, "wb")  # noqa: SIM115 - lives as long as the capture
        except OSError as err:
            raise PcapngError(f"cannot write capture file {path!r}: {err.strerror}") from None
        self.snaplen = snaplen
        self.count = 0
        shb_opts = [(OPT_COMMENT, comment.encode())] if comment else []
        shb_opts.append((4, b"virtkit"))  # shb_userappl
        self.f.write(_block(BT_SHB, struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + _options(shb_opts)))
        self.f.write(_block(BT_IDB, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, snaplen)
                            + _options([(IF_NAME, ifname.encode())])))

    def write(self, frame: bytes, outbound: bool = False, ts: float | None = None) -> None:
        """Append one frame (direction recorded in the EPB flags: 1 inbound, 2 outbound)."""
        if self.f.closed:
            return
        t = int((time.time() if ts is None else ts) * 1_000_000)
        cap = bytes(frame[: self.snaplen])
        flags = struct.pack("<I", 2 if outbound else 1)
        body = struct.pack("<IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(cap), len(frame)) + _pad(cap)
        self.f.write(_block(BT_EPB, body + _options([(EPB_FLAGS, flags)])))
        self.count += 1

    def flush(self) -> None:
        """Push buffered blocks to the file."""
        if not self.f.closed:
            self.f.flush()

    def close(self) -> None:
        """Finish the file."""
        if not self.f.closed:
            self.f.close()


def read(path: str) -> list[tuple[int, bytes]]:
    """Read a little-endian pcapng file written by :class:`PcapngWriter`: ``[(timestamp_us, frame)]``."""
    try:
        data = open(path, "rb").read()
    except OSError as err:
        raise PcapngError(f"cannot read {path!r}: {err.strerror}") from None
    out: list[tuple[int, bytes]] = []
    off = 0
    while off < len(data):
        if off + 12 > len(data):
            raise PcapngError(f"{path}: truncated block at offset {off}")
        btype, total = struct.unpack_from("<II", data, off)
        if btype == BT_SHB and struct.unpack_from("<I", data, off + 8)[0] != BYTE_ORDER_MAGIC:
            raise PcapngError(f"{path}: not a little-endian pcapng file")
        if total < 12 or total % 4 or off + total > len(data):
            raise PcapngError(f"{path}: bad block length {total} at offset {off}")
        if btype == BT_EPB:
            _, hi, lo, caplen, _ = struct.unpack_from("<IIIII", data, off + 8)
            if 28 + caplen > total:
                raise PcapngError(f"{path}: packet longer than its block at offset {off}")
            out.append(((hi << 32) | lo, data[off + 28: off + 28 + caplen]))
        off += total
    return out
