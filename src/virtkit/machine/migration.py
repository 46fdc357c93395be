"""Live migration of a running VM to another virtkit process over TCP: pre-copy, auto-converge, one stream.

The target waits (``virtkit run --incoming tcp:HOST:PORT``, which prints a per-migration token); the
source (``virtkit migrate NAME tcp:HOST:PORT --token T``) sends, while its guest keeps running:

1. ``HELLO``: the machine config and RAM layout, the token; the target allocates RAM and answers ``READY``;
2. every non-zero page of RAM, then, in rounds, the pages the guest dirtied meanwhile (the engine's dirty
   log: the interpreter, the JIT's native code and device DMA all mark the pages they write);
3. when what is left fits the downtime goal at the measured bandwidth (and the target has built its
   machine in the background): the guest is paused, the last dirty pages (sent uncapped, as QEMU's
   completion stage does), the disks released (flushed and closed, so the target may open them), the device and engine
   records, ``END``; the target builds the machine around the RAM, restores the records and answers ``DONE``;
   the source then stops with reason ``migrated``.

A guest that dirties memory faster than the link carries it is throttled (**auto-converge**: the vCPU
sleeps a growing share of its time), and the downtime goal grows round by round up to a ceiling, so a busy
guest still finishes. Every frame carries a CRC-32C; the stream starts with a version; a wrong token, a
corrupt or cut stream, a target that fails, anything before ``DONE`` leaves the source running as if
nothing had happened (its disks reopened).

Frame: ``type u8, flags u8, reserved u16, length u32, payload, crc32c u32`` (over header and payload).
"""

from __future__ import annotations

import hmac
import json
import secrets
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from crc32c import crc32c as checksum  # CRC-32C in hardware (SSE 4.2, ARMv8): 14 GB/s here, zlib's CRC-32 3.9

from virtkit.errors import VirtkitError
from virtkit.machine.memory import nonzero_pages
from virtkit.machine.mirror import DISK_HDR, T_DISK, T_DISKZERO
from virtkit.storage.bitmap import true_runs

MAGIC = b"VKMIGRT\x00"
VERSION = 2  # 2: frames are checksummed with CRC-32C (1: zlib's CRC-32)
PAGE = 4096
HDR = struct.Struct("<BBHI")
CRC = struct.Struct("<I")
MAX_PAYLOAD = 4 << 20
RUN_PAGES = 256  # pages per PAGES frame at most (1 MiB)
T_HELLO, T_READY, T_PAGES, T_ZERO, T_STATE, T_END, T_DONE, T_ERROR, T_POSTCOPY = 1, 2, 3, 4, 5, 6, 7, 8, 9
NAMES = {T_HELLO: "HELLO", T_READY: "READY", T_PAGES: "PAGES", T_ZERO: "ZERO", T_STATE: "STATE", T_END: "END",
         T_DONE: "DONE", T_ERROR: "ERROR", T_POSTCOPY: "POSTCOPY", T_DISK: "DISK", T_DISKZERO: "DISKZERO"}
DEFAULT_DOWNTIME = 0.05  # seconds: the first goal (QEMU's default is 0.3)
DOWNTIME_CEILING = 1.0  # the goal grows to at most this
MAX_ROUNDS = 60
HANDSHAKE_TIMEOUT = 10.0  # seconds a connection has to prove it is a source with the token


class _Lost(VirtkitError):
    """Post-copy broke after the switch-over: the guest ran on the target; the source cannot take it back."""


class MigrationError(VirtkitError):
    """A migration failed (the source keeps running)."""


def parse_uri(uri: str, listen: bool = False) -> tuple[str, int]:
    """``tcp:HOST:PORT`` (HOST may be empty for every address; a listener may take port 0: any free one)
    -> (host, port)."""
    kind, _, rest = uri.partition(":") if isinstance(uri, str) else ("", "", "")
    host, _, port = rest.rpartition(":")
    if kind != "tcp" or not port.isdigit() or not (0 if listen else 1) <= int(port) < 65536:
        raise MigrationError(f"bad migration address {uri!r}: use tcp:HOST:PORT")
    return host.strip("[]"), int(port)


def new_token() -> str:
    """A per-migration token (the target prints it; the source must present it)."""
    return secrets.token_hex(16)


class Channel:
    """Framed, checksummed messages over a socket, with an optional bandwidth cap (bytes/s)."""

    def __init__(self, sock: socket.socket, bandwidth: float | None = None) -> None:
        self.sock = sock
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):  # a page run in flight while the next is read
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
            except OSError:
                pass
        try:  # each frame is one write: the last small frames of the switch-over must not wait for an ACK
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.bandwidth = bandwidth
        self.sent = 0
        self.received = 0
        self.busy = 0.0  # seconds spent sending (checksums and system calls), the cap's sleeps not counted
        self._t0 = time.monotonic()
        self._budget_sent = 0

    def send(self, mtype: int, *parts: bytes | memoryview) -> None:
        """One frame whose payload is ``parts`` one after the other (sent without joining them)."""
        t = time.monotonic()
        length = sum(len(p) for p in parts)
        head = HDR.pack(mtype, 0, 0, length)
        crc = checksum(head)
        for p in parts:
            crc = checksum(p, crc)
        self._sendmsg([head, *(p for p in parts if len(p)), CRC.pack(crc)])
        n = HDR.size + length + CRC.size
        self.sent += n
        self.busy += time.monotonic() - t
        self._throttle(n)

    def send_raw(self, bufs: list) -> None:
        """Bytes outside any frame (post-copy records, which carry their own checksum), counted and capped like
        frames."""
        t = time.monotonic()
        self._sendmsg(bufs)
        n = sum(len(b) for b in bufs)
        self.sent += n
        self.busy += time.monotonic() - t
        self._throttle(n)

    def restart_cap(self) -> None:
        """The cap counts from now (after a stretch where it was lifted)."""
        self._t0, self._budget_sent = time.monotonic(), 0

    def mark(self) -> tuple[int, float]:
        """Where the counters stand now (for :meth:`raw_rate` over what follows)."""
        return self.sent, self.busy

    def raw_rate(self, since: tuple[int, float]) -> float | None:
        """Bytes per second the sender managed since ``since`` while it was not sleeping for the cap: the rate
        of the switch-over, where the cap is lifted (a slow link blocks the sends and shows here too). None when
        too little was sent to tell."""
        sent, busy = self.sent - since[0], self.busy - since[1]
        return sent / busy if busy > 0.005 and sent > 4 << 20 else None

    def _sendmsg(self, bufs: list) -> None:
        """All of ``bufs`` in as few system calls as the socket takes (one write per frame, not one per part:
        small parts after a large one would otherwise wait on Nagle's algorithm)."""
        views = [memoryview(b).cast("B") for b in bufs]
        while views:
            n = self.sock.sendmsg(views)
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if n:
                views[0] = views[0][n:]

    def _throttle(self, n: int) -> None:
        if not self.bandwidth:
            return
        self._budget_sent += n
        ahead = self._budget_sent / self.bandwidth - (time.monotonic() - self._t0)
        if ahead > 0:
            time.sleep(ahead)

    def _recv_into(self, view: memoryview) -> None:
        n, got = len(view), 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got, socket.MSG_WAITALL)
            if k == 0:
                raise MigrationError(f"the stream ended in the middle of a frame ({got} of {n} bytes)")
            got += k
        self.received += n

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray(n)
        self._recv_into(memoryview(buf))
        return bytes(buf)

    def head(self) -> tuple[int, int, bytes]:
        """The next frame's type and length (checked), and its header bytes (for :meth:`finish`)."""
        head = self._recv_exact(HDR.size)
        mtype, flags, _, length = HDR.unpack(head)
        if mtype not in NAMES:
            raise MigrationError(f"unknown frame type {mtype} in the migration stream")
        if length > MAX_PAYLOAD:
            raise MigrationError(f"{NAMES[mtype]} frame of {length} bytes exceeds {MAX_PAYLOAD}")
        return mtype, length, head

    def finish(self, mtype: int, crc: int) -> None:
        """Read the frame's CRC and compare it with ``crc`` (computed over the header and the payload)."""
        (want,) = CRC.unpack(self._recv_exact(CRC.size))
        if want != crc:
            raise MigrationError(f"corrupt {NAMES[mtype]} frame (CRC mismatch)")

    def recv(self) -> tuple[int, bytes]:
        """One frame, checked: known type, bounded length, CRC."""
        mtype, length, head = self.head()
        payload = self._recv_exact(length) if length else b""
        self.finish(mtype, checksum(payload, checksum(head)))
        return mtype, payload

    def send_json(self, mtype: int, obj: Any) -> None:
        self.send(mtype, json.dumps(obj, separators=(",", ":")).encode())


def _json(payload: bytes, what: str) -> Any:
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError) as err:
        raise MigrationError(f"malformed {what} ({err})") from None


# ------------------------------------------------------------------------------------------- source
@dataclass
class Status:
    """What ``virtkit migrate`` shows while it runs (and returns at the end)."""

    state: str = "setup"  # setup, active, postcopy-active, completed, failed, cancelled
    postcopy: bool = False  # switched to post-copy
    postcopy_requests: int = 0  # pages the target faulted on and asked for
    disk_bytes_sent: int = 0  # --copy-storage: disk data sent
    round: int = 0
    pages_sent: int = 0
    bytes_sent: int = 0
    ram_pages: int = 0
    dirty_pages: int = 0  # dirty at the start of the current round
    dirty_rate: float = 0.0  # pages/s over the last round
    bandwidth: float = 0.0  # bytes/s over the last round
    expected_downtime: float = 0.0  # seconds, if the switch happened now
    downtime_goal: float = DEFAULT_DOWNTIME
    throttle: float = 0.0
    total_seconds: float = 0.0
    downtime: float = 0.0  # measured: the guest paused at the end until it ran on the target
    error: str = ""
    log: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["log"] = list(self.log[-20:])
        return d


def _expect(ch: Channel, want: int, failed: str = "failed") -> bytes:
    """The target's next frame, which must be ``want``; its ERROR (``the target <failed>: why``) or anything
    else is a MigrationError. Returns the payload."""
    mtype, payload = ch.recv()
    if mtype == T_ERROR:
        raise MigrationError(f"the target {failed}: {_json(payload, 'ERROR').get('error')}")
    if mtype != want:
        raise MigrationError(f"the target answered {NAMES[mtype]} instead of {NAMES[want]}")
    return payload


class Source:
    """Migrates ``machine`` (a running VM) to a target: :meth:`start` runs it in a thread, :attr:`status`
    reports, ``on_done(status)`` is called at the end."""

    def __init__(self, machine: Any, uri: str, token: str, *, bandwidth: float | None = None,
                 downtime: float = DEFAULT_DOWNTIME, downtime_ceiling: float = DOWNTIME_CEILING,
                 auto_converge: bool = True, on_done: Callable[[Status], None] | None = None,
                 connect_timeout: float = 10.0, postcopy: bool = False, copy_storage: bool = False) -> None:
        self.machine = machine
        self.postcopy = postcopy
        self.copy_storage = copy_storage
        self.mirror: Any = None
        self.vm = machine.vm
        self.host, self.port = parse_uri(uri)
        self.token = token
        self.bandwidth = bandwidth
        self.downtime_ceiling = max(downtime_ceiling, downtime)
        self.auto_converge = auto_converge
        self.on_done = on_done
        self.connect_timeout = connect_timeout
        self.status = Status(downtime_goal=downtime)
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._released: list[Any] = []
        self._detached: list[Any] = []  # TAP queues detached at the switch-over
        self._prev_dirty: int | None = None  # the dirty set of the round before (see _another_round)
        self._extra_rounds = 0
        #: set when the migration has ended (any way); a follower (``virtkit migrate`` polling the VM)
        #: sets ``delivered`` once it has the final status, before a migrated VM stops and goes away
        self.ended = threading.Event()
        self.delivered = threading.Event()
        self.followers = 0
        #: a follower has asked for the status at least once: it polls, so between two of its requests
        #: ``followers`` is 0; the end waits for its delivery all the same
        self.followed = False

    def start(self) -> None:
        """Run the migration in the background."""
        self._thread = threading.Thread(target=self._run, name="virtkit-migrate", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """Give up (the source goes on running)."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> Status:
        """Wait for the end; the final status."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status

    # -- the stream ----------------------------------------------------------------------------------
    def _run(self) -> None:
        st = self.status
        t0 = time.monotonic()
        eng = self.machine.engine
        sock = None
        try:
            if not hasattr(eng, "dirty_log_clear"):
                raise MigrationError(f"engine {self.machine.cfg.engine!r} keeps no dirty log: it cannot be "
                                     "migrated live")
            self._check_taps()
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
            sock.settimeout(60)
            ch = Channel(sock, self.bandwidth)
            mem = self.machine.mem
            cfg = self.machine.cfg.to_dict()
            sock.sendall(MAGIC + struct.pack("<I", VERSION))
            if self.copy_storage:
                from virtkit.machine.mirror import SourceMirror

                self.mirror = self._paused(lambda: SourceMirror(self.machine))
                disks = self.mirror.describe()
            else:
                disks = [{"size": d.backend.size, "read_only": bool(d.backend.read_only)}
                         for d in self.machine.disks()]
            ch.send_json(T_HELLO, {"token": self.token, "machine": cfg, "ram_base": mem.base, "ram_size": mem.size,
                                   "vm": self.vm.name, "disks": disks, "postcopy": self.postcopy,
                                   "copy_storage": self.copy_storage})
            _expect(ch, T_READY, "refused")
            st.state = "active"
            st.log.append(f"{time.monotonic() - t0:.3f} s: the target is ready")
            st.ram_pages = mem.size // PAGE
            ram = mem.array[: mem.size]
            mirror = self.mirror
            if mirror is not None:  # the disks' data first, while the guest runs (it marks what it rewrites)
                mirror.send_bulk(ch, self._check_cancel)
                st.disk_bytes_sent = mirror.sent
                st.bytes_sent = ch.sent
                st.log.append(f"{time.monotonic() - t0:.3f} s: disks copied ({mirror.sent / 2**20:.1f} MiB)")
            # round 0: start the dirty log, then send every non-zero page while the guest runs
            self._paused(eng.dirty_log_clear)
            last_fetch = time.monotonic()
            target_built = False
            mask = nonzero_pages(ram, mem.resident_pages())
            t_r0, b_r0 = time.monotonic(), ch.sent
            round_mark = ch.mark()
            unsent = self._send_pages(ch, ram, mask, zero_too=False, early=True)
            if time.monotonic() - t_r0 > 0.01:  # long enough to say what the link carries
                st.bandwidth = (ch.sent - b_r0) / (time.monotonic() - t_r0)
            st.log.append(f"{time.monotonic() - t0:.3f} s: first pass over RAM: {st.pages_sent} pages sent"
                          + (f", {int(unsent.sum())} left for the next round" if unsent is not None else ""))
            while True:
                self._check_cancel()
                r0 = time.monotonic()
                b0 = ch.sent
                last_round, round_mark = round_mark, ch.mark()
                dirty = self._paused(eng.dirty_log_fetch)
                if unsent is not None:  # the rest of the first pass
                    dirty, unsent = dirty | unsent, None
                now = time.monotonic()
                n = int(dirty.sum())
                st.dirty_rate = n / max(now - last_fetch, 1e-6)  # pages/s since the last fetch
                last_fetch = now
                st.round += 1
                st.dirty_pages = n
                bw = st.bandwidth or self.bandwidth or 100e6
                # the stop-and-copy runs uncapped: its time is the dirty set at the uncapped rate
                raw = ch.raw_rate(last_round)
                final_bw = max(bw, raw or 0) if ch.bandwidth else bw
                st.expected_downtime = (n * PAGE + (mirror.dirty_bytes() if mirror is not None else 0)) / final_bw
                fits = st.expected_downtime <= st.downtime_goal or st.round >= MAX_ROUNDS
                go_post = self.postcopy and not fits  # after the first pass: switch, fetch the rest later
                converged = fits and not self._another_round(n, bw)
                if converged or go_post:
                    if target_built or self._built_yet(ch):
                        target_built = True
                        break
                    # the guest stops only once the target's machine is built (the wait is not downtime):
                    # send this round, wait, then take what was dirtied meanwhile
                    self._send_pages(ch, ram, dirty, zero_too=True)
                    self._send_disks(ch)
                    self._wait_built(ch)
                    target_built = True
                    continue
                self._send_pages(ch, ram, dirty, zero_too=True)
                self._send_disks(ch)
                round_s = max(time.monotonic() - r0, 1e-6)
                st.bandwidth = (ch.sent - b0) / round_s
                if not self.postcopy:
                    self._adapt()
            if go_post:
                self._postcopy(ch, ram, dirty, t0)
                return
            # stop and copy
            st.log.append(f"switching over after {st.round} rounds: {st.dirty_pages} pages left, "
                          f"~{st.expected_downtime * 1000:.0f} ms")
            stop_t = time.monotonic()
            if not self.vm.pause("migrating"):
                raise MigrationError("the VM did not pause")
            try:
                # the pages of the last round (fetched, not sent yet) and what was dirtied since; the cap
                # is lifted while the guest is stopped (as QEMU's completion stage does): the downtime is
                # what the cap must not stretch
                t_paused = time.monotonic()
                dirty = dirty | eng.dirty_log_fetch()
                ch.bandwidth = None
                self._send_pages(ch, ram, dirty, zero_too=True, stable=True)
                self._final_disks(ch)
                self._detach_taps()
                t_pages = time.monotonic()
                ch.send_json(T_STATE, self.machine.save_state())
                ch.send_json(T_END, {"pages": st.pages_sent, "rounds": st.round})
                t_state = time.monotonic()
                payload = _expect(ch, T_DONE)
                st.downtime = time.monotonic() - stop_t
                done = _json(payload, "DONE") if payload else {}
                if isinstance(done, dict) and done:
                    st.log.append("target: " + ", ".join(f"{k} {v:.1f}" for k, v in done.items()
                                                         if isinstance(v, (int, float))))
                st.log.append(f"downtime {st.downtime * 1000:.1f} ms: pause {(t_paused - stop_t) * 1000:.1f}, "
                              f"{int(dirty.sum())} pages in {len(true_runs(dirty, RUN_PAGES))} runs "
                              f"{(t_pages - t_paused) * 1000:.1f}, disks and state "
                              f"{(t_state - t_pages) * 1000:.1f}, target {(time.monotonic() - t_state) * 1000:.1f}")
            except BaseException:
                self._give_back()
                raise
            self._finish(t0, "")
        except _Lost as err:  # post-copy broke after the switch-over: there is no guest to go back to
            st.total_seconds = time.monotonic() - t0
            st.error, st.state = str(err), "failed"
            self.vm.stop("failed", str(err))
        except BaseException as err:  # the source goes on as if nothing happened
            st.total_seconds = time.monotonic() - t0
            st.error = str(err) if isinstance(err, (VirtkitError, OSError)) else f"{type(err).__name__}: {err}"
            st.state = "cancelled" if self._cancel.is_set() else "failed"
            self.vm.set_throttle(0.0)
            if self.vm.paused and self.vm.state == "paused":
                self.vm.resume()
        finally:
            if self.mirror is not None:
                self.mirror.unwrap()
            st.total_seconds = st.total_seconds or time.monotonic() - t0
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass
            self.ended.set()
            if self.on_done is not None:
                self.on_done(st)

    def _another_round(self, n: int, bw: float) -> bool:
        """The dirty set fits the goal; is one more round worth it? The goal is a ceiling, not a target: while
        a round is short (at most 50 ms at the measured bandwidth) and the set keeps shrinking (each round at
        most 60% of the one before), another round costs little time and cuts the downtime. A guest that
        dirties as fast as the link carries stops shrinking, and the switch happens at once."""
        prev, self._prev_dirty = self._prev_dirty, n
        if self._extra_rounds >= 4 or not 0.003 <= n * PAGE / bw <= 0.05:
            return False
        if prev is not None and n > 0.6 * prev:
            return False
        self._extra_rounds += 1
        return True

    def _postcopy(self, ch: Channel, ram: np.ndarray, dirty: np.ndarray, t0: float) -> None:
        """Switch to post-copy: state and the bitmap of missing pages, the guest on at the target, then every
        missing page pushed (those the target faults on first) until the target has them all."""
        st = self.status
        st.log.append(f"switching to post-copy after {st.round} rounds: {int(dirty.sum())} pages dirty")
        stop_t = time.monotonic()
        if not self.vm.pause("migrating (post-copy)"):
            raise MigrationError("the VM did not pause")
        committed = False
        try:
            missing = dirty | self.machine.engine.dirty_log_fetch()
            bw, ch.bandwidth = ch.bandwidth, None  # the switch-over is downtime: no cap on it
            self._final_disks(ch)
            self._detach_taps()
            ch.send_json(T_STATE, self.machine.save_state())
            ch.send(T_POSTCOPY, np.packbits(missing, bitorder="little").tobytes())
            _expect(ch, T_DONE)
            committed = True
            st.downtime = time.monotonic() - stop_t
            st.state, st.postcopy = "postcopy-active", True
            st.log.append(f"the guest runs on the target after {st.downtime * 1000:.1f} ms; "
                          f"{int(missing.sum())} pages to fetch")
            ch.bandwidth = bw
            ch.restart_cap()
            self._push_pages(ch, ram, missing)
        except BaseException as err:
            if not committed:
                self._give_back()
                raise
            msg = str(err) if isinstance(err, (VirtkitError, OSError)) else f"{type(err).__name__}: {err}"
            raise _Lost(f"post-copy broke after the switch-over ({msg}): the guest had started on the target "
                        "and cannot go on here or there") from err
        st.log.append(f"post-copy done: {st.postcopy_requests} pages fetched on demand")
        self._finish(t0, " (post-copy)")

    def _give_back(self) -> None:
        """The switch-over failed before the target took the guest: everything back, the guest runs on here."""
        self._reopen_disks()
        self._reattach_taps()
        self.vm.set_throttle(0.0)
        self.vm.resume()

    def _finish(self, t0: float, how: str) -> None:
        """The guest lives on the target: report, let a follower read the status, stop, unplug."""
        st = self.status
        self._release_switch_ports(unplug=True)  # before "completed": the switch has the target's port only
        st.total_seconds = time.monotonic() - t0
        st.state = "completed"  # last: a follower polling the status may read it at any moment
        self.vm.set_throttle(0.0)
        self.ended.set()
        if self.followers or self.followed:
            self.delivered.wait(2.0)
        self.vm.stop("migrated", f"migrated to {self.host}:{self.port}{how}")
        self._release_switch_ports()

    def _push_pages(self, ch: Channel, ram: np.ndarray, missing: np.ndarray) -> None:
        """The source's side of post-copy: requested pages first, then the rest in order, until ALL_HERE."""
        from collections import deque

        from virtkit.machine.postcopy import ALL_HERE, BATCH, records

        st = self.status
        sock = ch.sock
        sock.settimeout(None)
        order = np.flatnonzero(missing).tolist()
        sent = np.zeros(len(missing), dtype=bool)
        urgent: deque[int] = deque()
        pos, pend = 0, b""
        while True:
            idle = pos >= len(order) and not urgent
            r, _, _ = select.select([sock], [], [], 60 if idle else 0)
            if r:
                data = sock.recv(65536)
                if not data:
                    raise MigrationError("the target closed the connection during post-copy")
                pend += data
                k = len(pend) // 8
                for (p,) in struct.iter_unpack("<Q", pend[:k * 8]):
                    if p == ALL_HERE:
                        return
                    if p < len(sent) and not sent[p]:
                        urgent.append(p)
                        st.postcopy_requests += 1
                pend = pend[k * 8:]
            elif idle:
                raise MigrationError("the target did not confirm the last pages within 60 s")
            batch: list[int] = []
            while urgent and len(batch) < 4:
                p = urgent.popleft()
                if not sent[p]:
                    batch.append(p)
                    sent[p] = True
            while len(batch) < BATCH and pos < len(order):
                p = order[pos]
                pos += 1
                if not sent[p]:
                    batch.append(p)
                    sent[p] = True
            if batch:
                ch.send_raw(records(ram, batch))
                st.pages_sent += len(batch)
                st.bytes_sent = ch.sent

    def _built_yet(self, ch: Channel) -> bool:
        """Whether the target's word that its machine is built has arrived (then it is read), not waiting."""
        r, _, _ = select.select([ch.sock], [], [], 0)
        if not r:
            return False
        self._wait_built(ch)
        return True

    def _wait_built(self, ch: Channel) -> None:
        """The target says its machine is built (or why not)."""
        ch.sock.settimeout(120)
        if not _json(_expect(ch, T_READY), "READY").get("built"):
            raise MigrationError("the target answered READY instead of READY (built)")
        self.status.log.append("the target's machine is built")

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise MigrationError("cancelled")

    def _paused(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` with the vCPUs and the guest's I/O stopped (a few hundred microseconds)."""
        was = self.vm.state == "running"
        if was and not self.vm.pause("migration: dirty log"):
            raise MigrationError("the VM did not pause")
        try:
            return fn()
        finally:
            if was:
                self.vm.resume()

    def _send_pages(self, ch: Channel, ram: np.ndarray, mask: np.ndarray, zero_too: bool,
                    early: bool = False, stable: bool = False) -> np.ndarray | None:
        """Send the pages of ``mask``. With ``early``, stop once what is left of them would fit the
        downtime goal at the bandwidth measured so far, and return those pages (they join the next round:
        on a capped link the first pass need not finish before the switch, as in QEMU)."""
        st = self.status
        runs = true_runs(mask, RUN_PAGES)
        left = int(mask.sum())
        t0, b0 = time.monotonic(), ch.sent
        for i, (first, count) in enumerate(runs):
            self._check_cancel()
            if early and i and i % 16 == 0:
                dt = time.monotonic() - t0
                if dt > 0.05 and left * PAGE / ((ch.sent - b0) / dt) <= st.downtime_goal / 2:
                    rest = np.zeros_like(mask)
                    for f, c in runs[i:]:
                        rest[f:f + c] = True
                    return rest
            left -= count
            data = ram[first * PAGE:(first + count) * PAGE]
            if zero_too and not data.view(np.uint64).any():
                ch.send(T_ZERO, struct.pack("<QI", first, count))
            else:
                # a copy while the guest runs (it may write the pages while they are sent, and the CRC must
                # match); the pages themselves once it is paused (``stable``)
                ch.send(T_PAGES, struct.pack("<QI", first, count), memoryview(data) if stable else data.tobytes())
            st.pages_sent += count
            st.bytes_sent = ch.sent
        return None

    def _adapt(self) -> None:
        """Auto-converge: throttle the vCPU while the guest dirties faster than the link; raise the goal."""
        st = self.status
        link_pages = st.bandwidth / PAGE if st.bandwidth else 0
        if self.auto_converge and link_pages and st.dirty_rate > 0.5 * link_pages and st.round >= 2:
            st.throttle = min(0.99, 0.2 if st.throttle == 0 else st.throttle + 0.1 + (1 - st.throttle) * 0.3)
            self.vm.set_throttle(st.throttle)
            st.log.append(f"round {st.round}: dirtying {st.dirty_rate * PAGE / 1e6:.1f} MB/s on a "
                          f"{st.bandwidth / 1e6:.1f} MB/s link: vCPU throttled to {st.throttle:.0%}")
        if st.round % 3 == 0 and st.downtime_goal < self.downtime_ceiling:
            st.downtime_goal = min(self.downtime_ceiling, st.downtime_goal * 1.5)

    def _check_taps(self) -> None:
        """Every TAP must be multi-queue to be handed over (refused before anything starts)."""
        for t in self.machine.taps():
            if not t.multi_queue:
                raise MigrationError(f"TAP {t.name} is not multi-queue, so the target cannot take it over on "
                                     "this host (create it with `ip tuntap add ... multi_queue`, or let virtkit "
                                     "create it)")

    def _detach_taps(self) -> None:
        """At the switch-over: the source's TAP queues stop, so the target's can start."""
        for t in self.machine.taps():
            t.detach()
            self._detached.append(t)

    def _reattach_taps(self) -> None:
        for t in self._detached:
            try:
                t.attach()
            except VirtkitError as err:  # the VM runs on; its NIC reports nothing more
                self.status.log.append(str(err))
        self._detached.clear()

    def _release_switch_ports(self, unplug: bool = False) -> None:
        """Unplug the NICs from their switches: the guest's ports now belong to the target, which has
        announced the MACs there. ``unplug``: have the switches drop the ports (sockets stay open), else
        close the sockets."""
        from virtkit.network.switchport import SwitchPort

        for d in self.machine.virtio:
            b = getattr(d, "backend", None)
            if isinstance(b, SwitchPort):
                b.unplug() if unplug else b.close()

    def _send_disks(self, ch: Channel) -> None:
        """--copy-storage: the disk chunks written since the last round."""
        if self.mirror is not None:
            self.mirror.send_dirty(ch, self._check_cancel)
            self.status.disk_bytes_sent = self.mirror.sent
            self.status.bytes_sent = ch.sent

    def _final_disks(self, ch: Channel) -> None:
        """At the switch-over (guest paused): the last disk chunks (copied disks), or the disks released
        for the target to open (shared disks)."""
        if self.mirror is None:
            self._release_disks()
            return
        self.mirror.flush()
        self._send_disks(ch)

    def _release_disks(self) -> None:
        """Flush and close every disk so the target can open (and lock) them."""
        for d in self.machine.disks():
            if not d.backend.read_only:
                d.backend.flush()
            d.backend.close()
            self._released.append(d)

    def _reopen_disks(self) -> None:
        from virtkit.storage import open_disk

        for d, dc in zip(self._released, self.machine.cfg.disks, strict=False):
            try:
                d.backend = open_disk(dc.path, read_only=dc.read_only, fmt=dc.format)
            except Exception as err:  # the VM keeps running; the disk reports errors
                self.status.log.append(f"could not reopen disk {dc.path}: {err}")
        self._released.clear()


# ------------------------------------------------------------------------------------------- target
class Target:
    """Waits on ``tcp:HOST:PORT`` for one migration and builds the machine it carries."""

    def __init__(self, uri: str, token: str | None = None, accept_timeout: float | None = None,
                 listener_fd: int | None = None, disk_dir: str | None = None) -> None:
        """Listen on ``uri`` (or on the inherited listening socket ``listener_fd``); ``disk_dir``: where the
        disks of a ``--copy-storage`` migration are created (default: the source's paths)."""
        self.disk_dir = disk_dir
        self.host, self.port = parse_uri(uri, listen=True)
        self.token = token or new_token()
        self.accept_timeout = accept_timeout
        self.refused: list[str] = []  # connections turned away before a migration started (peer: why)
        self.handed_over = False  # post-copy: the connection belongs to the page server now
        if listener_fd is not None:
            self.listener = socket.socket(fileno=listener_fd)
        else:
            try:
                self.listener = socket.create_server((self.host, self.port))
            except OSError as err:
                raise MigrationError(f"cannot listen on {uri}: {err.strerror}") from None
        self.port = self.listener.getsockname()[1]

    def close(self) -> None:
        """Stop listening (a thread blocked in accept wakes up: shutdown first, close alone would not)."""
        for f in (lambda: self.listener.shutdown(socket.SHUT_RDWR), self.listener.close):
            try:
                f()
            except OSError:
                pass

    def _accept(self) -> tuple[socket.socket, Channel, dict]:
        """Wait for a source that speaks the protocol and knows the token. A connection that does not (a
        port scan, a wrong token, another version) is told why, closed, and the target goes on waiting."""
        deadline = None if self.accept_timeout is None else time.monotonic() + self.accept_timeout
        try:
            while True:
                left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
                try:
                    self.listener.settimeout(left)
                    conn, peer = self.listener.accept()
                except TimeoutError:
                    raise MigrationError(f"no migration arrived on port {self.port}") from None
                except OSError as err:  # close() from another thread
                    raise MigrationError(f"stopped waiting for a migration on port {self.port}") from err
                conn.settimeout(HANDSHAKE_TIMEOUT)
                ch = Channel(conn)
                try:
                    return conn, ch, self._handshake(ch)
                except (MigrationError, OSError) as err:
                    self.refused.append(f"{peer[0]}:{peer[1]}: {err}")
                    print(f"virtkit: refused a migration from {peer[0]}:{peer[1]}: {err}", file=sys.stderr,
                          flush=True)
                    try:
                        ch.send_json(T_ERROR, {"error": str(err)})
                        _drain(conn)
                    except OSError:
                        pass
                    conn.close()
        finally:
            self.close()

    def _handshake(self, ch: Channel) -> dict:
        """The stream's magic and version, then a HELLO with the right token: the HELLO."""
        magic = ch._recv_exact(len(MAGIC) + 4)
        if magic[: len(MAGIC)] != MAGIC:
            raise MigrationError("not a virtkit migration stream")
        (version,) = struct.unpack("<I", magic[len(MAGIC):])
        if version != VERSION:
            raise MigrationError(f"migration stream version {version}; this virtkit speaks {VERSION}")
        mtype, payload = ch.recv()
        if mtype != T_HELLO:
            raise MigrationError(f"expected HELLO, got {NAMES[mtype]}")
        hello = _json(payload, "HELLO")
        if not isinstance(hello, dict) or not hmac.compare_digest(str(hello.get("token", "")), self.token):
            raise MigrationError("wrong migration token")
        return hello

    def receive(self, console: Any = None, name: str | None = None) -> Any:
        """Accept the source, take the stream, return the restored machine (not started). Every failure
        is a MigrationError (told to the source too) and nothing is left allocated."""
        conn, ch, hello = self._accept()
        conn.settimeout(120)
        mem = None
        machine = None
        mirror: Any = None
        builder: threading.Thread | None = None
        built: dict[str, Any] = {}
        try:
            from virtkit.machine.config import MachineConfig
            from virtkit.machine.memory import GuestMemory

            cfg = MachineConfig.from_dict(hello.get("machine"), "migrated machine")
            cfg.name = name or hello.get("vm") or cfg.name
            size, base = hello.get("ram_size"), hello.get("ram_base")
            if not isinstance(size, int) or not isinstance(base, int) or size != cfg.memory or size % PAGE:
                raise MigrationError("HELLO: RAM layout does not match the machine config")
            disks = hello.get("disks", [])
            if (not isinstance(disks, list) or len(disks) != len(cfg.disks)
                    or not all(isinstance(d, dict) and isinstance(d.get("size"), int) for d in disks)):
                raise MigrationError("HELLO: the disks do not match the machine config")
            postcopy = hello.get("postcopy") is True
            if hello.get("copy_storage") is True:
                from virtkit.machine.mirror import TargetMirror

                mirror = TargetMirror(cfg, disks, self.disk_dir)
            if postcopy:
                from virtkit.machine import postcopy as pc

                why = pc.available()
                if why is not None:
                    raise MigrationError(why)
            mem = GuestMemory(size, base)
            # the machine is built meanwhile, in a thread, while RAM arrives and the guest still runs at the
            # source: the switch-over only restores the records and opens the disks (released at the end)

            def build() -> None:
                try:
                    built["machine"] = self._build(cfg, mem, console, disks)
                    if postcopy:
                        pc.warm_up()  # compiled now, while the source still copies: not in the downtime
                    msg: tuple[int, dict] = (T_READY, {"built": True})
                except BaseException as err:  # reported at the switch-over
                    built["error"] = err
                    msg = (T_ERROR, {"error": f"the machine could not be built here: {err}"})
                try:  # the source waits for this before it stops the guest (the main thread only reads)
                    ch.send_json(*msg)
                except OSError:
                    pass

            ch.send_json(T_READY, {})  # first: the build's imports would hold up the answer
            builder = threading.Thread(target=build, name="virtkit-migrate-build", daemon=True)
            builder.start()
            ram = mem.array[:size]
            npages = size // PAGE
            state = None
            missing = None
            ramv = memoryview(ram)
            while True:
                mtype, length, head = ch.head()
                if mtype in (T_PAGES, T_ZERO):
                    if length < 12:
                        raise MigrationError(f"short {NAMES[mtype]} frame")
                    sub = ch._recv_exact(12)
                    first, count = struct.unpack("<QI", sub)
                    if count == 0 or first + count > npages:
                        raise MigrationError(f"{NAMES[mtype]} frame for pages {first}+{count} outside RAM")
                    a, b = first * PAGE, (first + count) * PAGE
                    crc = checksum(sub, checksum(head))
                    if mtype == T_ZERO:
                        if length != 12:
                            raise MigrationError("malformed ZERO frame")
                        ram[a:b] = 0
                    else:
                        if length != 12 + count * PAGE:
                            raise MigrationError("PAGES frame length does not match its page count")
                        ch._recv_into(ramv[a:b])  # straight into RAM (a bad CRC fails the whole migration)
                        crc = checksum(ramv[a:b], crc)
                    ch.finish(mtype, crc)
                    continue
                if mtype in (T_DISK, T_DISKZERO):
                    if mirror is None:
                        raise MigrationError(f"unexpected {NAMES[mtype]} frame (the disks are shared)")
                    hs = DISK_HDR.size
                    if length < hs or (mtype == T_DISKZERO) != (length == hs):
                        raise MigrationError(f"malformed {NAMES[mtype]} frame")
                    sub = ch._recv_exact(hs)
                    data = memoryview(ch._recv_exact(length - hs)) if mtype == T_DISK else None
                    crc = checksum(sub, checksum(head))
                    ch.finish(mtype, checksum(data, crc) if data is not None else crc)
                    mirror.frame(sub, data)
                    continue
                payload = ch._recv_exact(length) if length else b""
                ch.finish(mtype, checksum(payload, checksum(head)))
                if mtype == T_STATE:
                    state = _json(payload, "STATE")
                elif mtype == T_END:
                    break
                elif mtype == T_POSTCOPY and postcopy and state is not None:
                    bits = np.frombuffer(payload, dtype=np.uint8)
                    if len(bits) != (npages + 7) // 8:
                        raise MigrationError("POSTCOPY frame: the bitmap does not match RAM")
                    missing = np.unpackbits(bits, bitorder="little")[:npages].astype(bool)
                    break
                elif mtype == T_ERROR:
                    raise MigrationError(f"the source gave up: {_json(payload, 'ERROR').get('error')}")
                else:
                    raise MigrationError(f"unexpected {NAMES[mtype]} frame")
            if not isinstance(state, dict):
                raise MigrationError("the stream ended without the device state")
            t_end = time.monotonic()
            builder.join()
            if "error" in built:
                err = built["error"]
                raise MigrationError(f"the machine could not be built here: {err}") from err
            machine = built["machine"]
            t_built = time.monotonic()
            machine.restore_state(state)
            t_restored = time.monotonic()
            if mirror is not None:
                mirror.adopt(machine)
            else:
                machine.open_deferred_disks()
            machine.attach_taps()
            if missing is not None:
                return self._go_postcopy(machine, conn, ch, mem, missing, t_built, t_restored)
            ch.send_json(T_DONE, {"build_wait_ms": (t_built - t_end) * 1000,
                                  "restore_ms": (t_restored - t_built) * 1000,
                                  "disks_ms": (time.monotonic() - t_restored) * 1000})
            machine.announce()  # the NICs' MACs now live behind this process's switch ports
            return machine
        except BaseException as err:
            msg = str(err) if isinstance(err, VirtkitError) else f"{type(err).__name__}: {err}"
            try:
                ch.send_json(T_ERROR, {"error": msg})
                _drain(conn)  # so the error reaches the source (closing with unread data would reset)
            except OSError:
                pass
            if machine is None and builder is not None:  # a machine built meanwhile is closed too
                builder.join()
                machine = built.get("machine")
            if machine is not None:
                machine.vm.close()
            if mirror is not None:
                mirror.abort()
            if mem is not None:
                try:
                    mem.close()
                except (BufferError, ValueError):  # views of it are still referenced: the collector frees it
                    pass
            if isinstance(err, MigrationError):
                raise
            if isinstance(err, (OSError, VirtkitError)):
                raise MigrationError(msg) from err
            raise
        finally:
            if not self.handed_over:
                try:
                    conn.close()
                except OSError:
                    pass

    def _go_postcopy(self, machine: Any, conn: socket.socket, ch: Channel, mem: Any, missing: np.ndarray,
                     t_built: float, t_restored: float) -> Any:
        """Post-copy on the target: RAM registered, stale pages dropped, DONE sent, the page server started;
        the machine is returned to be run (its guest faults in what has not arrived)."""
        from virtkit.machine.postcopy import Incoming

        def lost(msg: str) -> None:
            machine.vm.stop("failed", msg)

        incoming = Incoming(mem, conn, missing, lost)
        machine.vm.closers.insert(0, ("post-copy", incoming.close))
        machine.postcopy = incoming
        ch.send_json(T_DONE, {"restore_ms": (t_restored - t_built) * 1000, "postcopy": True,
                              "missing": int(missing.sum())})
        self.handed_over = True
        incoming.start()
        machine.announce()
        return machine

    @staticmethod
    def _build(cfg: Any, mem: Any, console: Any, disks: list[dict]) -> Any:
        import virtkit.storage  # noqa: F401 - imported now, not while the guest waits at the switch-over
        import virtkit.storage.backend  # noqa: F401
        from virtkit.machine.builder import Builder
        from virtkit.machine.console import ConsoleHub

        hub = console if isinstance(console, ConsoleHub) else ConsoleHub()
        if callable(console) and not isinstance(console, ConsoleHub):
            hub.sinks.append(console)
        return Builder(cfg, hub, restoring=True, memory=mem, deferred_disks=disks).build()


def _drain(conn: socket.socket, seconds: float = 2.0) -> None:
    """Stop sending, then read and drop what the peer still sends until it closes (at most ``seconds``)."""
    conn.shutdown(socket.SHUT_WR)
    conn.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if not conn.recv(1 << 16):
                return
        except TimeoutError:
            continue
        except OSError:
            return


def default_bandwidth(text: str | None) -> float | None:
    """``--bandwidth`` (``128M`` = 128 MiB/s, ``0``/None = unlimited) in bytes/s."""
    if not text:
        return None
    from virtkit.units import parse_size

    v = parse_size(text, what="bandwidth", default_unit="M")
    return float(v) or None
