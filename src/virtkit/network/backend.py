"""The net backend seam: what virtio-net and the virtual switch's ports send frames through.

TAP devices, switch ports and UDP links implement :class:`NetBackend`: ``send(frame)`` puts one
Ethernet frame on the wire; received frames are read with ``recv()`` when ``fileno()`` is
readable (for an event loop), or pushed to a callback set with ``set_receiver``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable


@runtime_checkable
class NetBackend(Protocol):
    def send(self, frame: bytes | memoryview) -> None: ...

    def recv(self) -> bytes | None: ...

    def fileno(self) -> int: ...

    def set_receiver(self, callback: Callable[[bytes], None] | None) -> None: ...

    def close(self) -> None: ...
