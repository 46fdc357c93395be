"""qcow2 interop with QEMU's own tools (qemu-img, qemu-io): their images open in virtkit,
ours pass ``qemu-img check`` and convert to exactly the bytes we wrote; snapshots go both ways;
a writer SIGKILLed mid-stream keeps every write it flushed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import require_tool
from virtkit.storage.qcow2 import Qcow2, Qcow2Error


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=False)


def qemu_check(path: str) -> dict:
    p = run("qemu-img", "check", "--output=json", path)
    assert p.returncode in (0, 3), p.stdout + p.stderr  # 3: leaked clusters only (harmless)
    return json.loads(p.stdout)


def qemu_raw(path: str, tmp_path) -> bytes:
    out = str(tmp_path / f"conv-{os.path.basename(path)}.raw")
    p = run("qemu-img", "convert", "-O", "raw", path, out)
    assert p.returncode == 0, p.stderr
    with open(out, "rb") as f:
        return f.read()


def read_all(d) -> bytes:
    buf = bytearray(d.size)
    d.readinto(0, buf)
    return bytes(buf)


@pytest.fixture(autouse=True)
def _tools():
    require_tool("qemu-img", "qemu-io")


def test_qemu_created_image_with_qemu_io_data(tmp_path):
    path = str(tmp_path / "q.qcow2")
    assert run("qemu-img", "create", "-f", "qcow2", path, "16M").returncode == 0
    assert run("qemu-io", "-c", "write -P 0x5a 1M 3M", "-c", "write -z 2M 64k", path).returncode == 0
    with Qcow2(path, read_only=True) as d:
        data = read_all(d)
    want = bytearray(16 << 20)
    want[1 << 20:4 << 20] = b"\x5a" * (3 << 20)
    want[2 << 20:(2 << 20) + 65536] = bytes(65536)
    assert data == want


def test_qemu_backing_chain_and_our_writes(tmp_path):
    base, top = str(tmp_path / "base.qcow2"), str(tmp_path / "top.qcow2")
    run("qemu-img", "create", "-f", "qcow2", base, "8M")
    run("qemu-io", "-c", "write -P 0x11 0 8M", base)
    assert run("qemu-img", "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top).returncode == 0
    run("qemu-io", "-c", "write -P 0x22 1M 1M", top)
    with Qcow2(top) as d:
        assert d.backing_file == "base.qcow2" and d.backing_format == "qcow2"
        d.write(3 << 20 | 1234, b"\x33" * 100_000)
        d.write_zeroes(5 << 20, 1 << 20)
        got = read_all(d)
    want = bytearray(b"\x11" * (8 << 20))
    want[1 << 20:2 << 20] = b"\x22" * (1 << 20)
    want[(3 << 20) + 1234:(3 << 20) + 1234 + 100_000] = b"\x33" * 100_000
    want[5 << 20:6 << 20] = bytes(1 << 20)
    assert got == want
    assert qemu_check(top)["check-errors"] == 0
    assert qemu_raw(top, tmp_path) == want


def test_qemu_compressed_image(tmp_path):
    raw = tmp_path / "src.raw"
    rng = random.Random(7)
    content = b"".join(rng.choice([b"A" * 4096, rng.randbytes(4096), bytes(4096)]) for _ in range(1024))
    raw.write_bytes(content)
    comp = str(tmp_path / "c.qcow2")
    assert run("qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(raw), comp).returncode == 0
    with Qcow2(comp, read_only=True) as d:
        assert read_all(d) == content
    # writing over compressed clusters allocates new ones and releases the compressed space
    with Qcow2(comp) as d:
        d.write(10_000, b"w" * 300_000)
        assert d.check().clean
    want = bytearray(content)
    want[10_000:310_000] = b"w" * 300_000
    assert qemu_check(comp)["check-errors"] == 0
    assert qemu_raw(comp, tmp_path) == want


def test_random_writes_pass_qemu_check_and_convert(tmp_path):
    path = str(tmp_path / "ours.qcow2")
    Qcow2.create(path, 64 << 20)
    rng = random.Random(11)
    model = bytearray(64 << 20)
    with Qcow2(path) as d:
        for _ in range(300):
            off = rng.randrange(0, len(model) - 1)
            n = rng.randrange(1, min(1 << 20, len(model) - off) + 1)
            b = rng.randbytes(n)
            d.write(off, b)
            model[off:off + n] = b
        for _ in range(20):
            off = rng.randrange(0, len(model) - 1)
            n = rng.randrange(1, min(4 << 20, len(model) - off) + 1)
            (d.discard if rng.random() < 0.5 else d.write_zeroes)(off, n)
            model[off:off + n] = bytes(n)
    res = qemu_check(path)
    assert res["check-errors"] == 0 and res.get("leaks", 0) == 0, res
    assert qemu_raw(path, tmp_path) == model


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(["write", "zero", "discard", "snap"]),
                              st.integers(0, (4 << 20) - 1), st.integers(1, 400_000), st.integers(1, 255)),
                    min_size=1, max_size=20))
def test_hypothesis_sequences_pass_qemu_check(tmp_path_factory, ops):
    tmp = tmp_path_factory.mktemp("hq")
    path = str(tmp / "h.qcow2")
    size = 4 << 20
    Qcow2.create(path, size, cluster_size=4096)
    model = bytearray(size)
    with Qcow2(path) as d:
        for i, (op, off, n, byte) in enumerate(ops):
            n = min(n, size - off)
            if op == "write":
                d.write(off, bytes([byte]) * n)
                model[off:off + n] = bytes([byte]) * n
            elif op == "zero":
                d.write_zeroes(off, n)
                model[off:off + n] = bytes(n)
            elif op == "discard":
                d.discard(off, n)
                model[off:off + n] = bytes(n)
            else:
                d.snapshot_create(f"s{i}")
    res = qemu_check(path)
    assert res["check-errors"] == 0 and res.get("leaks", 0) == 0, res
    assert qemu_raw(path, tmp) == model


def test_snapshots_interoperate_both_ways(tmp_path):
    path = str(tmp_path / "s.qcow2")
    Qcow2.create(path, 8 << 20)
    with Qcow2(path) as d:
        d.write(0, b"\x01" * (1 << 20))
        d.snapshot_create("ours-1")
        d.write(0, b"\x02" * (1 << 20))
    p = run("qemu-img", "snapshot", "-l", path)
    assert p.returncode == 0 and "ours-1" in p.stdout
    assert qemu_check(path)["check-errors"] == 0
    # QEMU applies ours, then takes its own snapshot
    assert run("qemu-img", "snapshot", "-a", "ours-1", path).returncode == 0
    assert run("qemu-io", "-c", "read -P 0x01 0 1M", path).returncode == 0
    run("qemu-io", "-c", "write -P 0x03 512k 1M", path)
    assert run("qemu-img", "snapshot", "-c", "theirs", path).returncode == 0
    run("qemu-io", "-c", "write -P 0x04 0 2M", path)
    with Qcow2(path) as d:
        assert [s.name for s in d.snapshots] == ["ours-1", "theirs"]
        d.snapshot_apply("theirs")
        got = read_all(d)[:2 << 20]
        assert got == b"\x01" * (512 << 10) + b"\x03" * (1 << 20) + bytes(512 << 10)
        d.snapshot_delete("ours-1")
        d.write(0, b"\x05" * 100)
    assert qemu_check(path)["check-errors"] == 0
    p = run("qemu-img", "snapshot", "-l", path)
    assert "theirs" in p.stdout and "ours-1" not in p.stdout


WRITER = r"""
import os, random, sys
from virtkit.storage.qcow2 import Qcow2, Qcow2Error
path, log = sys.argv[1], sys.argv[2]
d = Qcow2(path)
rng = random.Random(int(sys.argv[3]))
size = d.size
logf = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
i = 0
while True:
    off = rng.randrange(0, size - 1)
    n = rng.randrange(1, min(300_000, size - off) + 1)
    kind = rng.random()
    byte = 0 if kind < 0.15 else (i % 250) + 1
    os.write(logf, f"w {off} {n} {byte}\n".encode())  # intent first: the kill may land mid-write
    if kind < 0.1:
        d.write_zeroes(off, n)
    elif kind < 0.15:
        d.discard(off, n)
    else:
        d.write(off, bytes([byte]) * n)
    if i % 7 == 6:
        d.flush()
        os.write(logf, b"f\n")
    i += 1
"""


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_mid_stream_keeps_flushed_writes(tmp_path, seed):
    path = str(tmp_path / "crash.qcow2")
    log = str(tmp_path / "log")
    Qcow2.create(path, 16 << 20, cluster_size=4096 if seed == 2 else 65536)
    child = subprocess.Popen([sys.executable, "-c", WRITER, path, log, str(seed)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait for a decent number of flushes, then kill mid-stream
        time.sleep(0.2)
        if os.path.exists(log) and open(log).read().count("f\n") >= 20 + 10 * seed:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    lines = open(log).read().splitlines()
    last_flush = max(i for i, line in enumerate(lines) if line == "f")
    model = bytearray(16 << 20)
    for line in lines[:last_flush]:
        if line.startswith("w "):
            _, off, n, byte = line.split()
            off, n = int(off), int(n)
            model[off:off + n] = bytes([int(byte)]) * n
    res = qemu_check(path)
    assert res["check-errors"] == 0, res
    image = qemu_raw(path, tmp_path)
    # every write before the last flush is present; writes after it may or may not be
    pending = [tuple(map(int, ln.split()[1:])) for ln in lines[last_flush + 1:] if ln.startswith("w ")]
    touched = bytearray(16 << 20)
    for off, n, _ in pending:
        touched[off:off + n] = b"\x01" * n
    diffs = [i for i in range(0, 16 << 20, 4096)
             if image[i:i + 4096] != model[i:i + 4096] and not any(touched[i:i + 4096])]
    assert diffs == [], f"flushed data lost in blocks at {diffs[:5]}"
    with Qcow2(path) as d:  # and virtkit itself can keep using the image
        d.write(0, b"after")
    assert qemu_check(path)["check-errors"] == 0


@pytest.mark.parametrize("bits", [1, 8, 32, 64])
def test_other_refcount_widths(tmp_path, bits):
    path = str(tmp_path / f"r{bits}.qcow2")
    p = run("qemu-img", "create", "-f", "qcow2", "-o", f"refcount_bits={bits}", path, "8M")
    assert p.returncode == 0, p.stderr
    run("qemu-io", "-c", "write -P 0x61 0 1M", path)
    with Qcow2(path, read_only=True) as d:
        assert read_all(d)[:1 << 20] == b"\x61" * (1 << 20)
        assert d.check().clean
    if bits < 8:  # sub-byte refcounts are read-only here: a clear error for writers
        with pytest.raises(Exception, match="only supported read-only"):
            Qcow2(path)
        return
    with Qcow2(path) as d:
        d.write(3 << 20, b"\x62" * (2 << 20))
        d.snapshot_create("s")
        d.write(3 << 20, b"\x63" * 4096)
    assert qemu_check(path)["check-errors"] == 0
    got = qemu_raw(path, tmp_path)
    assert got[3 << 20:(3 << 20) + 4096] == b"\x63" * 4096
    assert got[(3 << 20) + 4096:5 << 20] == b"\x62" * ((2 << 20) - 4096)


def test_dirty_image_is_repaired_on_open(tmp_path):
    """A qemu image with lazy refcounts left dirty (refcounts stale) is repaired when opened read-write."""
    path = str(tmp_path / "dirty.qcow2")
    Qcow2.create(path, 8 << 20)
    with Qcow2(path) as d:
        d.write(0, b"\x77" * (1 << 20))
        rb = int(d.rt[0])
    with open(path, "r+b") as f:
        f.seek(rb + 2 * 6)  # stale refcounts, as lazy refcounts leave them
        f.write(b"\x00\x00" * 4)
        f.seek(72)
        f.write((1).to_bytes(8, "big"))  # dirty bit
        f.seek(80)
        f.write((1).to_bytes(8, "big"))  # lazy refcounts
    with Qcow2(path) as d:
        assert not d.incompatible & 1
        assert d.check().clean
        assert read_all(d)[:1 << 20] == b"\x77" * (1 << 20)
    assert qemu_check(path)["check-errors"] == 0


@pytest.mark.parametrize(("options", "message"), [
    ("extended_l2=on", "extended L2"),
    ("data_file={d}/ext.raw", "external data file"),
    ("compression_type=zstd", "compression type zstd"),
])
def test_qemu_features_we_do_not_support_are_refused(tmp_path, options, message):
    path = str(tmp_path / "f.qcow2")
    p = run("qemu-img", "create", "-f", "qcow2", "-o", options.format(d=tmp_path), path, "8M")
    if p.returncode != 0:
        pytest.skip(f"this qemu-img cannot create {options}: {p.stderr.strip()}")
    before = open(path, "rb").read()
    for ro in (True, False):
        with pytest.raises(Qcow2Error, match=message):
            Qcow2(path, read_only=ro)
    assert open(path, "rb").read() == before


def test_lazy_refcounts_image_stays_consistent(tmp_path):
    path = str(tmp_path / "lazy.qcow2")
    run("qemu-img", "create", "-f", "qcow2", "-o", "lazy_refcounts=on", path, "8M")
    with Qcow2(path) as d:
        d.write(12345, b"z" * 500_000)
    assert qemu_check(path)["check-errors"] == 0
    assert qemu_raw(path, tmp_path)[12345:512345] == b"z" * 500_000
