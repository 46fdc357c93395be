"""A GDB remote stub (``virtkit run --gdb tcp::1234 [--gdb-wait]``, QEMU's ``-gdb``/``-s``/``-S``).

``gdb-multiarch`` (or any client of the GDB remote serial protocol) connects over TCP or a Unix socket and
sees the guest as a multi-threaded program: one thread per vCPU. What it can do, as with QEMU's stub:
read and write registers (the integer and FP registers, the CSRs and the privilege mode, described to GDB
in a target description), read and write memory through the selected vCPU's current address translation,
set software breakpoints (``Z0``; ``Z1`` hardware breakpoints are served the same way) and watchpoints
(``Z2``-``Z4``: write, read, access, on the CPU's debug triggers), single-step one vCPU (``s``,
``vCont``), continue, interrupt with Ctrl-C, detach and kill.

How it works: breakpoints are ``ebreak`` instructions written into guest memory while the guest runs
(GDB removes them whenever it stops); the engine runs in *guest debug* mode, where an ``ebreak`` exits to
the VMM instead of trapping (KVM's ``KVM_GUESTDBG_USE_SW_BP``). An ``ebreak`` that is not one of ours is
handed back to the guest as the breakpoint exception it would have been. A single step runs exactly one
instruction of one vCPU with the JIT off (an interrupt pending there is taken: the step lands on the trap
vector, as on hardware). A watchpoint is a debug trigger (Sdtrig) armed in "enter Debug Mode" mode: the
watched access exits to the VMM before it happens; the stub lets it happen (one step with the triggers
off) and then reports the stop, so GDB sees the new value. The engine-specific part (register numbering,
the target description) comes from the engine's ``gdb_target()``.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
from typing import Any

from virtkit.errors import ConfigError

PACKET_SIZE = 0x4000
SIGINT, SIGTRAP = 2, 5


def parse_address(spec: str) -> tuple[int, Any]:
    """``tcp::PORT``, ``tcp:HOST:PORT``, ``PORT`` or ``unix:PATH`` (QEMU's -gdb syntax) -> (family, address)."""
    s = spec.strip()
    if s.startswith("unix:"):
        path = s[5:].split(",", 1)[0]
        if not path:
            raise ConfigError(f"--gdb {spec!r}: unix: needs a path")
        return socket.AF_UNIX, path
    if s.startswith("tcp:"):
        s = s[4:]
    host, _, port = s.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    port = port.split(",", 1)[0]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--gdb {spec!r}: expected tcp::PORT, tcp:HOST:PORT or unix:PATH")
    return (socket.AF_INET6 if ":" in host else socket.AF_INET), (host, int(port))


def _checksum(data: bytes) -> bytes:
    return b"%02x" % (sum(data) & 0xFF)


def _unescape(data: bytes) -> bytes:
    out = bytearray()
    it = iter(data)
    for b in it:
        out.append(next(it, 0) ^ 0x20 if b == 0x7D else b)
    return bytes(out)


class ProtocolError(Exception):
    """The client sent something that is not a packet of the protocol."""


class GdbStub:
    """Serve one debugger at a time for ``machine`` (a built :class:`~virtkit.machine.builder.Machine`)."""

    def __init__(self, machine: Any, address: str, wait: bool = False) -> None:
        self.machine = machine
        self.vm = machine.vm
        self.engine = machine.engine
        self.target = self.engine.gdb_target()
        family, addr = parse_address(address)
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        if family != socket.AF_UNIX:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(addr)
        try:
            self.listener.bind(addr)
        except OSError as err:
            self.listener.close()
            raise ConfigError(f"--gdb {address!r}: cannot listen there: {err.strerror or err}") from None
        self.listener.listen(1)
        self.address = self.listener.getsockname()
        self.conn: socket.socket | None = None
        self.noack = False
        self.breakpoints: dict[int, tuple[int, bytes]] = {}  # guest virtual address -> (physical, original)
        self.thread = 0  # the vCPU g/p/m/s talk about (Hg)
        self.watchpoints: dict[tuple[int, int, int], int] = {}  # (Z type, address, length) -> trigger
        self._watch_hit = ""  # the stop reply's "watch:ADDR;" part after a watchpoint
        self._stop_event = threading.Event()
        self._stop_info: tuple[int, int, bool] = (0, SIGTRAP, False)  # (vcpu, signal, at our breakpoint)
        self._closed = False
        self._running = False  # the debugger waits for a stop reply (between its continue and our answer)
        self._reply_lock = threading.Lock()
        self.vm.on_debug = self._on_debug
        if wait:
            self.vm.hold_at_start("waiting for gdb")
        self._server = threading.Thread(target=self._serve, name="virtkit-gdbstub", daemon=True)
        self._server.start()

    # -- the guest side (vCPU thread) --------------------------------------------------------------------
    def _on_debug(self, ex: Any) -> None:
        """An ``ebreak`` or a watchpoint exited to the VMM: stop for the debugger if it is one of ours (after the
        watched access has happened), else let the guest's own ``ebreak`` trap."""
        vcpu = ex.vcpu
        if ex.size == 1:  # a trigger: the access has not happened yet; step over it, then report
            self._step_unwatched(vcpu)
            self._stop_info = (vcpu, SIGTRAP, False)
            self._watch_hit = self._watch_reason(ex.addr)
            self.vm.pause("gdb: watchpoint")
            self._stop_event.set()
            return
        pc = self.target.pc(vcpu)
        if self.conn is None or pc not in self.breakpoints:
            self.engine.set_guest_debug(False)
            try:
                self.engine.step(vcpu)  # the guest's own breakpoint: the exception it asked for
            finally:
                self.engine.set_guest_debug(self.conn is not None)
            return
        self._stop_info = (vcpu, SIGTRAP, True)
        self._watch_hit = ""
        self.vm.pause("gdb: breakpoint")
        self._stop_event.set()

    # -- the connection ---------------------------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conn, self.noack, self._buf = conn, False, b""
            self.engine.set_guest_debug(True)
            if not self.vm.paused:
                self.vm.pause("gdb attached")
            try:
                self._session()
            except (OSError, ProtocolError):
                pass
            finally:
                self._detach()

    def _detach(self) -> None:
        """The debugger left: breakpoints out, guest debug off, the guest runs on."""
        conn, self.conn = self.conn, None
        self._remove_all()
        self.engine.set_guest_debug(False)
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()
        if not self._closed:
            self.vm.resume()

    def close(self) -> None:
        """Stop listening and drop the client (the VM's closer); a debugger waiting on a continue hears that
        the guest has ended first."""
        self._closed = True
        with self._reply_lock:
            if self.conn is not None and self._running:
                self._running = False
                with contextlib.suppress(OSError):
                    self._send(self._ended())
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.shutdown(socket.SHUT_RDWR)

    def _read(self, timeout: float | None = None) -> bytes | None:
        """The next packet's payload, b"\\x03" for an interrupt, None on timeout; OSError when the client left."""
        assert self.conn is not None
        while True:
            buf = self._buf
            while buf[:1] in (b"+", b"-"):
                buf = buf[1:]
            if buf[:1] == b"\x03":
                self._buf = buf[1:]
                return b"\x03"
            start = buf.find(b"$")
            if start > 0:
                buf = buf[start:]
            end = buf.find(b"#")
            if start >= 0 and end >= 0 and len(buf) >= end + 3:
                payload, cs = buf[1:end], buf[end + 1 : end + 3]
                self._buf = buf[end + 3 :]
                if not self.noack:
                    self.conn.sendall(b"+" if _checksum(payload) == cs.lower() else b"-")
                    if _checksum(payload) != cs.lower():
                        continue
                return payload
            self._buf = buf
            if len(buf) > 4 * PACKET_SIZE:
                raise ProtocolError("a packet longer than the packet size")
            if timeout is not None and not select.select([self.conn], [], [], timeout)[0]:
                return None
            data = self.conn.recv(65536)
            if not data:
                raise OSError("the debugger closed the connection")
            self._buf += data

    def _send(self, payload: bytes | str) -> None:
        assert self.conn is not None
        if isinstance(payload, str):
            payload = payload.encode()
        self.conn.sendall(b"$" + payload + b"#" + _checksum(payload))

    def _session(self) -> None:
        while True:
            pkt = self._read()
            if pkt is None:
                continue
            if pkt == b"\x03":
                continue  # already stopped
            self._resumed = False
            reply = self._command(pkt)
            with self._reply_lock:  # after a continue, close() may have answered already
                if reply is not None and (self._running or not self._resumed):
                    self._send(reply)
                self._running = False

    # -- commands ---------------------------------------------------------------------------------------------
    def _command(self, pkt: bytes) -> bytes | str | None:
        """One packet; returns the reply (None: the command replies itself, or ends the session)."""
        cmd, rest = pkt[:1], pkt[1:]
        try:
            if pkt.startswith(b"qSupported"):
                return (f"PacketSize={PACKET_SIZE:x};qXfer:features:read+;QStartNoAckMode+;vContSupported+;"
                        "swbreak+;hwbreak+")
            if pkt == b"QStartNoAckMode":
                self._send("OK")
                self.noack = True
                return None
            if pkt.startswith(b"qXfer:features:read:"):
                return self._xfer(pkt[len(b"qXfer:features:read:"):].decode())
            if pkt == b"?":
                return self._stop_reply(self.thread, SIGTRAP, False)
            if pkt == b"qAttached":
                return "1"
            if pkt == b"qfThreadInfo":
                return "m" + ",".join(f"{h + 1:x}" for h in range(self.engine.nvcpus))
            if pkt == b"qsThreadInfo":
                return "l"
            if pkt == b"qC":
                return f"QC{self.thread + 1:x}"
            if pkt.startswith(b"qThreadExtraInfo,"):
                h = self._tid(pkt.split(b",", 1)[1])
                return self.target.describe(h).encode().hex()
            if cmd == b"H":
                if rest[1:] not in (b"0", b"-1"):
                    self.thread = self._tid(rest[1:])
                return "OK"
            if cmd == b"T":
                self._tid(rest)
                return "OK"
            if cmd == b"g":
                return self.target.read_gp(self.thread).hex()
            if cmd == b"G":
                self.target.write_gp(self.thread, bytes.fromhex(rest.decode()))
                return "OK"
            if cmd == b"p":
                v = self.target.read_reg(self.thread, int(rest, 16))
                return "E45" if v is None else v.hex()
            if cmd == b"P":
                n, v = rest.split(b"=", 1)
                return "OK" if self.target.write_reg(self.thread, int(n, 16), bytes.fromhex(v.decode())) else "E45"
            if cmd == b"m":
                addr, n = (int(x, 16) for x in rest.split(b","))
                data = self.target.read_mem(self.thread, addr, min(n, PACKET_SIZE // 2))
                return "E14" if data is None else data.hex()
            if cmd in (b"M", b"X"):
                where, data = rest.split(b":", 1)
                addr, n = (int(x, 16) for x in where.split(b","))
                data = bytes.fromhex(data.decode()) if cmd == b"M" else _unescape(data)
                if len(data) != n:
                    return "E22"
                return "OK" if self.target.write_mem(self.thread, addr, data) else "E14"
            if cmd in (b"Z", b"z"):
                kind, addr, size = rest.split(b",")[:3]
                if kind in (b"2", b"3", b"4"):
                    return self._watchpoint(cmd == b"Z", int(kind), int(addr, 16), int(size, 16))
                if kind not in (b"0", b"1"):
                    return ""
                return self._breakpoint(cmd == b"Z", int(addr, 16), int(size, 16))
            if pkt == b"vCont?":
                return "vCont;c;C;s;S"
            if pkt.startswith(b"vCont;"):
                return self._vcont(pkt[6:])
            if cmd in (b"c", b"C"):
                return self._continue()
            if cmd in (b"s", b"S"):
                return self._step(self.thread)
            if cmd == b"D":
                self._send("OK")
                raise ProtocolError("detached")
            if cmd == b"k" or pkt.startswith(b"vKill"):
                self.vm.stop("stopped", "killed from gdb")
                raise ProtocolError("killed")
        except (ValueError, IndexError):
            return "E22"  # a malformed command
        return ""  # not supported

    def _tid(self, text: bytes) -> int:
        h = int(text, 16) - 1
        if not 0 <= h < self.engine.nvcpus:
            raise ValueError(f"no thread {text!r}")
        return h

    def _xfer(self, spec: str) -> str:
        annex, _, rng = spec.rpartition(":")
        off, n = (int(x, 16) for x in rng.split(","))
        doc = self.target.xml(annex)
        if doc is None:
            return "E00"
        chunk = doc[off : off + n]
        return ("m" if off + n < len(doc) else "l") + chunk

    def _stop_reply(self, vcpu: int, sig: int, swbreak: bool, watch: str = "") -> str:
        return f"T{sig:02x}thread:{vcpu + 1:x};" + ("swbreak:;" if swbreak else "") + watch

    def _breakpoint(self, insert: bool, addr: int, size: int) -> str:
        if not insert:
            pa, orig = self.breakpoints.pop(addr, (None, b""))
            if pa is not None:
                self.engine.mem.write(pa, orig)
            return "OK"
        if addr in self.breakpoints:
            return "OK"
        pa = self.target.translate(self.thread, addr)
        size = 2 if size == 2 else 4
        if pa is None or not self.engine.mem.contains(pa, size):
            return "E14"
        self.breakpoints[addr] = (pa, self.engine.mem.read(pa, size))
        self.engine.mem.write(pa, self.target.breakpoint_insn(size))
        return "OK"

    def _remove_all(self) -> None:
        for addr in list(self.breakpoints):
            self._breakpoint(False, addr, 0)
        for key in list(self.watchpoints):
            self._watchpoint(False, *key)

    WATCH = {2: "write", 3: "read", 4: "access"}
    WATCH_REPLY = {2: "watch", 3: "rwatch", 4: "awatch"}

    def _watchpoint(self, insert: bool, kind: int, addr: int, length: int) -> str:
        """Z2/Z3/Z4: a debug trigger per watchpoint (E01 when the hart has no trigger left)."""
        key = (kind, addr, length)
        if not insert:
            slot = self.watchpoints.pop(key, None)
            if slot is not None:
                self.engine.clear_watchpoint(slot)
            return "OK"
        if key in self.watchpoints:
            return "OK"
        if not 0 < length <= 1 << 20:
            return "E22"
        free = [s for s in self.engine.watchpoint_slots() if s not in self.watchpoints.values()]
        if not free:
            return "E01"
        self.engine.set_watchpoint(free[0], addr, length, self.WATCH[kind])
        self.watchpoints[key] = free[0]
        return "OK"

    def _watch_reason(self, addr: int) -> str:
        """The stop reply's part naming the watchpoint an access at ``addr`` hit."""
        for (kind, a, n) in self.watchpoints:
            if a <= addr < a + max(n, 1) or addr <= a < addr + 8:
                return f"{self.WATCH_REPLY[kind]}:{a:x};"
        return ""

    def _vcont(self, actions: bytes) -> str | None:
        for act in actions.split(b";"):
            what, _, tid = act.partition(b":")
            if what[:1] in (b"s", b"S"):
                return self._step(self._tid(tid) if tid and tid != b"-1" else self.thread)
        return self._continue()

    def _step(self, vcpu: int) -> str:
        outcome = self.vm.debug_step(vcpu)
        if outcome == "watchpoint":  # the step's own access is watched: let it happen, then say so
            outcome = self._step_unwatched(vcpu)
        if outcome == "ended":
            return self._ended()
        return self._stop_reply(vcpu, SIGTRAP, outcome == "breakpoint" and self.target.pc(vcpu) in self.breakpoints)

    def _step_unwatched(self, vcpu: int) -> str:
        """One step of ``vcpu`` with the triggers off: the watched access a trigger stopped happens."""
        self.engine.set_triggers_enabled(False)
        try:
            return self.vm.step_vcpu(vcpu)
        finally:
            self.engine.set_triggers_enabled(True)

    def _continue(self) -> str | None:
        """Run until a breakpoint, a Ctrl-C from the debugger, or the end of the guest."""
        self._stop_event.clear()
        self._running = self._resumed = True
        self.vm.resume()
        while True:
            if self._stop_event.is_set():
                self._wait_paused()
                vcpu, sig, ours = self._stop_info
                self.thread = vcpu
                return self._stop_reply(vcpu, sig, ours, self._watch_hit)
            if self.vm.wait(0) is not None:
                return self._ended()
            pkt = self._read(timeout=0.05)
            if pkt == b"\x03":
                self.vm.pause("gdb: interrupted")
                self._wait_paused()
                return self._stop_reply(self.thread, SIGINT, False)

    def _wait_paused(self) -> None:
        while not self.vm.paused and self.vm.wait(0.01) is None:
            pass

    def _ended(self) -> str:
        res = self.vm.wait(0)
        code = res.exit_status if res is not None else 0
        return f"W{code & 0xFF:02x}"
