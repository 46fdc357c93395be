"""Migration test rigs: a small machine running a hand-encoded guest, the target side in a thread, and two TCP
relays between source and target (one that can mangle or cut the stream, one that is a slow link)."""

from __future__ import annotations

import socket
import threading
import time

from tests.helpers.guests import Out
from tests.helpers.machines import virt
from tests.helpers.opensbi import payload_image
from virtkit.machine.migration import Target


def machine(tmp_path, body, name="src", **kw):
    """A 32 MiB riscv64-virt machine running ``body`` from reset; ``kw``: more MachineConfig fields."""
    img = tmp_path / f"{name}.img"
    payload_image(img, body)
    return virt(Out(), kernel=str(img), firmware=None, mem_mib=32, rng=False, name=name, **kw)


def wait(pred, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


class Receiver:
    """The target side in a thread: ``machine`` or ``error`` once the stream has ended."""

    def __init__(self, token="t0k3n"):
        self.target = Target("tcp:127.0.0.1:0", token, accept_timeout=60)
        self.uri = f"tcp:127.0.0.1:{self.target.port}"
        self.machine = None
        self.error = None
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        try:
            self.machine = self.target.receive(Out(), "dst")
        except Exception as err:
            self.error = err

    def join(self):
        self.t.join(120)
        return self


class SlowLink:
    """A TCP relay that carries at most ``rate`` bytes/s from the source to the target: a slow link, not a
    cap the sender keeps (its sends block once the buffers are full, so the stop-and-copy is slow too)."""

    def __init__(self, target_port, rate):
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 128 << 10)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(1)
        self.port = self.lsock.getsockname()[1]
        self.target_port, self.rate = target_port, rate
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        a, _ = self.lsock.accept()
        b = socket.create_connection(("127.0.0.1", self.target_port))

        def back():
            try:
                while data := b.recv(65536):
                    a.sendall(data)
            except OSError:
                pass

        threading.Thread(target=back, daemon=True).start()
        due = time.monotonic()
        try:
            while data := a.recv(65536):
                b.sendall(data)
                due = max(due, time.monotonic() - 0.05) + len(data) / self.rate
                time.sleep(max(0.0, due - time.monotonic()))
        except OSError:
            pass
        for s_ in (a, b):
            try:
                s_.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s_.close()


class Proxy:
    """A TCP relay from a port to ``target``; ``mangle(offset, chunk) -> (chunk, cut)`` on the source-to-target
    direction: the chunk is forwarded, then, with ``cut``, both connections are closed."""

    def __init__(self, target_port, mangle):
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.target_port, self.mangle = target_port, mangle
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        a, _ = self.lsock.accept()
        b = socket.create_connection(("127.0.0.1", self.target_port))

        def back():
            try:
                while data := b.recv(65536):
                    a.sendall(data)
            except OSError:
                pass
            try:
                a.shutdown(socket.SHUT_RDWR)  # wakes the forwarding loop too
            except OSError:
                pass

        threading.Thread(target=back, daemon=True).start()
        off = 0
        try:
            while data := a.recv(65536):
                out, cut = self.mangle(off, data)
                off += len(data)
                if out:
                    b.sendall(out)
                if cut:
                    break
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
