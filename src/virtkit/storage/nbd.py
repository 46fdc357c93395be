"""An NBD server (the protocol of nbd's doc/proto.md) exporting any :class:`BlockBackend`.

Fixed-newstyle handshake (NBD_OPT_GO / INFO / LIST / ABORT / EXPORT_NAME), simple replies,
READ / WRITE / FLUSH / TRIM / WRITE_ZEROES / DISC with FUA. One thread per client: the hot
path is ``recv_into`` a preallocated buffer, ``os.preadv``/``pwritev`` and one ``sendmsg`` of
header + payload, all of which release the GIL. A misbehaving client is logged and dropped;
the other clients keep being served.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import threading
from dataclasses import dataclass, field

from virtkit.errors import VirtkitError
from virtkit.storage.backend import BlockBackend, RawFile

log = logging.getLogger("virtkit.nbd")

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC_OPT = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2
FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES = 1, 2

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_INFO, OPT_GO = 1, 2, 3, 6, 7
OPT_STRUCTURED_REPLY, OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT = 8, 9, 10
REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT = 1, 2, 3, 4
REP_ERR_UNSUP, REP_ERR_POLICY, REP_ERR_INVALID, REP_ERR_UNKNOWN, REP_ERR_TOO_BIG = (
    (1 << 31) + 1, (1 << 31) + 2, (1 << 31) + 3, (1 << 31) + 6, (1 << 31) + 9)
INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

TF_HAS_FLAGS, TF_READ_ONLY, TF_SEND_FLUSH, TF_SEND_FUA = 1, 2, 4, 8
TF_SEND_TRIM, TF_SEND_WRITE_ZEROES, TF_CAN_MULTI_CONN = 32, 64, 256

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_WRITE_ZEROES = 0, 1, 2, 3, 4, 5, 6
CMD_BLOCK_STATUS = 7
CMD_FLAG_FUA, CMD_FLAG_REQ_ONE = 1, 8
CMD_NAMES = {0: "READ", 1: "WRITE", 2: "DISC", 3: "FLUSH", 4: "TRIM", 5: "CACHE", 6: "WRITE_ZEROES",
             7: "BLOCK_STATUS"}

STRUCTURED_REPLY_MAGIC = 0x668E33EF
REPLY_FLAG_DONE = 1
REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_ERROR = 1, 5, (1 << 15) + 1
STATE_HOLE, STATE_ZERO = 1, 2
META_ALLOCATION = "base:allocation"
META_ALLOCATION_ID = 1
META_DIRTY_BITMAP = "qemu:dirty-bitmap:"  # QEMU's context: which chunks a dirty bitmap marks (flag 1: dirty)
STATE_DIRTY = 1
MAX_STATUS_SPAN = 256 << 20  # BLOCK_STATUS answers cover at most this much per request

MAX_REQUEST = 32 << 20  # the largest READ/WRITE payload we accept (and advertise)
MAX_OPTION = 64 << 10  # the largest option payload during the handshake
HANDSHAKE_TIMEOUT = 30.0
SOCKBUF = 4 << 20
RECV_BUF = 256 << 10  # request headers (and small WRITE payloads) are received in batches into this
SMALL_READ = 64 << 10  # raw-file READs up to this size are queued and answered in batches
SEND_BATCH = 1 << 20
_ZEROS = memoryview(bytes(1 << 20))

REQ = struct.Struct(">IHHQQI")
REPLY = struct.Struct(">IIQ")
CHUNK = struct.Struct(">IHHQI")
CHUNK_DATA = struct.Struct(">IHHQIQ")
OPT_HDR = struct.Struct(">QII")
OPT_REPLY = struct.Struct(">QIII")


class NbdError(VirtkitError):
    """An NBD server that cannot start (bad address, no exports...)."""


class _Drop(Exception):
    """The client broke the protocol or went away: log it, close its socket, keep serving others."""


@dataclass
class NbdExport:
    """A named export: any block backend, optionally forced read-only."""

    name: str
    backend: BlockBackend
    read_only: bool = False
    description: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    clients: int = 0  # connections in the transmission phase (read without the lock: a hint)

    def __post_init__(self) -> None:
        self.read_only = self.read_only or bool(getattr(self.backend, "read_only", False))
        # Raw files are served lock-free (pread/pwrite are atomic per call); others are serialised.
        self.concurrent = isinstance(self.backend, RawFile)

    @property
    def flags(self) -> int:
        f = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_CAN_MULTI_CONN
        if self.read_only:
            f |= TF_READ_ONLY
        else:
            f |= TF_SEND_TRIM | TF_SEND_WRITE_ZEROES
        return f


@dataclass
class _Session:
    """What one client negotiated during the handshake."""

    export: NbdExport
    structured: bool = False
    contexts: list[str] = field(default_factory=list)  # the meta contexts selected, in context-id order

    @property
    def allocation(self) -> bool:
        """The base:allocation meta context was selected."""
        return META_ALLOCATION in self.contexts


class NbdServer:
    """Serve a set of named exports over TCP and/or Unix sockets, one thread per client."""

    def __init__(self, exports: list[NbdExport], max_clients: int = 256) -> None:
        if not exports:
            raise NbdError("an NBD server needs at least one export")
        names = [e.name for e in exports]
        if len(set(names)) != len(names):
            raise NbdError(f"duplicate export names in {names}")
        self.exports = {e.name: e for e in exports}
        self.default = exports[0]
        self._listeners: list[socket.socket] = []
        self._clients: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stopping = False
        self.addresses: list[str] = []
        self._nclients = 0
        self.max_clients = max_clients

    # ------------------------------------------------------------------ listening

    def listen_tcp(self, host: str = "127.0.0.1", port: int = 10809) -> tuple[str, int]:
        """Listen on a TCP address (port 0 picks a free one); return the bound address."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, _, _, _, addr = infos[0]
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
            s.listen(64)
        except OSError as err:
            raise NbdError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
        self._listeners.append(s)
        bound = s.getsockname()[:2]
        self.addresses.append(f"nbd://{bound[0]}:{bound[1]}")
        return bound[0], bound[1]

    def listen_unix(self, path: str) -> str:
        """Listen on a Unix socket path (replacing a stale socket file)."""
        try:
            if os.path.exists(path):
                import stat

                if not stat.S_ISSOCK(os.stat(path).st_mode):
                    raise NbdError(f"{path!r} exists and is not a socket")
                os.unlink(path)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(path)
            s.listen(64)
        except OSError as err:
            raise NbdError(f"cannot listen on unix socket {path!r}: {err.strerror or err}") from None
        self._listeners.append(s)
        self.addresses.append(f"nbd+unix:///?socket={path}")
        return path

    def start(self) -> None:
        """Accept clients in background threads (returns at once)."""
        for s in self._listeners:
            t = threading.Thread(target=self._accept_loop, args=(s,), name="nbd-accept", daemon=True)
            t.start()
            self._threads.append(t)

    def serve_forever(self) -> None:
        """Accept clients until :meth:`stop` is called (or KeyboardInterrupt)."""
        self.start()
        try:
            for t in self._threads:
                while t.is_alive():
                    t.join(0.5)
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop accepting, disconnect every client and flush the exports."""
        self._stopping = True
        for s in self._listeners:
            try:
                if s.family == socket.AF_UNIX:
                    path = s.getsockname()
                    if path and os.path.exists(path):
                        os.unlink(path)
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        with self._lock:
            clients = list(self._clients)
        for c in clients:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for e in self.exports.values():
            if not e.read_only:
                with e.lock:
                    try:
                        e.backend.flush()
                    except (OSError, VirtkitError) as err:
                        log.error("flushing export %r failed: %s", e.name, err)

    def __enter__(self) -> NbdServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping:
            try:
                conn, addr = listener.accept()
            except OSError:
                return
            self._nclients += 1
            peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else f"unix#{self._nclients}"
            with self._lock:
                busy = len(self._clients) >= self.max_clients
                if not busy:
                    self._clients.add(conn)
            if busy:  # a flood of connections must not exhaust threads and memory
                log.warning("client %s refused: already serving %d clients", peer, self.max_clients)
                conn.close()
                continue
            t = threading.Thread(target=self._client, args=(conn, peer), name=f"nbd-{peer}", daemon=True)
            t.start()

    # ------------------------------------------------------------------ one client

    def _client(self, sock: socket.socket, peer: str) -> None:
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, SOCKBUF)
                except OSError:
                    pass
            sock.settimeout(HANDSHAKE_TIMEOUT)
            session = self._handshake(sock, peer)
            if session is None:
                return
            sock.settimeout(None)
            log.info("client %s: attached to export %r", peer, session.export.name)
            with self._lock:
                session.export.clients += 1
            try:
                self._transmission(sock, peer, session)
            finally:
                with self._lock:
                    session.export.clients -= 1
        except _Drop as why:
            log.warning("client %s dropped: %s", peer, why)
        except TimeoutError:
            log.warning("client %s dropped: handshake timed out", peer)
        except OSError as err:
            if not self._stopping:
                log.warning("client %s dropped: %s", peer, err.strerror or err)
        except Exception:  # never let one client take the server down
            log.exception("client %s dropped after an internal error", peer)
        finally:
            with self._lock:
                self._clients.discard(sock)
            try:
                sock.close()
            except OSError:
                pass

    @staticmethod
    def _recv_exact(sock: socket.socket, view: memoryview, what: str, eof_ok: bool = False) -> bool:
        got, n = 0, len(view)
        while got < n:
            k = sock.recv_into(view[got:], n - got, socket.MSG_WAITALL)
            if k == 0:
                if got == 0 and eof_ok:
                    return False
                raise _Drop(f"disconnected in the middle of {what} ({got}/{n} bytes)")
            got += k
        return True

    @staticmethod
    def _send_file(sock: socket.socket, head: bytes, fd: int, offset: int, length: int) -> None:
        """Send a reply header then ``length`` bytes of ``fd`` at ``offset`` without copying them."""
        if head:
            sock.sendall(head, socket.MSG_MORE)
        done = 0
        try:
            while done < length:
                k = os.sendfile(sock.fileno(), fd, offset + done, length - done)
                if k == 0:  # the file shrank under us: the export's size still promises zeros
                    sock.sendall(bytes(length - done))
                    break
                done += k
        except OSError as err:
            if err.errno in (errno.EPIPE, errno.ECONNRESET):
                raise
            raise _Drop(f"read error after the reply header was sent: {err.strerror}") from None

    def _send_pieces(self, sock: socket.socket, head: bytes, e: NbdExport, pieces: list) -> None:
        """Send a READ reply from a ``map_read`` mapping: file pieces by sendfile, zeros, and the
        rest (backing file, compressed clusters) through ``readinto``."""
        sock.sendall(head, socket.MSG_MORE)
        fd = e.backend.fd
        for voff, n, host in pieces:
            if host >= 0:
                self._send_file(sock, b"", fd, host, n)
            elif host == -1:
                while n > 0:
                    k = min(n, len(_ZEROS))
                    sock.sendall(_ZEROS[:k], socket.MSG_MORE)
                    n -= k
            else:
                buf = bytearray(n)
                try:
                    with e.lock:
                        e.backend.readinto(voff, buf)
                except (OSError, VirtkitError) as err:
                    raise _Drop(f"read error after the reply header was sent: {err}") from None
                sock.sendall(buf, socket.MSG_MORE)

    @staticmethod
    def _send_all(sock: socket.socket, parts: list) -> None:
        """Send every part, resuming a partial ``sendmsg`` where it stopped (without copying the rest)."""
        sent = sock.sendmsg(parts)
        i = 0
        while i < len(parts):
            n = len(parts[i])
            if sent < n:  # parts[i] went out partly: send its rest and what follows
                parts, i = [memoryview(parts[i])[sent:]] + parts[i + 1:], 0
                sent = sock.sendmsg(parts[:512])
                continue
            sent -= n
            i += 1

    def _opt_reply(self, sock: socket.socket, opt: int, rtype: int, data: bytes = b"") -> None:
        self._send_all(sock, [OPT_REPLY.pack(REPLY_MAGIC_OPT, opt, rtype, len(data)), data])

    def _lookup(self, name: str) -> NbdExport | None:
        e = self.exports.get(name)
        if e is None and name == "":
            e = self.default
        return e

    def _handshake(self, sock: socket.socket, peer: str) -> _Session | None:
        sock.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        cflags = bytearray(4)
        self._recv_exact(sock, memoryview(cflags), "client flags")
        (client_flags,) = struct.unpack(">I", cflags)
        if client_flags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES):
            raise _Drop(f"unknown client flags {client_flags:#x}")
        no_zeroes = bool(client_flags & FLAG_C_NO_ZEROES)
        structured = False
        meta_export: NbdExport | None = None  # export the meta contexts were set for
        selected: list[str] = []
        hdr = bytearray(OPT_HDR.size)
        for _ in range(1000):  # a client that never picks an export is eventually dropped
            self._recv_exact(sock, memoryview(hdr), "an option header")
            magic, opt, length = OPT_HDR.unpack(hdr)
            if magic != IHAVEOPT:
                raise _Drop(f"bad option magic {magic:#x}")
            if length > MAX_OPTION:
                raise _Drop(f"option {opt} of {length} bytes is too large")
            data = bytearray(length)
            self._recv_exact(sock, memoryview(data), f"option {opt}")
            if opt == OPT_EXPORT_NAME:
                e = self._lookup(data.decode(errors="replace"))
                if e is None:
                    raise _Drop(f"unknown export {data.decode(errors='replace')!r} (NBD_OPT_EXPORT_NAME)")
                sock.sendall(struct.pack(">QH", e.backend.size, e.flags) + (b"" if no_zeroes else bytes(124)))
                return _Session(e, structured, selected if meta_export is e else [])
            if opt == OPT_ABORT:
                self._opt_reply(sock, opt, REP_ACK)
                log.info("client %s aborted the handshake", peer)
                return None
            if opt == OPT_LIST:
                if length:
                    self._opt_reply(sock, opt, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")
                    continue
                for e in self.exports.values():
                    name = e.name.encode()
                    self._opt_reply(sock, opt, REP_SERVER, struct.pack(">I", len(name)) + name + e.description.encode())
                self._opt_reply(sock, opt, REP_ACK)
                continue
            if opt in (OPT_INFO, OPT_GO):
                e, why = self._parse_info(data)
                if e is None:
                    self._opt_reply(sock, opt, REP_ERR_UNKNOWN if why.startswith("unknown") else REP_ERR_INVALID,
                                    why.encode())
                    continue
                self._opt_reply(sock, opt, REP_INFO, struct.pack(">HQH", INFO_EXPORT, e.backend.size, e.flags))
                self._opt_reply(sock, opt, REP_INFO, struct.pack(">HIII", INFO_BLOCK_SIZE, 1, 4096, MAX_REQUEST))
                if e.description:
                    self._opt_reply(sock, opt, REP_INFO, struct.pack(">H", INFO_DESCRIPTION) + e.description.encode())
                self._opt_reply(sock, opt, REP_ACK)
                if opt == OPT_GO:
                    return _Session(e, structured, selected if meta_export is e else [])
                continue
            if opt == OPT_STRUCTURED_REPLY:
                if length:
                    self._opt_reply(sock, opt, REP_ERR_INVALID, b"NBD_OPT_STRUCTURED_REPLY takes no data")
                    continue
                structured = True
                self._opt_reply(sock, opt, REP_ACK)
                continue
            if opt in (OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT):
                if not structured:
                    self._opt_reply(sock, opt, REP_ERR_INVALID, b"negotiate structured replies first")
                    continue
                e, queries, why = self._parse_meta(data)
                if e is None:
                    self._opt_reply(sock, opt, REP_ERR_UNKNOWN if why.startswith("unknown") else REP_ERR_INVALID,
                                    why.encode())
                    continue
                wanted = self._match_contexts(e, queries, listing=opt == OPT_LIST_META_CONTEXT)
                if opt == OPT_SET_META_CONTEXT:
                    meta_export, selected = (e, wanted) if wanted else (None, [])
                for name in wanted:
                    ctx = self._context_id(e, name) if opt == OPT_SET_META_CONTEXT else 0
                    self._opt_reply(sock, opt, REP_META_CONTEXT, struct.pack(">I", ctx) + name.encode())
                self._opt_reply(sock, opt, REP_ACK)
                continue
            self._opt_reply(sock, opt, REP_ERR_UNSUP, f"option {opt} is not supported".encode())
        raise _Drop("too many options without choosing an export")

    @staticmethod
    def _contexts(e: NbdExport) -> list[str]:
        """Every meta context ``e`` offers: base:allocation, then one per dirty bitmap of a backup view."""
        return [META_ALLOCATION] + [META_DIRTY_BITMAP + n for n in sorted(getattr(e.backend, "bitmaps", {}) or {})]

    def _context_id(self, e: NbdExport, name: str) -> int:
        return META_ALLOCATION_ID + self._contexts(e).index(name)

    def _match_contexts(self, e: NbdExport, queries: list[str], listing: bool) -> list[str]:
        """The contexts the queries select; listing also takes namespace queries (``base:``, ``qemu:``...)."""
        offered = self._contexts(e)
        if listing and not queries:
            return offered
        out = []
        for name in offered:
            for q in queries:
                if q == name or listing and (q in ("base:", "qemu:", META_DIRTY_BITMAP) and name.startswith(q)):
                    out.append(name)
                    break
        return out

    def _parse_meta(self, data: bytearray) -> tuple[NbdExport | None, list[str], str]:
        if len(data) < 8:
            return None, [], "meta context option too short"
        (nlen,) = struct.unpack_from(">I", data, 0)
        if 4 + nlen + 4 > len(data):
            return None, [], "export name length overruns the option"
        name = data[4:4 + nlen].decode(errors="replace")
        (nq,) = struct.unpack_from(">I", data, 4 + nlen)
        pos, queries = 8 + nlen, []
        for _ in range(nq):
            if pos + 4 > len(data):
                return None, [], "meta context query overruns the option"
            (qlen,) = struct.unpack_from(">I", data, pos)
            if pos + 4 + qlen > len(data):
                return None, [], "meta context query overruns the option"
            queries.append(data[pos + 4:pos + 4 + qlen].decode(errors="replace"))
            pos += 4 + qlen
        if pos != len(data):
            return None, [], "meta context option has trailing data"
        e = self._lookup(name)
        if e is None:
            return None, [], f"unknown export {name!r}"
        return e, queries, ""

    def _parse_info(self, data: bytearray) -> tuple[NbdExport | None, str]:
        if len(data) < 6:
            return None, "NBD_OPT_INFO/GO data too short"
        (nlen,) = struct.unpack_from(">I", data, 0)
        if 4 + nlen + 2 > len(data):
            return None, "export name length overruns the option"
        name = data[4:4 + nlen].decode(errors="replace")
        (nreq,) = struct.unpack_from(">H", data, 4 + nlen)
        if 4 + nlen + 2 + 2 * nreq != len(data):
            return None, "information request count does not match the option length"
        e = self._lookup(name)
        if e is None:
            return None, f"unknown export {name!r}"
        return e, ""

    # ------------------------------------------------------------------ transmission

    def _transmission(self, sock: socket.socket, peer: str, session: _Session) -> None:
        """Serve requests until DISC/EOF. Headers are read in batches from one receive buffer and
        the replies to every request already buffered go out in one ``sendmsg``."""
        e = session.export
        structured = session.structured
        rb = bytearray(RECV_BUF)
        rv = memoryview(rb)
        start = end = 0
        out: list = []  # reply parts not sent yet
        out_bytes = 0
        big = bytearray(1 << 20)  # large READ/WRITE payloads (sent or written before the next request)
        bigv = memoryview(big)
        backend = e.backend
        lock = None if e.concurrent else e.lock
        raw_fd = backend.fd if e.concurrent else -1
        map_read = getattr(backend, "map_read", None) if hasattr(backend, "unpin") else None
        size = backend.size
        hsize = REQ.size
        while True:
            if len(out) >= 512:  # stay well below IOV_MAX for sendmsg
                self._send_all(sock, out)
                out, out_bytes = [], 0
            if end - start < hsize:
                if out:
                    self._send_all(sock, out)
                    out, out_bytes = [], 0
                if start:
                    rv[:end - start] = rv[start:end]
                    end -= start
                    start = 0
                while end < hsize:
                    k = sock.recv_into(rv[end:], RECV_BUF - end)
                    if k == 0:
                        if end == 0:
                            log.info("client %s disconnected", peer)
                            return
                        raise _Drop(f"disconnected in the middle of a request header ({end}/{hsize} bytes)")
                    end += k
            magic, flags, cmd, handle, offset, length = REQ.unpack_from(rb, start)
            start += hsize
            if magic != REQUEST_MAGIC:
                raise _Drop(f"bad request magic {magic:#x}")
            err = 0
            payload = None
            if cmd == CMD_READ:
                if length > MAX_REQUEST or offset + length > size:
                    err = errno.EINVAL
                elif raw_fd >= 0 and length <= SMALL_READ:
                    try:
                        payload = os.pread(raw_fd, length, offset)
                        if len(payload) < length:
                            payload += bytes(length - len(payload))
                    except OSError as ex:
                        err = ex.errno or errno.EIO
                elif length <= SMALL_READ:
                    payload = bytearray(length)
                    err = self._call(lock, backend.readinto, offset, payload)
                elif raw_fd >= 0 and e.clients == 1:
                    # Large raw READ on the only connection: header, then sendfile() straight from the page
                    # cache. With several connections (a multi-conn client such as nbdcopy) the copy below is
                    # faster on loopback (measured by bench/storage.py: 15% at 2 connections on 2 CPUs).
                    if out:
                        self._send_all(sock, out)
                        out, out_bytes = [], 0
                    if structured:
                        head = CHUNK_DATA.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA,
                                               handle, length + 8, offset)
                    else:
                        head = REPLY.pack(SIMPLE_REPLY_MAGIC, 0, handle)
                    self._send_file(sock, head, raw_fd, offset, length)
                    continue
                elif map_read is not None:  # large qcow2 READ: sendfile() the mapped clusters
                    if out:
                        self._send_all(sock, out)
                        out, out_bytes = [], 0
                    try:
                        with e.lock:
                            pieces = map_read(offset, length)
                    except (OSError, VirtkitError) as ex:
                        log.error("read mapping failed: %s", ex)
                        err = errno.EIO
                    else:
                        try:
                            if structured:
                                head = CHUNK_DATA.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE,
                                                       REPLY_TYPE_OFFSET_DATA, handle, length + 8, offset)
                            else:
                                head = REPLY.pack(SIMPLE_REPLY_MAGIC, 0, handle)
                            self._send_pieces(sock, head, e, pieces)
                        finally:
                            with e.lock:
                                backend.unpin()
                        continue
                else:
                    if out:  # the big buffer is reused: send what is queued first
                        self._send_all(sock, out)
                        out, out_bytes = [], 0
                    if length > len(big):
                        big = bytearray(length)
                        bigv = memoryview(big)
                    payload = bigv[:length]
                    if raw_fd >= 0:
                        try:
                            got = os.preadv(raw_fd, [payload], offset)
                            if got < length:
                                payload[got:] = bytes(length - got)
                        except OSError as ex:
                            err = ex.errno or errno.EIO
                    else:
                        err = self._call(lock, backend.readinto, offset, payload)
            elif cmd == CMD_WRITE:
                if length > MAX_REQUEST:
                    raise _Drop(f"WRITE of {length} bytes exceeds the {MAX_REQUEST}-byte limit")
                have = end - start
                if length <= have:
                    data = rv[start:start + length]
                    start += length
                else:
                    if length > len(big):
                        big = bytearray(length)
                        bigv = memoryview(big)
                    data = bigv[:length]
                    data[:have] = rv[start:end]
                    start = end = 0
                    self._recv_exact(sock, data[have:], "a WRITE payload")
                if e.read_only:
                    err = errno.EPERM
                elif offset + length > size:
                    err = errno.EINVAL
                else:
                    err = self._call(lock, backend.write, offset, data)
                    if not err and flags & CMD_FLAG_FUA:
                        err = self._call(lock, backend.flush)
            elif cmd == CMD_FLUSH:
                err = 0 if e.read_only else self._call(lock, backend.flush)
            elif cmd in (CMD_TRIM, CMD_WRITE_ZEROES):
                if e.read_only:
                    err = errno.EPERM
                elif offset + length > size:
                    err = errno.EINVAL
                else:
                    fn = backend.discard if cmd == CMD_TRIM else backend.write_zeroes
                    err = self._call(lock, fn, offset, length)
                    if not err and flags & CMD_FLAG_FUA:
                        err = self._call(lock, backend.flush)
            elif cmd == CMD_CACHE:
                err = 0 if offset + length <= size else errno.EINVAL
            elif cmd == CMD_BLOCK_STATUS:
                if not session.contexts or length == 0 or offset + length > size:
                    err = errno.EINVAL
                else:
                    one = bool(flags & CMD_FLAG_REQ_ONE)
                    try:
                        bodies = []
                        for name in session.contexts:
                            if name == META_ALLOCATION:
                                ext = self._extents(e, lock, offset, length, one)
                            else:
                                b = backend.bitmaps[name[len(META_DIRTY_BITMAP):]]
                                ext = [(n, STATE_DIRTY if dirty else 0)
                                       for n, dirty in b.extents(offset, min(length, MAX_STATUS_SPAN))]
                                ext = ext[:1] if one else ext
                            bodies.append(struct.pack(f">I{2 * len(ext)}I", self._context_id(e, name),
                                                      *[v for pair in ext for v in pair]))
                    except (OSError, VirtkitError) as ex:
                        log.error("block status failed: %s", ex)
                        err = errno.EIO
                    else:
                        for i, body in enumerate(bodies):
                            out.append(CHUNK.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE if i == len(bodies) - 1
                                                  else 0, REPLY_TYPE_BLOCK_STATUS, handle, len(body)) + body)
                        continue
            elif cmd == CMD_DISC:
                if out:
                    self._send_all(sock, out)
                log.info("client %s disconnected (NBD_CMD_DISC)", peer)
                if not e.read_only:
                    self._call(lock, backend.flush)
                return
            else:
                err = errno.EINVAL
            if err:
                payload = None
                if err not in (errno.EPERM, errno.EINVAL, errno.ENOSPC, errno.EIO, errno.ENOMEM, errno.EOVERFLOW):
                    err = errno.EIO
                if err == errno.EINVAL:
                    log.debug("client %s: %s at %d +%d rejected (EINVAL)", peer, CMD_NAMES.get(cmd, cmd), offset,
                              length)
                if structured and cmd in (CMD_READ, CMD_BLOCK_STATUS):
                    out.append(CHUNK.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, handle, 6)
                               + struct.pack(">IH", err, 0))
                    continue
            if payload is not None and structured:
                out.append(CHUNK_DATA.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, handle,
                                           length + 8, offset))
            else:
                out.append(REPLY.pack(SIMPLE_REPLY_MAGIC, err, handle))
            if payload is not None:
                out.append(payload)
                out_bytes += length
                if payload.__class__ is memoryview or out_bytes >= SEND_BATCH or len(out) >= 512:
                    self._send_all(sock, out)
                    out, out_bytes = [], 0

    @staticmethod
    def _extents(e: NbdExport, lock: threading.Lock | None, offset: int, length: int,
                 one: bool) -> list[tuple[int, int]]:
        """base:allocation descriptors ``(length, flags)`` from ``offset`` (merged, at least one)."""
        length = min(length, MAX_STATUS_SPAN)
        backend = e.backend
        raw: list[tuple[int, int]] = []
        status = getattr(backend, "block_status", None)
        if status is not None:
            if lock is None:
                ext = status(offset, length)
            else:
                with lock:
                    ext = status(offset, length)
            raw = [(n, STATE_HOLE | STATE_ZERO if kind == "zero" else 0) for _, n, kind in ext]
        elif isinstance(backend, RawFile):
            raw = [(n, 0 if data else STATE_HOLE | STATE_ZERO) for _, n, data in backend.extents(offset, length)]
        else:
            raw = [(length, 0)]
        merged: list[tuple[int, int]] = []
        for n, f in raw:
            if n <= 0:
                continue
            if merged and merged[-1][1] == f:
                merged[-1] = (merged[-1][0] + n, f)
            else:
                merged.append((n, f))
        merged = merged or [(length, 0)]
        return merged[:1] if one else merged

    @staticmethod
    def _call(lock: threading.Lock | None, fn, *args) -> int:
        try:
            if lock is None:
                fn(*args)
            else:
                with lock:
                    fn(*args)
            return 0
        except OSError as ex:
            log.error("I/O error: %s", ex)
            return ex.errno if ex.errno in (errno.ENOSPC, errno.EIO) else errno.EIO
        except VirtkitError as ex:
            log.error("request failed: %s", ex)
            msg = str(ex)
            return errno.EPERM if "read-only" in msg else errno.EINVAL if "outside device" in msg else errno.EIO
