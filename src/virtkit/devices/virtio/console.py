"""virtio-console (virtio spec 5.3) with a single port: ``/dev/hvc0`` in a Linux guest.

Queue 0 (receiveq) carries host input to the guest, queue 1 (transmitq) guest output to
``sink``. Input waits in a host-side buffer until the guest posts receive buffers, so nothing
typed is lost.
"""

from __future__ import annotations

from collections.abc import Callable

from virtkit.devices.virtio.device import VIRTIO_ID_CONSOLE, VirtioDevice, le
from virtkit.machine.memory import GuestMemory
from virtkit.machine.state import Fields

VIRTIO_CONSOLE_F_SIZE = 0
RX, TX = 0, 1
MAX_BACKLOG = 1 << 20


class VirtioConsole(VirtioDevice):
    """A single-port console; ``sink(bytes)`` receives what the guest writes."""

    device_id = VIRTIO_ID_CONSOLE
    name = "virtio-console"
    STATE_KIND = "virtio-console"

    def __init__(self, mem: GuestMemory, sink: Callable[[bytes], None] | None = None, cols: int = 80,
                 rows: int = 25, queue_size: int = 64) -> None:
        super().__init__(mem, 2, queue_size, 1 << VIRTIO_CONSOLE_F_SIZE)
        self.sink = sink or (lambda data: None)
        self.config = bytearray(le("HHI", cols, rows, 1))  # cols, rows, max_nr_ports
        self.backlog = bytearray()
        self.dropped = 0

    def save_extra(self) -> dict:
        """Host input the guest has not taken yet."""
        return {"backlog": self.backlog.hex(), "dropped": self.dropped}

    def restore_extra(self, f: Fields) -> None:
        """Take the pending input back."""
        self.backlog = bytearray(f.bytes("backlog", MAX_BACKLOG))
        self.dropped = f.int("dropped", 0)

    def feed(self, data: bytes) -> None:
        """Host input (from the I/O thread): deliver now or keep it until the guest has buffers."""
        with self.lock:
            room = MAX_BACKLOG - len(self.backlog)
            self.backlog += data[:room]
            self.dropped += max(0, len(data) - room)
        self.host_call(self._deliver)

    def _deliver(self) -> None:
        q = self.queues[RX]
        done = False
        while self.backlog and (chain := q.pop()) is not None:
            n = chain.write_all(self.backlog)
            del self.backlog[:n]
            q.push(chain.head, n)
            done = True
        if done:
            self.interrupt(RX)

    def notify(self, index: int) -> None:
        """Transmit guest output, or deliver pending input into fresh receive buffers."""
        if index == RX:
            self._deliver()
            return
        q = self.queues[TX]
        done = False
        while (chain := q.pop()) is not None:
            data = chain.read_all()
            if data:
                self.sink(data)
            q.push(chain.head, 0)
            done = True
        if done:
            self.interrupt(TX)
