"""The NBD server against real clients (nbdinfo, nbdcopy from libnbd; qemu-img/qemu-io) and a
hostile hand-written client: garbage, oversized and out-of-range requests, mid-request
disconnects, read-only exports; other clients keep being served throughout."""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import require_tool
from virtkit.storage import open_disk
from virtkit.storage.nbd import (
    IHAVEOPT,
    NBDMAGIC,
    OPT_ABORT,
    OPT_EXPORT_NAME,
    OPT_GO,
    OPT_LIST,
    REP_ACK,
    REP_ERR_UNKNOWN,
    REP_INFO,
    REP_SERVER,
    REPLY_MAGIC_OPT,
    NbdError,
    NbdExport,
    NbdServer,
)
from virtkit.storage.qcow2 import Qcow2

SIZE = 8 << 20


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=120, **kw)


@pytest.fixture
def disks(tmp_path):
    raw = str(tmp_path / "disk.raw")
    with open(raw, "wb") as f:
        f.write(random.Random(1).randbytes(SIZE))
    q = str(tmp_path / "disk.qcow2")
    Qcow2.create(q, SIZE)
    ro = str(tmp_path / "ro.raw")
    with open(ro, "wb") as f:
        f.write(b"R" * SIZE)
    return {"raw": raw, "qcow2": q, "ro": ro}


@pytest.fixture
def server(disks, tmp_path):
    exports = [NbdExport("raw", open_disk(disks["raw"])), NbdExport("qcow2", open_disk(disks["qcow2"])),
               NbdExport("ro", open_disk(disks["ro"]), read_only=True, description="read-only disk")]
    srv = NbdServer(exports)
    host, port = srv.listen_tcp("127.0.0.1", 0)
    sock = str(tmp_path / "nbd.sock")
    srv.listen_unix(sock)
    srv.start()
    srv.url = f"nbd://{host}:{port}"
    srv.port = port
    srv.sock = sock
    yield srv
    srv.stop()
    for e in exports:
        e.backend.close()


class Client:
    """A minimal NBD client speaking the raw protocol (so tests can also misbehave)."""

    def __init__(self, port: int, export: str = "raw") -> None:
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        magic, opt, flags = struct.unpack(">QQH", self.recv(18))
        assert (magic, opt) == (NBDMAGIC, IHAVEOPT) and flags & 1
        self.s.sendall(struct.pack(">I", 3))
        if export is not None:
            self.go(export)

    def recv(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.s.recv(n - len(out))
            if not chunk:
                raise ConnectionError("server closed the connection")
            out += chunk
        return out

    def option(self, opt: int, data: bytes = b"") -> None:
        self.s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)

    def opt_reply(self) -> tuple[int, int, bytes]:
        magic, opt, rtype, length = struct.unpack(">QIII", self.recv(20))
        assert magic == REPLY_MAGIC_OPT
        return opt, rtype, self.recv(length)

    def go(self, name: str) -> int:
        n = name.encode()
        self.option(OPT_GO, struct.pack(">I", len(n)) + n + struct.pack(">H", 0))
        while True:
            _, rtype, data = self.opt_reply()
            if rtype == REP_INFO and struct.unpack(">H", data[:2])[0] == 0:
                self.size, self.flags = struct.unpack(">QH", data[2:])
            elif rtype == REP_ACK:
                return 0
            elif rtype & (1 << 31):
                return rtype

    def request(self, cmd: int, offset: int, length: int, payload: bytes = b"", flags: int = 0,
                handle: int = 7) -> tuple[int, bytes]:
        self.s.sendall(struct.pack(">IHHQQI", 0x25609513, flags, cmd, handle, offset, length) + payload)
        magic, err, h = struct.unpack(">IIQ", self.recv(16))
        assert magic == 0x67446698 and h == handle
        data = self.recv(length) if cmd == 0 and err == 0 else b""
        return err, data

    def close(self) -> None:
        self.s.close()


# ---------------------------------------------------------------- real clients


def test_nbdinfo_lists_exports_and_sizes(server):
    require_tool("nbdinfo")
    p = run("nbdinfo", "--list", "--json", server.url)
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    exports = {e["export-name"]: e for e in info["exports"]}
    assert set(exports) == {"raw", "qcow2", "ro"}
    assert exports["raw"]["export-size"] == SIZE and exports["ro"]["is_read_only"] is True
    assert exports["ro"]["description"] == "read-only disk"
    assert exports["raw"]["can_trim"] and exports["raw"]["can_zero"] and exports["raw"]["can_flush"]
    p = run("nbdinfo", "--size", f"nbd+unix:///qcow2?socket={server.sock}")
    assert p.stdout.strip() == str(SIZE)


@pytest.mark.parametrize("export", ["raw", "qcow2"])
def test_nbdcopy_write_then_read_back(server, disks, tmp_path, export):
    require_tool("nbdcopy")
    src = tmp_path / "src.bin"
    data = random.Random(2).randbytes(SIZE)
    src.write_bytes(data)
    p = run("nbdcopy", str(src), f"{server.url}/{export}")
    assert p.returncode == 0, p.stderr
    out = tmp_path / "out.bin"
    p = run("nbdcopy", f"nbd+unix:///{export}?socket={server.sock}", str(out))
    assert p.returncode == 0, p.stderr
    assert out.read_bytes() == data


@pytest.mark.parametrize("connections", [1, 4])
def test_large_reads_on_one_and_many_connections(server, disks, tmp_path, connections):
    """One connection reads through sendfile(), several through a copy (see nbd.py): both return the data."""
    require_tool("nbdcopy")
    data = random.Random(connections).randbytes(SIZE)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    assert run("nbdcopy", str(src), f"{server.url}/raw").returncode == 0
    out = tmp_path / "out.bin"
    p = run("nbdcopy", f"--connections={connections}", "--threads=2", "--request-size=1048576",
            f"{server.url}/raw", str(out))
    assert p.returncode == 0, p.stderr
    assert out.read_bytes() == data


class _TrickleSocket:
    """A socket whose sendmsg takes at most ``k`` bytes per call, as a signal-interrupted one can."""

    def __init__(self, k: int) -> None:
        self.k, self.got = k, bytearray()

    def sendmsg(self, parts: list) -> int:
        flat = b"".join(bytes(p) for p in parts)[:self.k]
        self.got += flat
        return len(flat)


@pytest.mark.parametrize("k", [1, 5, 7, 64, 10_000])
def test_send_all_resumes_partial_sends_in_order(k):
    parts = [b"head", memoryview(bytearray(b"x" * 300)), b"", b"tail" * 9, bytearray(b"y" * 33)]
    sock = _TrickleSocket(k)
    NbdServer._send_all(sock, list(parts))  # type: ignore[arg-type]
    assert bytes(sock.got) == b"".join(bytes(p) for p in parts)


def test_qemu_tools_over_nbd_urls(server, disks, tmp_path):
    require_tool("qemu-img", "qemu-io")
    p = run("qemu-io", "-f", "raw", "-c", "write -P 0x6b 1M 2M", "-c", "write -z 4M 1M", f"{server.url}/qcow2")
    assert p.returncode == 0, p.stdout + p.stderr
    out = str(tmp_path / "via-nbd.raw")
    p = run("qemu-img", "convert", "-f", "raw", "-O", "raw", f"{server.url}/qcow2", out)
    assert p.returncode == 0, p.stderr
    want = bytes(1 << 20) + b"\x6b" * (2 << 20) + bytes(SIZE - (3 << 20))
    assert open(out, "rb").read() == want
    p = run("qemu-io", "-r", "-f", "raw", "-c", "read -P 0x52 0 1M", f"{server.url}/ro")
    assert p.returncode == 0 and "read 1048576/1048576" in p.stdout
    server.exports["qcow2"].backend.flush()
    p = run("qemu-img", "check", "-U", disks["qcow2"])
    assert p.returncode == 0, p.stdout + p.stderr


# ---------------------------------------------------------------- protocol details and hostile clients


def test_read_write_flush_trim_zeroes(server, disks):
    c = Client(server.port, "raw")
    assert c.size == SIZE
    assert c.request(1, 4096, 5, b"hello", flags=1) == (0, b"")  # WRITE + FUA
    assert c.request(0, 4096, 5) == (0, b"hello")
    assert c.request(3, 0, 0)[0] == 0
    assert c.request(4, 0, 65536)[0] == 0  # TRIM
    assert c.request(0, 4096, 5) == (0, bytes(5))
    assert c.request(1, 70000, 3, b"abc")[0] == 0
    assert c.request(6, 70000, 3)[0] == 0  # WRITE_ZEROES
    assert c.request(0, 70000, 3) == (0, bytes(3))
    c.s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 2, 1, 0, 0))  # DISC: server closes
    assert c.s.recv(1) == b""


def test_out_of_range_and_oversized_requests(server):
    c = Client(server.port, "qcow2")
    assert c.request(0, SIZE - 10, 11)[0] == errno.EINVAL
    assert c.request(1, SIZE, 1, b"x")[0] == errno.EINVAL
    assert c.request(6, SIZE - 1, 2)[0] == errno.EINVAL
    assert c.request(0, 0, 64 << 20)[0] == errno.EINVAL  # READ over the 32 MiB cap
    assert c.request(0, 2**64 - 512, 512)[0] == errno.EINVAL
    assert c.request(9, 0, 0)[0] == errno.EINVAL  # unknown command
    assert c.request(0, 0, 4)[0] == 0  # the connection is still fine


def test_read_only_export_rejects_writes(server, disks):
    c = Client(server.port, "ro")
    assert c.flags & 2  # NBD_FLAG_READ_ONLY
    assert c.request(1, 0, 4, b"evil")[0] == errno.EPERM
    assert c.request(4, 0, 4096)[0] == errno.EPERM
    assert c.request(6, 0, 4096)[0] == errno.EPERM
    assert c.request(0, 0, 4) == (0, b"RRRR")
    assert open(disks["ro"], "rb").read(4) == b"RRRR"


def test_handshake_options(server):
    c = Client(server.port, export=None)
    c.option(OPT_LIST)
    names = []
    while True:
        _, rtype, data = c.opt_reply()
        if rtype == REP_ACK:
            break
        assert rtype == REP_SERVER
        (n,) = struct.unpack(">I", data[:4])
        names.append(data[4:4 + n].decode())
    assert names == ["raw", "qcow2", "ro"]
    assert c.go("nope") == REP_ERR_UNKNOWN
    c.option(99)
    assert c.opt_reply()[1] & (1 << 31)
    assert c.go("") == 0  # the default export is the first one
    assert c.size == SIZE
    c.close()
    c = Client(server.port, export=None)
    c.option(OPT_ABORT)
    assert c.opt_reply()[1] == REP_ACK
    c.close()
    c = Client(server.port, export=None)  # old-style NBD_OPT_EXPORT_NAME
    c.option(OPT_EXPORT_NAME, b"ro")
    size, flags = struct.unpack(">QH", c.recv(10))
    assert size == SIZE and flags & 2
    c.close()


def assert_still_serving(port: int) -> None:
    c = Client(port, "raw")
    assert c.request(0, 0, 4096)[0] == 0
    c.close()


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\n\r\n" * 3,  # garbage instead of client flags + options
    struct.pack(">I", 3) + struct.pack(">QII", 0xDEADBEEF, OPT_GO, 0),  # bad option magic
    struct.pack(">I", 3) + struct.pack(">QII", IHAVEOPT, OPT_GO, 1 << 30),  # enormous option
    struct.pack(">I", 0xFFFF),  # unknown client flags
])
def test_handshake_garbage_is_dropped(server, garbage, caplog):
    caplog.set_level(logging.WARNING, logger="virtkit.nbd")
    other = Client(server.port, "raw")
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.recv(18)
    s.sendall(garbage)
    s.settimeout(10)
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        pass
    s.close()
    assert other.request(0, 0, 8)[0] == 0
    assert_still_serving(server.port)
    assert any("dropped" in r.getMessage() for r in caplog.records)


def test_transmission_garbage_and_mid_request_disconnect(server, caplog):
    caplog.set_level(logging.WARNING, logger="virtkit.nbd")
    worker = Client(server.port, "qcow2")
    bad = Client(server.port, "raw")
    bad.s.sendall(b"\x00" * 28)  # bad request magic
    assert bad.s.recv(16) == b""
    half = Client(server.port, "qcow2")
    half.s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 1, 0, 1 << 20) + b"x" * 1000)
    half.close()  # disconnects in the middle of a WRITE payload
    huge = Client(server.port, "raw")
    huge.s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 1, 0, 1 << 30))  # WRITE over the cap
    assert huge.s.recv(16) == b""
    for _ in range(600):  # wait (up to a minute on a loaded machine) for the three drop log lines
        if sum("dropped" in r.getMessage() for r in caplog.records) >= 3:
            break
        time.sleep(0.1)
    msgs = [r.getMessage() for r in caplog.records]
    assert any("bad request magic" in m for m in msgs)
    assert any("middle of a WRITE payload" in m for m in msgs)
    assert any("exceeds" in m for m in msgs)
    assert worker.request(1, 0, 3, b"abc")[0] == 0  # the good client never noticed
    assert worker.request(0, 0, 3) == (0, b"abc")
    # the half-written request was not applied
    assert worker.request(0, 4096, 4) == (0, bytes(4))


def test_two_clients_concurrently(server):
    errors: list[str] = []

    def hammer(idx: int) -> None:
        try:
            c = Client(server.port, "qcow2")
            rng = random.Random(idx)
            base = idx * (SIZE // 2)
            for i in range(200):
                off = base + rng.randrange(0, SIZE // 2 - 8192)
                data = bytes([idx + 1]) * rng.randrange(1, 8192)
                if c.request(1, off, len(data), data, handle=i)[0] != 0:
                    errors.append("write failed")
                err, got = c.request(0, off, len(data), handle=i)
                if err or got != data:
                    errors.append(f"client {idx}: read back mismatch at {off}")
            c.close()
        except Exception as exc:  # collected and asserted below
            errors.append(repr(exc))

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []


def test_server_needs_exports():
    with pytest.raises(NbdError, match="at least one export"):
        NbdServer([])


def test_listen_errors_are_clear(server, tmp_path):
    extra = tmp_path / "extra.raw"
    extra.write_bytes(bytes(4096))
    srv = NbdServer([NbdExport("x", open_disk(str(extra), read_only=True))])
    try:
        with pytest.raises(NbdError, match="cannot listen"):
            srv.listen_tcp("127.0.0.1", server.port)
        f = tmp_path / "plain"
        f.write_text("x")
        with pytest.raises(NbdError, match="not a socket"):
            srv.listen_unix(str(f))
    finally:
        srv.stop()
        srv.exports["x"].backend.close()


# ---------------------------------------------------------------- the CLI


def test_cli_serve_and_bad_flags(disks, tmp_path):
    require_tool("nbdinfo")
    sock = str(tmp_path / "cli.sock")
    cmd = [sys.executable, "-m", "virtkit.cli", "nbd", "serve", "--json", "--socket", sock, "-r", disks["qcow2"],
           f"second={disks['raw']}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        info = json.loads(line)
        assert info["exports"] == ["", "second"]
        p = run("nbdinfo", "--json", f"nbd+unix:///second?socket={sock}")
        assert json.loads(p.stdout)["exports"][0]["is_read_only"] is True
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0 and not os.path.exists(sock)
    for bad, msg in ([[str(tmp_path / "missing.img")], "does not exist"], [["-p", "99999", disks["raw"]], "port"],
                     [[f"a={disks['raw']}", f"a={disks['ro']}"], "duplicate export"],
                     [["-e", "0", disks["raw"]], "max-clients"]):
        p = run(sys.executable, "-m", "virtkit.cli", "nbd", "serve", *bad)
        assert p.returncode != 0 and msg in p.stderr and "Traceback" not in p.stderr


# ---------------------------------------------------------------- structured replies and block status


def test_block_status_map_with_nbdinfo_and_qemu(tmp_path):
    require_tool("nbdinfo", "qemu-img")
    q = str(tmp_path / "sparse.qcow2")
    Qcow2.create(q, 16 << 20)
    with Qcow2(q) as d:
        d.write(1 << 20, b"\x01" * (2 << 20))
        d.write(8 << 20, b"\x02" * 65536)
    raw = str(tmp_path / "sparse.raw")
    with open(raw, "wb") as f:
        f.truncate(16 << 20)
        f.seek(4 << 20)
        f.write(b"\x03" * (1 << 20))
    exports = [NbdExport("q", open_disk(q)), NbdExport("r", open_disk(raw))]
    with NbdServer(exports) as srv:
        _, port = srv.listen_tcp("127.0.0.1", 0)
        srv.start()
        p = run("nbdinfo", "--map", "--json", f"nbd://127.0.0.1:{port}/q")
        assert p.returncode == 0, p.stderr
        data = [(m["offset"], m["length"]) for m in json.loads(p.stdout) if m["type"] == 0]
        assert data == [(1 << 20, 2 << 20), (8 << 20, 65536)]
        p = run("qemu-img", "map", "-f", "raw", "--output=json", f"nbd://127.0.0.1:{port}/r")
        assert p.returncode == 0, p.stderr
        data = [(m["start"], m["length"]) for m in json.loads(p.stdout) if m["data"]]
        assert data == [(4 << 20, 1 << 20)]
        out = str(tmp_path / "copy.raw")  # a sparse-aware copy still yields the same bytes
        assert run("nbdcopy", f"nbd://127.0.0.1:{port}/q", out).returncode == 0
        with open(out, "rb") as f:
            got = f.read()
        assert got[1 << 20:3 << 20] == b"\x01" * (2 << 20) and got[8 << 20:(8 << 20) + 65536] == b"\x02" * 65536
        assert got.count(0) == len(got) - (2 << 20) - 65536
    for e in exports:
        e.backend.close()


def test_meta_context_needs_structured_replies(server):
    c = Client(server.port, export=None)
    query = struct.pack(">I", 3) + b"raw" + struct.pack(">I", 1) + struct.pack(">I", 15) + b"base:allocation"
    c.option(10, query)  # SET_META_CONTEXT before STRUCTURED_REPLY
    assert c.opt_reply()[1] == (1 << 31) + 3  # NBD_REP_ERR_INVALID
    c.option(8)
    assert c.opt_reply()[1] == REP_ACK
    c.option(10, query[:-3])  # truncated query
    assert c.opt_reply()[1] == (1 << 31) + 3
    c.option(10, query)
    _, rtype, data = c.opt_reply()
    assert rtype == 4 and data[4:] == b"base:allocation"
    assert c.opt_reply()[1] == REP_ACK
    assert c.go("raw") == 0
    # structured READ reply: one OFFSET_DATA chunk with the DONE flag
    c.s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 5, 4096, 16))
    magic, flags, rtype, handle, length, off = struct.unpack(">IHHQIQ", c.recv(28))
    assert (magic, flags, rtype, handle, length, off) == (0x668E33EF, 1, 1, 5, 24, 4096)
    assert len(c.recv(16)) == 16
    # BLOCK_STATUS past the end: a structured error chunk
    c.s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 7, 6, SIZE, 4096))
    magic, flags, rtype, handle, length = struct.unpack(">IHHQI", c.recv(20))
    assert rtype == (1 << 15) + 1 and struct.unpack(">IH", c.recv(length))[0] == errno.EINVAL
    c.close()


def test_block_status_without_negotiation_is_einval(server):
    c = Client(server.port, "raw")
    assert c.request(7, 0, 4096)[0] == errno.EINVAL
    assert c.request(0, 0, 8)[0] == 0


def test_many_pipelined_requests_are_answered(server):
    c = Client(server.port, "raw")
    n = 3000  # more replies than one sendmsg can carry at once
    c.s.sendall(b"".join(struct.pack(">IHHQQI", 0x25609513, 0, 3, i, 0, 0) for i in range(n)))
    for i in range(n):
        magic, err, h = struct.unpack(">IIQ", c.recv(16))
        assert (magic, err, h) == (0x67446698, 0, i)
    c.close()


def test_large_qcow2_reads_mix_data_zero_backing_and_compressed(tmp_path):
    """Large READs of a qcow2 export are sent from a cluster map (sendfile for data): every kind of
    cluster must come out right."""
    require_tool("qemu-img", "nbdcopy")
    rng = random.Random(9)
    base_raw = tmp_path / "base.raw"
    base_raw.write_bytes(b"".join(rng.choice([rng.randbytes(65536), b"c" * 65536]) for _ in range(64)))
    base = str(tmp_path / "base.qcow2")
    assert run("qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(base_raw), base).returncode == 0
    top = str(tmp_path / "top.qcow2")
    Qcow2.create(top, -1, backing="base.qcow2")
    with Qcow2(top) as d:
        d.write(100_000, rng.randbytes(1 << 20))
        d.write_zeroes(2 << 20, 300_000)
    want = tmp_path / "want.raw"
    assert run("qemu-img", "convert", "-O", "raw", top, str(want)).returncode == 0
    exp = NbdExport("t", open_disk(top, read_only=True))
    with NbdServer([exp]) as srv:
        _, port = srv.listen_tcp("127.0.0.1", 0)
        srv.start()
        out = tmp_path / "out.raw"
        p = run("nbdcopy", "--request-size=1048576", f"nbd://127.0.0.1:{port}/t", str(out))
        assert p.returncode == 0, p.stderr
        assert out.read_bytes() == want.read_bytes()
        c = Client(port, "t")
        err, data = c.request(0, 12345, 3 << 20)
        assert err == 0 and data == want.read_bytes()[12345:12345 + (3 << 20)]
        c.close()
    exp.backend.close()


def test_mapped_clusters_are_not_reused_while_pinned(tmp_path):
    path = str(tmp_path / "pin.qcow2")
    Qcow2.create(path, 4 << 20)
    with Qcow2(path) as d:
        d.write(0, b"\x11" * (1 << 20))
        d.flush()
        pieces = d.map_read(0, 1 << 20)
        host = pieces[0][2]
        d.discard(0, 1 << 20)
        d.flush()
        d.flush()
        d.write(2 << 20, b"\x22" * (1 << 20))  # must not land on the pinned clusters
        assert os.pread(d.fd, 16, host) == b"\x11" * 16
        d.unpin()
        d.flush()
        d.flush()
        assert d.check().clean


def test_connection_flood_is_capped(disks):
    exp = NbdExport("x", open_disk(disks["ro"], read_only=True))
    with NbdServer([exp], max_clients=2) as srv:
        _, port = srv.listen_tcp("127.0.0.1", 0)
        srv.start()
        a, b = Client(port, "x"), Client(port, "x")
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        assert s.recv(18) == b""  # the third connection is closed at once
        s.close()
        assert a.request(0, 0, 4) == (0, b"RRRR")
        a.close()
        for _ in range(600):  # a slot frees up once the server has seen the close
            try:
                c = Client(port, "x")
                break
            except (ConnectionError, AssertionError, struct.error):
                time.sleep(0.1)
        assert c.request(0, 0, 4) == (0, b"RRRR")
        b.close()
        c.close()
    exp.backend.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(min_size=1, max_size=200), after_go=st.booleans())
def test_fuzzed_client_bytes_never_hurt_other_clients(server, junk, after_go):
    bad = Client(server.port, "raw" if after_go else None)
    try:
        bad.s.sendall(junk)
        bad.s.shutdown(socket.SHUT_WR)
        bad.s.settimeout(10)
        while bad.s.recv(65536):
            pass
    except OSError:
        pass
    finally:
        bad.close()
    good = Client(server.port, "qcow2")
    assert good.request(0, 0, 512)[0] == 0
    good.close()
