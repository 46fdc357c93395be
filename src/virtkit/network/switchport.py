"""A VM's connection to a virtkit switch: the :class:`~virtkit.network.backend.NetBackend` behind
``--net switch:NAME[,vlan=N]``.

``SwitchPort("lab", vlan=7)`` asks the running switch ``lab`` for a new access port on VLAN 7 and
receives one end of a SOCK_SEQPACKET socket pair (SCM_RIGHTS); each message is one Ethernet frame.
The port disappears from the switch when the VM closes it. ``SwitchPort("lab", port="web1")``
instead connects to the persistent ``vm:web1`` port (created by ``virtkit net port add lab vm:web1``),
whose VLAN settings live in the switch configuration.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from virtkit.errors import ConfigError, VirtkitError
from virtkit.network import config as cfgmod
from virtkit.network.control import SwitchError, request, request_fd
from virtkit.network.switch import parse_vlan


class SwitchPort:
    """One virtual NIC plugged into a virtkit switch (non-blocking; poll ``fileno()``, then ``recv()``)."""

    def __init__(self, switch_name: str, vlan: int | None = None, port: str | None = None,
                 group: str | None = None) -> None:
        self.switch_name = cfgmod.check_name(switch_name)
        if port is not None:
            if vlan is not None or group is not None:
                raise ConfigError("a persistent vm: port has its VLAN in the switch config; give port or vlan")
            path = cfgmod.switch_dir(switch_name) / f"vm-{port}.sock"
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                sock.connect(str(path))
            except OSError as err:
                sock.close()
                raise SwitchError(f"cannot connect to port vm:{port} of switch {switch_name!r}: "
                                  f"{err.strerror}") from None
            self.port_name = f"vm-{port}"
        else:
            args = {} if vlan is None else {"vlan": parse_vlan(vlan)}
            if group is not None:
                args["group"] = group
            reply, fd = request_fd(switch_name, "attach", **args)
            sock = socket.socket(fileno=fd)
            self.port_name = reply["port"]
        #: an attached port (``vm-autoN``) exists only while this NIC holds it; a ``vm:`` port persists
        self.attached = port is None
        sock.setblocking(False)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
            except OSError:
                pass
        self.sock = sock
        self._receiver: Callable[[bytes], None] | None = None
        self.dropped = 0
        #: False once the switch closed the port or stopped (the VM sees a link that carries nothing)
        self.connected = True

    def send(self, frame: bytes | memoryview) -> None:
        """Put one frame on the switch; dropped (and counted) when the switch is not keeping up or gone."""
        if not self.connected:
            self.dropped += 1
            return
        try:
            self.sock.send(frame)
        except BlockingIOError:
            self.dropped += 1
        except OSError:
            self.dropped += 1
            self._link_down()

    def recv(self) -> bytes | None:
        """One frame from the switch, or None when none is waiting (or the switch went away)."""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            self._link_down()
            return None
        return data

    def _link_down(self) -> None:
        """The switch stopped: behave like a pulled cable (frames dropped, fileno never readable)."""
        if not self.connected:
            return
        self.connected = False
        fd = self.sock.fileno()
        quiet, self._peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        quiet.setblocking(False)
        os.dup2(quiet.fileno(), fd)  # same descriptor number: an event loop polling it keeps working
        quiet.close()

    def fileno(self) -> int:
        """Readable when a frame is waiting."""
        return self.sock.fileno()

    def set_receiver(self, callback: Callable[[bytes], None] | None) -> None:
        """Remember a callback for an event loop that pushes frames (it calls :meth:`poll`)."""
        self._receiver = callback

    def poll(self) -> int:
        """Deliver every waiting frame to the receiver callback; returns how many."""
        n = 0
        while self._receiver is not None:
            frame = self.recv()
            if frame is None:
                break
            self._receiver(frame)
            n += 1
        return n

    def unplug(self) -> None:
        """Ask the switch to remove an attached port now (closing the socket alone is noticed by the switch a
        moment later); the switch closes its end and this NIC sees a pulled cable. The socket stays open
        for the caller to :meth:`close`."""
        if self.attached and self.connected:
            try:
                request(self.switch_name, "port_remove", name=self.port_name)
            except VirtkitError:
                pass  # the switch is gone or already dropped the port: closing is all that is left

    def close(self) -> None:
        """Unplug from the switch."""
        if self.sock.fileno() >= 0:
            self.sock.close()
        if getattr(self, "_peer", None) is not None:
            self._peer.close()
