"""Port kinds of the virtual switch: TAP devices, host interfaces (AF_PACKET), UDP links, VM sockets.

Each kind reads many frames per wakeup (non-blocking loop until EAGAIN) and reports a busy wire
by returning False from :meth:`transmit`, which leaves the frame in the port's priority queues.

Spec strings (what ``virtkit net port add`` takes):
``tap:IF`` · ``host:IF`` · ``udp:LOCAL_PORT:REMOTE_HOST:REMOTE_PORT`` · ``vm:ID``
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import socket
import struct
import time
from pathlib import Path

from virtkit.errors import ConfigError, VirtkitError
from virtkit.network.offload import F_NEEDS_CSUM, VNET_HDR_LEN, ZERO_HDR, finish, wrap
from virtkit.network.switch import Port
from virtkit.network.tap import Tap

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_AUXDATA = 8
PACKET_IGNORE_OUTGOING = 23
PACKET_RX_RING = 5
PACKET_VERSION = 10
PACKET_TX_RING = 13
TPACKET_V2 = 1
TP_STATUS_USER = 1
TP_STATUS_AVAILABLE = 0
TP_STATUS_SEND_REQUEST = 1
TP_STATUS_WRONG_FORMAT = 4
RING_FRAME = 2048
RING_BLOCK = 1 << 16
RING_BLOCKS = 32
RING_FRAMES = RING_BLOCK * RING_BLOCKS // RING_FRAME
RING_HOLE_WAIT = 0.002
TX_DATA = 32  # TPACKET_ALIGN(sizeof(struct tpacket2_hdr)): where a TX frame's bytes start in its slot
_T2 = struct.Struct("IIIHHIIHH")  # struct tpacket2_hdr
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
SOCK_BUF = 4 << 20
#: VM sockets stay small (like a virtio ring): frames wait in the switch's priority queues, not in a
#: deep socket buffer where a high-PCP frame would sit behind thousands of low ones.
VM_SOCK_BUF = 256 << 10
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.@:-]{1,15}$")
VMID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class PortError(VirtkitError):
    """A port that cannot be opened or a malformed port spec."""


def _bufs(sock: socket.socket, size: int = SOCK_BUF) -> None:
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
        except OSError:
            pass


class FdPort(Port):
    """A port on a descriptor that reads and writes one whole frame per call, with a virtio-net header.

    This is what a TAP with ``IFF_VNET_HDR`` is (and a datagram socket pair carrying the same header, which
    the tests use without root). The compiled datapath (:mod:`virtkit.network.datapath`) serves these
    ports' known-unicast traffic without Python.
    """

    kind = "fd"
    accepts_gso = True
    dp_hdr = VNET_HDR_LEN
    dp_capable = True

    def __init__(self, name: str, fd: int, **kw) -> None:
        self.fd = fd
        super().__init__(name, **kw)

    def fileno(self) -> int:
        return self.fd

    def dp_fd(self) -> int:
        return self.fd

    def dp_decode(self, data: bytes, out: list[bytes]) -> None:
        """One raw read (vnet header + frame) to the frame(s) the slow path takes, as :meth:`receive_batch` does."""
        if len(data) <= VNET_HDR_LEN or not data[1] and not data[0] & F_NEEDS_CSUM:
            out.append(data[VNET_HDR_LEN:])  # no offload work pending: a plain frame
        elif self.mode == "access" and data[VNET_HDR_LEN + 12: VNET_HDR_LEN + 14] not in (b"\x81\x00", b"\x88\xa8"):
            out.append(wrap(data))
        else:
            out.extend(finish(wrap(data)))  # tagged: offsets would move with the tag, finish now

    def receive_batch(self, limit: int) -> list[bytes]:
        out: list[bytes] = []
        read, fd = os.read, self.fd
        plain = self.mode == "access"
        append = out.append
        try:
            for _ in range(limit):
                data = read(fd, 65600)
                if len(data) <= VNET_HDR_LEN or not data[1] and not data[0] & F_NEEDS_CSUM:
                    append(data[VNET_HDR_LEN:])  # no offload work pending: a plain frame
                elif plain and data[VNET_HDR_LEN + 12: VNET_HDR_LEN + 14] not in (b"\x81\x00", b"\x88\xa8"):
                    out.append(wrap(data))
                else:
                    out.extend(finish(wrap(data)))  # tagged: offsets would move with the tag, finish now
        except BlockingIOError:
            pass
        except OSError:
            self.down = True  # the interface was deleted under us: the daemon retries reopening it
        return out

    def transmit(self, frame: bytes) -> bool:
        try:
            if type(frame) is bytes:
                os.write(self.fd, ZERO_HDR + frame)  # cheaper than writev for a small frame
            else:
                os.writev(self.fd, (frame.vnet, frame))  # type: ignore[attr-defined]  # 64 KiB: no copy
        except BlockingIOError:
            return False
        except OSError as err:
            if err.errno in (errno.EIO, errno.EINVAL, errno.ENOBUFS):
                return True  # interface down: the frame is lost on the wire, like a cable pulled
            raise
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class TapPort(FdPort):
    """A TAP interface the switch owns (created if missing); the host or a namespace uses the other side.

    The TAP runs with a virtio-net header and checksum/TSO offloads on (like QEMU's ``vnet_hdr=on``):
    a host's TCP stream crosses the switch in 64 KiB super-frames between TAP ports and is cut into
    real frames only for ports that need them (:mod:`virtkit.network.offload`).
    """

    kind = "tap"

    def __init__(self, name: str, ifname: str, **kw) -> None:
        self.tap = Tap(ifname, vnet_hdr=True)
        super().__init__(name, self.tap.fd, spec=f"tap:{ifname}", **kw)

    def reopen(self) -> bool:
        """Create the TAP again after it was deleted."""
        try:
            tap = Tap(self.tap.name, vnet_hdr=True)
        except VirtkitError:
            return False
        self.tap.close()
        self.tap, self.fd = tap, tap.fd
        return True

    def close(self) -> None:
        self.tap.close()
        self.fd = -1


class HostPort(Port):
    """An existing host interface (e.g. a veth end) through an AF_PACKET socket in promiscuous mode.

    Frames move through PACKET_MMAP rings (TPACKET_V2) shared with the kernel: receiving costs no
    system call per frame and sending one ``send()`` per batch. The kernel strips received VLAN tags
    into metadata (rx VLAN offload); the ring header (or PACKET_AUXDATA without rings) gives them back
    and they are re-inserted so trunks see the frame as it was on the wire.
    """

    kind = "host"

    def __init__(self, name: str, ifname: str, **kw) -> None:
        self.ifname = ifname
        self._open()
        super().__init__(name, spec=f"host:{ifname}", **kw)

    def _open(self) -> None:
        ifname = self.ifname
        try:
            ifindex = socket.if_nametoindex(ifname)
        except OSError:
            raise PortError(f"no host interface {ifname!r}") from None
        try:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError:
            raise PortError(f"host:{ifname} needs root (CAP_NET_RAW) for an AF_PACKET socket") from None
        s.bind((ifname, ETH_P_ALL))
        s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b""))
        s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        try:
            s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        except OSError:
            pass
        self.sock = s
        self.mm: mmap.mmap | None = None
        try:
            self._setup_rings()
        except OSError:
            self.receive_batch = self._rx_plain  # type: ignore[method-assign]
            self.transmit = self._tx_plain  # type: ignore[method-assign]
            _bufs(s)  # no PACKET_MMAP: one recvmsg/send per frame
        s.setblocking(False)

    def _check_down(self) -> None:
        """Woken with nothing to read: was the interface deleted (the socket reports ENETDOWN)?"""
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err in (errno.ENETDOWN, errno.ENODEV, errno.ENXIO):
            try:
                socket.if_nametoindex(self.ifname)
            except OSError:
                self.down = True

    def reopen(self) -> bool:
        """Open the AF_PACKET socket again once the interface is back."""
        try:
            socket.if_nametoindex(self.ifname)
        except OSError:
            return False
        self._close()
        try:
            self._open()
        except (OSError, VirtkitError):
            return False
        return True

    # -- PACKET_MMAP (TPACKET_V2) rings: frames in and out without a system call each --------------
    def _setup_rings(self) -> None:
        s = self.sock
        s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        req = struct.pack("IIII", RING_BLOCK, RING_BLOCKS, RING_FRAME, RING_FRAMES)
        s.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        s.setsockopt(SOL_PACKET, PACKET_TX_RING, req)
        size = RING_BLOCK * RING_BLOCKS
        self.mm = mmap.mmap(s.fileno(), 2 * size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.rx_i = 0
        self.rx_hole = -1
        self.rx_hole_time = 0.0
        self.rx_holes = 0
        self.tx_base = size
        self.tx_i = 0
        self.receive_batch = self._rx_ring  # type: ignore[method-assign]
        self.transmit = self._tx_ring  # type: ignore[method-assign]

    def _rx_ring(self, limit: int) -> list[bytes]:
        out: list[bytes] = []
        mm = self.mm
        assert mm is not None
        i = self.rx_i
        unpack, pack = _T2.unpack_from, struct.pack_into
        for _ in range(limit):
            off = i * RING_FRAME
            if not mm[off] & TP_STATUS_USER:
                # A slot the kernel claimed but never filled while later ones are ready (seen on veth
                # under load): after a moment, step over it instead of waiting for it forever.
                if mm[((i + 1) % RING_FRAMES) * RING_FRAME] & TP_STATUS_USER:
                    t = time.monotonic()
                    if self.rx_hole != i:
                        self.rx_hole, self.rx_hole_time = i, t
                    elif t - self.rx_hole_time > RING_HOLE_WAIT:
                        self.rx_holes += 1
                        self.rx_hole = -1
                        i = (i + 1) % RING_FRAMES
                        continue
                break
            status, length, snap, mac, _net, _sec, _nsec, tci, tpid = unpack(mm, off)
            data = mm[off + mac: off + mac + snap]
            pack("I", mm, off, 0)  # hand the slot back to the kernel
            i = (i + 1) % RING_FRAMES
            if snap < length:
                data = data.ljust(length, b"\0")  # cut by the ring: keep its length so it counts as oversize
            if status & TP_STATUS_VLAN_VALID:
                if not status & TP_STATUS_VLAN_TPID_VALID:
                    tpid = 0x8100
                data = data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
            out.append(data)
        self.rx_i = i
        if not out:
            self._check_down()
        return out

    def _tx_ring(self, frame: bytes) -> bool:
        mm = self.mm
        assert mm is not None
        off = self.tx_base + self.tx_i * RING_FRAME
        status = mm[off]
        if status == TP_STATUS_WRONG_FORMAT:
            status = 0
        if status != TP_STATUS_AVAILABLE:
            self.tx_pending += 1
            self.kick()  # make sure the kernel is working on the ring
            return False  # ring full: the switch queues it and retries when the socket is writable
        n = len(frame)
        if n > RING_FRAME - TX_DATA:
            return True  # larger than a slot (cannot happen below MTU 1900): lost like an oversize frame
        mm[off + TX_DATA: off + TX_DATA + n] = frame
        struct.pack_into("II", mm, off, TP_STATUS_SEND_REQUEST, n)
        self.tx_i = (self.tx_i + 1) % RING_FRAMES
        self.tx_pending += 1
        if self.tx_pending >= 64:
            self.kick()
        return True

    def kick(self) -> None:
        """Tell the kernel to send what the TX ring holds."""
        if self.tx_pending:
            try:
                self.sock.send(b"", socket.MSG_DONTWAIT)
                self.tx_pending = 0
            except OSError:
                pass  # ENOBUFS/EAGAIN: still pending, the daemon kicks again on its next turn

    def fileno(self) -> int:
        return self.sock.fileno()

    def info(self) -> dict:
        """Port info plus the state of the PACKET_MMAP rings (frames waiting in them)."""
        info = super().info()
        mm = self.mm
        if mm is not None:
            rx_ready = [i for i in range(RING_FRAMES) if mm[i * RING_FRAME] & TP_STATUS_USER]
            tx_busy = sum(1 for i in range(RING_FRAMES) if mm[self.tx_base + i * RING_FRAME] not in (0, 4))
            runs: list[list[int]] = []
            for i in rx_ready:
                if runs and runs[-1][1] == i - 1:
                    runs[-1][1] = i
                else:
                    runs.append([i, i])
            info["ring"] = {"rx_index": self.rx_i, "rx_waiting": len(rx_ready), "rx_runs": runs[:4],
                            "rx_holes_skipped": self.rx_holes,
                            "tx_index": self.tx_i, "tx_busy": tx_busy}
        return info

    def _rx_plain(self, limit: int) -> list[bytes]:
        out: list[bytes] = []
        recvmsg = self.sock.recvmsg
        space = socket.CMSG_SPACE(20)
        try:
            for _ in range(limit):
                data, anc, _flags, addr = recvmsg(65536, space)
                if addr[2] == socket.PACKET_OUTGOING:
                    continue
                for level, typ, cdata in anc:
                    if level == SOL_PACKET and typ == PACKET_AUXDATA and len(cdata) >= 20:
                        status, _l, _s, _m, _n, tci, tpid = struct.unpack_from("IIIHHHH", cdata)
                        if status & TP_STATUS_VLAN_VALID:
                            if not status & TP_STATUS_VLAN_TPID_VALID:
                                tpid = 0x8100
                            data = data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
                out.append(data)
        except BlockingIOError:
            pass
        except OSError:
            self._check_down()
        return out

    def _tx_plain(self, frame: bytes) -> bool:
        try:
            self.sock.send(frame)
        except BlockingIOError:
            return False
        except OSError as err:
            if err.errno in (errno.ENETDOWN, errno.ENXIO, errno.EMSGSIZE, errno.ENOBUFS):
                return True
            raise
        return True

    def _close(self) -> None:
        if self.mm is not None:
            self.kick()
            self.mm.close()
            self.mm = None
        self.sock.close()

    def close(self) -> None:
        self._close()


class UdpPort(Port):
    """A link to another virtkit switch (or QEMU's ``-netdev socket,udp=``): one frame per UDP datagram.

    A link carries every VLAN tagged by default (it is a trunk between switches).
    """

    kind = "udp"

    def __init__(self, name: str, local_port: int, remote_host: str, remote_port: int, bind: str = "", **kw) -> None:
        kw.setdefault("mode", "trunk")
        try:
            infos = socket.getaddrinfo(remote_host, remote_port, type=socket.SOCK_DGRAM)
        except socket.gaierror as err:
            raise PortError(f"cannot resolve UDP peer {remote_host!r}: {err.strerror}") from None
        family, _, _, _, addr = infos[0]
        s = socket.socket(family, socket.SOCK_DGRAM)
        try:
            s.bind((bind or ("::" if family == socket.AF_INET6 else "0.0.0.0"), local_port))
            s.connect(addr)
        except OSError as err:
            s.close()
            raise PortError(f"cannot open UDP link on port {local_port}: {err.strerror}") from None
        _bufs(s)
        s.setblocking(False)
        self.sock = s
        host = f"[{remote_host}]" if ":" in remote_host else remote_host
        super().__init__(name, spec=f"udp:{local_port}:{host}:{remote_port}", **kw)

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive_batch(self, limit: int) -> list[bytes]:
        out: list[bytes] = []
        recv = self.sock.recv
        for _ in range(limit):
            try:
                out.append(recv(65536))
            except BlockingIOError:
                break
            except ConnectionRefusedError:
                continue  # the peer's ICMP port unreachable for an earlier frame
            except OSError:
                break
        return out

    def transmit(self, frame: bytes) -> bool:
        try:
            self.sock.send(frame)
        except BlockingIOError:
            return False
        except (ConnectionRefusedError, OSError):
            return True  # the peer switch is not up: the frame is lost on the wire
        return True

    def close(self) -> None:
        self.sock.close()


class VmPort(Port):
    """A port a VM's virtio-net backend connects to: a Unix SOCK_SEQPACKET socket, one frame per message.

    ``vm:ID`` listens on ``<switch dir>/vm-ID.sock`` and serves one VM at a time (a VM can restart
    and reconnect). An *attached* port wraps one end of a socketpair handed to
    :class:`virtkit.network.switchport.SwitchPort` and goes away when the VM closes it.
    """

    kind = "vm"
    dp_capable = True

    def __init__(self, name: str, vm_id: str, path: str | None = None, conn: socket.socket | None = None,
                 **kw) -> None:
        self.listener: socket.socket | None = None
        self.conn = conn
        self.path = path
        self.closed_by_peer = False
        if conn is None:
            assert path is not None
            try:
                if os.path.exists(path):
                    os.unlink(path)
                ls = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                ls.bind(path)
                ls.listen(1)
            except OSError as err:
                raise PortError(f"cannot listen on {path}: {err.strerror}") from None
            ls.setblocking(False)
            self.listener = ls
        else:
            _bufs(conn, VM_SOCK_BUF)
            conn.setblocking(False)
        super().__init__(name, spec=f"vm:{vm_id}", **kw)

    def info(self) -> dict:
        """Port info plus whether a VM is connected."""
        return {**super().info(), "connected": self.conn is not None}

    @property
    def ephemeral(self) -> bool:
        """True for a port made by ``attach`` (not persisted, removed when the VM leaves)."""
        return self.listener is None

    def fileno(self) -> int:
        if self.conn is not None:
            return self.conn.fileno()
        return self.listener.fileno() if self.listener is not None else -1

    def dp_fd(self) -> int:
        """The connected VM's socket (one frame per message, no vnet header); -1 while no VM is connected."""
        return self.conn.fileno() if self.conn is not None else -1

    def _dp_set_fd(self) -> None:
        """Tell the datapath the socket changed (a VM connected or left) before the old descriptor is closed."""
        if self.dp_index >= 0 and self.dp_table is not None:
            self.dp_table[self.dp_index, 0] = self.dp_fd()

    def receive_batch(self, limit: int) -> list[bytes]:
        if self.conn is None:
            if self.listener is None:
                return []
            try:
                conn, _ = self.listener.accept()
            except BlockingIOError:
                return []
            _bufs(conn, VM_SOCK_BUF)
            conn.setblocking(False)
            self.conn = conn
            self._dp_set_fd()
            return []
        out: list[bytes] = []
        recv = self.conn.recv
        try:
            for _ in range(limit):
                data = recv(65536)
                if not data:
                    self._peer_gone()
                    break
                out.append(data)
        except BlockingIOError:
            pass
        except OSError:
            self._peer_gone()
        return out

    def _peer_gone(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            self._dp_set_fd()
            conn.close()
        if self.listener is None:
            self.closed_by_peer = True

    def transmit(self, frame: bytes) -> bool:
        if self.conn is None:
            return True  # no VM connected: link down, the frame is lost
        try:
            self.conn.send(frame)
        except BlockingIOError:
            return False
        except OSError:
            self._peer_gone()
        return True

    def close(self) -> None:
        for s in (self.conn, self.listener):
            if s is not None:
                s.close()
        if self.listener is not None and self.path and os.path.exists(self.path):
            os.unlink(self.path)


def parse_spec(spec: str) -> tuple[str, list[str]]:
    """Split and validate a port spec into (kind, args); :class:`ConfigError` names what is wrong."""
    kind, sep, rest = spec.partition(":")
    usage = "want tap:IF, host:IF, udp:LOCAL_PORT:REMOTE_HOST:REMOTE_PORT or vm:ID"
    if not sep or not rest:
        raise ConfigError(f"bad port spec {spec!r}: {usage}")
    if kind in ("tap", "host"):
        if not IFNAME_RE.match(rest):
            raise ConfigError(f"bad interface name {rest!r} in {spec!r} (1-15 characters, no '/' or spaces)")
        return kind, [rest]
    if kind == "vm":
        if not VMID_RE.match(rest):
            raise ConfigError(f"bad VM port id {rest!r} in {spec!r} (letters, digits, '.', '-', '_')")
        return kind, [rest]
    if kind == "udp":
        m = re.match(r"^(\d+):(\[[^\]]+\]|[^:\[\]]+):(\d+)$", rest)
        if not m:
            raise ConfigError(f"bad UDP link {spec!r}: want udp:LOCAL_PORT:REMOTE_HOST:REMOTE_PORT")
        lport, host, rport = int(m.group(1)), m.group(2).strip("[]"), int(m.group(3))
        for p in (lport, rport):
            if not 1 <= p <= 65535:
                raise ConfigError(f"bad UDP link {spec!r}: port {p} out of range 1-65535")
        return kind, [str(lport), host, str(rport)]
    raise ConfigError(f"unknown port kind {kind!r} in {spec!r}: {usage}")


def default_name(spec: str) -> str:
    """The port name used when none is given: the interface, ``udpLOCAL`` or ``vm-ID``."""
    kind, args = parse_spec(spec)
    if kind in ("tap", "host"):
        return args[0]
    return f"udp{args[0]}" if kind == "udp" else f"vm-{args[0]}"


def open_port(name: str, spec: str, statedir: Path, **kw) -> Port:
    """Open the port a spec describes (``kw`` carries the VLAN settings)."""
    kind, args = parse_spec(spec)
    if kind == "tap":
        return TapPort(name, args[0], **kw)
    if kind == "host":
        return HostPort(name, args[0], **kw)
    if kind == "udp":
        return UdpPort(name, int(args[0]), args[1], int(args[2]), **kw)
    return VmPort(name, args[0], path=str(statedir / f"vm-{args[0]}.sock"), **kw)
