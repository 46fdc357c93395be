"""virtio-rng (virtio spec 5.4): fills the guest's buffers with host entropy (``os.urandom``).

Linux exposes it as ``/dev/hwrng`` and feeds the kernel's entropy pool from it.
"""

from __future__ import annotations

import os

from virtkit.devices.virtio.device import VIRTIO_ID_RNG, VirtioDevice
from virtkit.machine.memory import GuestMemory

MAX_PER_REQUEST = 1 << 16  # bytes served per buffer, whatever the guest asks for


class VirtioRng(VirtioDevice):
    """One request queue; each chain gets its writable buffers filled (up to 64 KiB)."""

    device_id = VIRTIO_ID_RNG
    name = "virtio-rng"
    STATE_KIND = "virtio-rng"

    def __init__(self, mem: GuestMemory, queue_size: int = 64) -> None:
        super().__init__(mem, 1, queue_size)
        self.bytes_served = 0

    def notify(self, index: int) -> None:
        """Fill every available buffer."""
        q = self.queues[0]
        done = False
        while (chain := q.pop()) is not None:
            n = min(chain.writable_len, MAX_PER_REQUEST)
            written = chain.write_all(os.urandom(n))
            self.bytes_served += written
            q.push(chain.head, written)
            done = True
        if done:
            self.interrupt(0)

    def stats(self) -> dict[str, int]:
        """Bytes of entropy handed out."""
        return {**super().stats(), "bytes": self.bytes_served}
