"""A Linux TAP device as a net backend (``/dev/net/tun``, IFF_TAP | IFF_NO_PI, optionally IFF_VNET_HDR).

Opened multi-queue where it can be (``IFF_MULTI_QUEUE``; a TAP made without it by ``ip tuntap add`` is
opened plainly), so that a live migration can hand it over on one host: the target opens a second
queue *detached* (it receives nothing), and at the switch-over the source detaches its queue and the
target attaches its own. The device, with its bridge and addresses, lives on throughout.

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
IFF_MULTI_QUEUE = 0x0100
IFF_ATTACH_QUEUE, IFF_DETACH_QUEUE = 0x0200, 0x0400
TUNSETQUEUE = 0x400454D9
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04


class TapError(VirtkitError):
    """The TAP device cannot be opened (no /dev/net/tun, no permission, bad name)."""


class Tap:
    """One TAP interface; frames in and out carry no extra header."""

    def __init__(self, name: str, vnet_hdr: bool = False, detached: bool = False) -> None:
        if not name or len(name.encode()) > 15 or "/" in name or " " in name:
            raise TapError(f"bad TAP interface name {name!r} (1-15 characters, no '/' or spaces)")
        try:
            self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        except OSError as err:
            raise TapError(f"cannot open /dev/net/tun: {err.strerror}") from None
        try:
            flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
            self.multi_queue = True
            try:
                res = fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags | IFF_MULTI_QUEUE))
            except OSError as err:
                if detached or err.errno != 22:  # EINVAL: a TAP that exists without multi-queue
                    raise
                self.multi_queue = False
                res = fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
            self.attached = True
            self.name = res[:16].rstrip(b"\0").decode()
            if detached:
                self.detach()
            if vnet_hdr:
                # frames carry a 10-byte virtio-net header; the host may hand over partial checksums and TSO
                fcntl.ioctl(self.fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        except OSError as err:
            os.close(self.fd)
            raise TapError(f"cannot create TAP {name!r}: {err.strerror}") from None
        except BaseException:
            os.close(self.fd)
            raise
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

    def _queue(self, flag: int) -> None:
        try:
            fcntl.ioctl(self.fd, TUNSETQUEUE, struct.pack("16sH22x", b"", flag))
        except OSError as err:
            what = "attach" if flag == IFF_ATTACH_QUEUE else "detach"
            raise TapError(f"TAP {getattr(self, 'name', '?')}: cannot {what} its queue: {err.strerror}") from None

    def detach(self) -> None:
        """Stop receiving (the device stays, another queue of it may take the traffic)."""
        if not self.multi_queue:
            raise TapError(f"TAP {getattr(self, 'name', '?')} is not multi-queue: it cannot be handed over (create "
                           "it with `ip tuntap add ... multi_queue`, or let virtkit create it)")
        self._queue(IFF_DETACH_QUEUE)
        self.attached = False

    def attach(self) -> None:
        """Receive and send again (the migration target's queue at the switch-over)."""
        if not self.attached:
            self._queue(IFF_ATTACH_QUEUE)
            self.attached = True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
