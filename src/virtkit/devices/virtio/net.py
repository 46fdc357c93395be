"""virtio-net (virtio spec 5.1) on the net backend seam (TAP, virtual-switch ports, UDP links).

Queue 0 receives, queue 1 transmits; every buffer starts with the 12-byte
``virtio_net_hdr`` (no checksum or segmentation offloads are offered, so it is all zeros
apart from ``num_buffers``). Frames arriving while the guest has no receive buffers wait in a
small backlog (a NIC's ring); beyond it they are dropped and counted, as on real hardware.
"""

from __future__ import annotations

import os
import struct

from virtkit.devices.virtio.device import VIRTIO_ID_NET, VirtioDevice, le
from virtkit.errors import ConfigError
from virtkit.machine.memory import GuestMemory
from virtkit.machine.state import Fields, StateError
from virtkit.network.backend import NetBackend

VIRTIO_NET_F_MTU = 3
VIRTIO_NET_F_MAC = 5
VIRTIO_NET_F_STATUS = 16
VIRTIO_NET_S_LINK_UP = 1
HDR_LEN = 12
RX, TX = 0, 1
BACKLOG = 256
MTU = 1500
MAX_FRAME = 65550


def random_mac() -> bytes:
    """A locally administered unicast MAC under QEMU's 52:54:00 prefix."""
    return b"\x52\x54\x00" + os.urandom(3)


class VirtioNet(VirtioDevice):
    """A NIC attached to ``backend``; call :meth:`receive` with frames from the wire."""

    device_id = VIRTIO_ID_NET
    name = "virtio-net"
    STATE_KIND = "virtio-net"

    def __init__(self, mem: GuestMemory, backend: NetBackend, mac: bytes | None = None, queue_size: int = 256) -> None:
        super().__init__(mem, 2, queue_size, 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS | 1 << VIRTIO_NET_F_MTU)
        self.backend = backend
        self.mac = mac or random_mac()
        if len(self.mac) != 6:
            raise ConfigError("a MAC address has 6 bytes")
        self.config = bytearray(self.mac + le("HHH", VIRTIO_NET_S_LINK_UP, 1, MTU))
        self.backlog: list[bytes] = []
        self.counts = {"rx_frames": 0, "tx_frames": 0, "rx_bytes": 0, "tx_bytes": 0, "rx_dropped": 0, "tx_dropped": 0}
        backend.set_receiver(self.receive)

    def save_extra(self) -> dict:
        """Frames received from the wire and not yet delivered, and the MAC address."""
        return {"mac": self.mac.hex(), "backlog": [f.hex() for f in self.backlog]}

    def restore_extra(self, f: Fields) -> None:
        """Take the backlog back; the MAC stays this NIC's (a clone keeps its own address)."""
        backlog = f.list("backlog")
        if len(backlog) > BACKLOG:
            raise StateError(f"virtio-net state: a backlog of {len(backlog)} frames (at most {BACKLOG})")
        frames = [Fields("virtio-net", {"frame": x}).bytes("frame", HDR_LEN + MAX_FRAME) for x in backlog]
        f.bytes("mac", 6)
        self.backlog = frames
        self.config[0:6] = self.mac

    def reset(self) -> None:
        """Driver reset: in-flight frames are lost like on a NIC reset."""
        super().reset()
        self.backlog.clear()

    # -- receive (host -> guest) --------------------------------------------------------------
    def receive(self, frame: bytes) -> None:
        """A frame from the backend (any thread)."""
        with self.lock:
            if not self.active:
                self.counts["rx_dropped"] += 1
                return
            if len(self.backlog) >= BACKLOG:
                self.counts["rx_dropped"] += 1
                return
            self.backlog.append(bytes(frame))
        self.host_call(self._deliver)

    def _deliver(self) -> None:
        q = self.queues[RX]
        done = False
        while self.backlog:
            chain = q.pop()
            if chain is None:
                break
            frame = self.backlog.pop(0)
            need = HDR_LEN + len(frame)
            if chain.writable_len < need:  # buffer too small: drop the frame, return the buffer empty
                self.counts["rx_dropped"] += 1
                q.push(chain.head, 0)
            else:
                hdr = bytes(10) + le("H", 1)  # num_buffers = 1
                chain.write_all(hdr)
                chain.write_all(frame, skip=HDR_LEN)
                q.push(chain.head, need)
                self.counts["rx_frames"] += 1
                self.counts["rx_bytes"] += len(frame)
            done = True
        if done:
            self.interrupt(RX)

    # -- transmit (guest -> host) -------------------------------------------------------------
    def notify(self, index: int) -> None:
        """TX: send every queued frame; RX: new buffers, deliver the backlog."""
        if index == RX:
            self._deliver()
            return
        q = self.queues[TX]
        done = False
        while (chain := q.pop()) is not None:
            data = chain.read_all(HDR_LEN + MAX_FRAME)
            frame = data[HDR_LEN:]
            if len(frame) >= 14:
                try:
                    self.backend.send(frame)
                    self.counts["tx_frames"] += 1
                    self.counts["tx_bytes"] += len(frame)
                except OSError:
                    self.counts["tx_dropped"] += 1
            else:
                self.counts["tx_dropped"] += 1
            q.push(chain.head, 0)
            done = True
        if done:
            self.interrupt(TX)

    def announce_frame(self) -> bytes:
        """A RARP request from this NIC's MAC to everyone (what QEMU's announce-self sends): switches learn
        where the MAC now lives without waiting for the guest to speak."""
        arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 3) + self.mac + bytes(4) + self.mac + bytes(4)
        return (b"\xff" * 6 + self.mac + struct.pack("!H", 0x8035) + arp).ljust(60, b"\0")

    def announce(self) -> bool:
        """Send one announcement on the wire (not through the guest); False when the backend refused it."""
        try:
            self.backend.send(self.announce_frame())
        except OSError:
            return False
        self.counts["tx_frames"] += 1
        return True

    def poll_backend(self) -> None:
        """Drain a pollable backend (call when its ``fileno()`` is readable)."""
        while (frame := self.backend.recv()) is not None:
            self.receive(frame)

    def stats(self) -> dict[str, int]:
        """Frame and byte counters."""
        return {**super().stats(), **self.counts}
