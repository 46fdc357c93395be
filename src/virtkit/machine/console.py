"""The serial console of a VM as a stream that many can watch and one can type into.

The guest's console device (the 16550 on the RISC-V board) writes into a :class:`ConsoleHub`. The hub
hands every byte to the local sinks (the terminal, an ``--exec`` filter, a log file), to the viewers
attached from other terminals through the control socket (``virtkit console NAME``), keeps the last
64 KiB for error reports and for viewers that attach late, and lets watchers look at it (a kernel panic,
the boot reaching the guest's shell). Input comes from the local terminal or from the one viewer that
holds the keyboard (the *typist*); the others only watch.

A viewer that stops reading never blocks the guest: its queue is bounded and it is detached when full.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

TAIL = 64 * 1024
VIEWER_QUEUE = 1 << 20  # bytes a viewer may fall behind before it is dropped


class Viewer:
    """One attached viewer: a ``send(bytes)`` that may block (a socket), fed through its own thread."""

    def __init__(self, send: Callable[[bytes], None], name: str = "viewer", on_close: Callable[[], None] | None = None,
                 start: bool = True, hung_up: Callable[[], bool] | None = None) -> None:
        self.send = send
        #: whether the far end has gone (checked before refusing the keyboard to someone else: the thread that
        #: reads this viewer may not have seen its end yet)
        self.hung_up = hung_up or (lambda: False)
        self.name = name
        self.on_close = on_close
        self._q: queue.Queue[bytes | None] = queue.Queue()
        self._pending = 0
        self.closed = False
        self.dropped = False
        self._thread = threading.Thread(target=self._run, name=f"virtkit-console-{name}", daemon=True)
        if start:
            self._thread.start()

    def start(self) -> None:
        """Start sending (output queued before is sent first)."""
        if not self._thread.is_alive() and not self.closed:
            self._thread.start()

    def put(self, data: bytes) -> None:
        """Queue output; a viewer more than :data:`VIEWER_QUEUE` bytes behind is dropped."""
        if self.closed:
            return
        self._pending += len(data)
        if self._pending > VIEWER_QUEUE:
            self.dropped = True
            self.close()
            return
        self._q.put(data)

    def _run(self) -> None:
        while True:
            data = self._q.get()
            if data is None:
                break
            self._pending -= len(data)
            try:
                self.send(data)
            except OSError:
                break
        self.closed = True
        if self.on_close is not None:
            self.on_close()

    def close(self) -> None:
        """Stop sending (the thread ends after what is queued is dropped)."""
        if not self.closed:
            self.closed = True
            self._q.put(None)


class ConsoleHub:
    """Fan-out of console output and arbitration of console input."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sinks: list[Callable[[bytes], None]] = []
        self.watchers: list[Callable[[bytes], None]] = []
        self.viewers: list[Viewer] = []
        self.typist: Viewer | None = None
        self._tail = bytearray()
        #: where input goes (the console device's ``feed``)
        self.input: Callable[[bytes], None] = lambda data: None
        #: where a break goes (the console device's ``send_break``), None when the device has none
        self.send_break: Callable[[bytes], None] | None = None
        self.errors: list[str] = []

    # -- output (vCPU thread) -----------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Guest output: to every sink, viewer and watcher; kept in the tail."""
        if not data:
            return
        tail = self._tail
        tail += data
        if len(tail) > TAIL:
            del tail[: len(tail) - TAIL]
        for sink in self.sinks:
            sink(data)
        for w in self.watchers:
            w(data)
        if self.viewers:
            with self._lock:
                for v in self.viewers:
                    v.put(data)

    def notice(self, text: str) -> None:
        """A message from virtkit itself on the console stream (terminal, viewers, log), not from the guest."""
        data = f"\r\n[virtkit] {text}\r\n".encode()
        for sink in self.sinks:
            sink(data)
        with self._lock:
            for v in self.viewers:
                v.put(data)

    def tail(self, nbytes: int = TAIL) -> bytes:
        """The last ``nbytes`` of output."""
        return bytes(self._tail[-nbytes:])

    def last_lines(self, n: int = 20) -> str:
        """The last ``n`` lines of output as text (for error reports)."""
        text = self.tail().decode(errors="replace").replace("\r", "")
        return "\n".join(text.splitlines()[-n:])

    # -- viewers (control connections) --------------------------------------------------------------
    def attach(self, viewer: Viewer, write: bool = False, force: bool = False, replay: bool = True) -> None:
        """Add a viewer (with the recent output first); ``write`` asks for the keyboard (one typist at a time:
        ``force`` takes it from the current one). ValueError when the keyboard is taken."""
        with self._lock:
            if write:
                if self.typist is not None and not self.typist.closed and not force and not self.typist.hung_up():
                    raise ValueError(f"the console's keyboard is held by {self.typist.name} "
                                     "(attach read-only, or force to take it)")
                self.typist = viewer
            self.viewers.append(viewer)
            if replay and self._tail:
                viewer.put(self.recent())

    def recent(self, lines: int = 2) -> bytes:
        """The last ``lines`` lines of output (what a viewer sees on attaching: usually the prompt)."""
        tail = bytes(self._tail[-4096:])
        cut = len(tail)
        for _ in range(lines):
            cut = tail.rfind(b"\n", 0, cut)
            if cut < 0:
                return tail
        return tail[cut + 1:]

    def detach(self, viewer: Viewer) -> None:
        """Remove a viewer (and its keyboard)."""
        with self._lock:
            if viewer in self.viewers:
                self.viewers.remove(viewer)
            if self.typist is viewer:
                self.typist = None
        viewer.close()

    def type(self, data: bytes, viewer: Viewer | None = None) -> bool:
        """Input from the local terminal (``viewer`` None) or from a viewer: False if that viewer may not type."""
        if viewer is not None and viewer is not self.typist:
            return False
        self.input(data)
        return True

    def close(self) -> None:
        """Detach every viewer."""
        with self._lock:
            viewers, self.viewers, self.typist = self.viewers, [], None
        for v in viewers:
            v.close()


class BootWatch:
    """Watches console output for a kernel panic and for the boot reaching its goal (a shell, a marker).

    ``on_panic(text)`` is called once, shortly after "Kernel panic" appears (with the lines that followed);
    :attr:`reached` is set when any of ``markers`` appears.
    """

    PANIC = b"Kernel panic - not syncing"

    def __init__(self, markers: tuple[bytes, ...] = (), on_panic: Callable[[], None] | None = None) -> None:
        self.markers = markers
        self.reached = threading.Event() if markers else None
        self.panicked = False
        self.panic_seen_at = 0.0
        self.on_panic = on_panic
        self._buf = bytearray()

    def __call__(self, data: bytes) -> None:
        buf = self._buf
        buf += data  # search the whole chunk and what came just before it, then keep only a tail
        if self.reached is not None and not self.reached.is_set() and any(m in buf for m in self.markers):
            self.reached.set()
        if not self.panicked and self.PANIC in buf:
            import time

            self.panicked = True
            self.panic_seen_at = time.monotonic()
        if len(buf) > 256:
            del buf[:-256]
