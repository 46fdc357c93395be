"""A Linux TAP device as a net backend (``/dev/net/tun``, IFF_TAP | IFF_NO_PI, optionally IFF_VNET_HDR).

With ``vnet_hdr=True`` every frame read or written is preceded by a 10-byte virtio-net header and
checksum/TSO offloads are enabled (see :mod:`virtkit.network.offload`); the plain ``send``/``recv``
of this class then carry that header too.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Callable

from virtkit.errors import VirtkitError

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04


class TapError(VirtkitError):
    """The TAP device cannot be opened (no /dev/net/tun, no permission, bad name)."""


class Tap:
    """One TAP interface; frames in and out carry no extra header."""

    def __init__(self, name: str, vnet_hdr: bool = False) -> None:
        if not name or len(name.encode()) > 15 or "/" in name or " " in name:
            raise TapError(f"bad TAP interface name {name!r} (1-15 characters, no '/' or spaces)")
        try:
            self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        except OSError as err:
            raise TapError(f"cannot open /dev/net/tun: {err.strerror}") from None
        try:
            flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
            ifr = struct.pack("16sH22x", name.encode(), flags)
            res = fcntl.ioctl(self.fd, TUNSETIFF, ifr)
            if vnet_hdr:
                # frames carry a 10-byte virtio-net header; the host may hand over partial checksums and TSO
                fcntl.ioctl(self.fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        except OSError as err:
            os.close(self.fd)
            raise TapError(f"cannot create TAP {name!r}: {err.strerror}") from None
        self.name = res[:16].rstrip(b"\0").decode()
        self._receiver: Callable[[bytes], None] | None = None

    def send(self, frame: bytes | memoryview) -> None:
        try:
            os.write(self.fd, frame)
        except BlockingIOError:
            pass  # host side not draining: drop, like a full NIC queue

    def recv(self) -> bytes | None:
        try:
            return os.read(self.fd, 65536)
        except BlockingIOError:
            return None

    def fileno(self) -> int:
        return self.fd

    def set_receiver(self, callback: Callable[[bytes], None] | None) -> None:
        self._receiver = callback

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
