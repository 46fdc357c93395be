"""Online operations under a live writer: grow, extent moves, and crash (SIGKILL) safety."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from virtkit.storage import open_disk
from virtkit.storage.backend import BlockError
from virtkit.storage.pool import Pool, PoolError, shared_pool

EXTENT = 64 << 10
BLOCK = 4096


def make_devices(tmp: Path, n: int, size: int = 8 << 20, prefix: str = "dev") -> list[str]:
    paths = []
    for i in range(n):
        p = tmp / f"{prefix}{i}.img"
        with open(p, "wb") as f:
            f.truncate(size)
        paths.append(str(p))
    return paths


def block(i: int, gen: int = 1) -> bytes:
    return (f"{gen}:{i}:".encode() * BLOCK)[:BLOCK]


@pytest.mark.parametrize("thin", [False, True], ids=["thick", "thin"])
def test_grow_while_writer_is_active(tmp_path, thin):
    with Pool.create(tmp_path / "p", make_devices(tmp_path, 2), extent_size=EXTENT) as pool:
        pool.create_volume("v", 4 * EXTENT, thin=thin)
        vol = pool.open_volume("v")
        target = 20 * EXTENT
        written: dict[int, bytes] = {}
        errors: list[BaseException] = []

        def writer() -> None:
            i = 0
            try:
                while (i + 1) * BLOCK <= target:
                    if (i + 1) * BLOCK > vol.size:  # wait until the grow is visible to the open backend
                        continue
                    vol.write(i * BLOCK, block(i))
                    written[i] = block(i)
                    i += 1
            except BaseException as err:  # pragma: no cover - reported below
                errors.append(err)

        t = threading.Thread(target=writer)
        t.start()
        for size in range(6, 21, 2):
            pool.resize_volume("v", size * EXTENT)
            assert vol.size == size * EXTENT
        t.join(timeout=300)
        assert not t.is_alive() and not errors
        assert len(written) == target // BLOCK
        for i, data in written.items():
            assert vol.read(i * BLOCK, BLOCK) == data
        vol.close()
    with Pool.open(tmp_path / "p") as pool:
        vol = pool.open_volume("v")
        assert vol.size == target and vol.read(0, BLOCK) == block(0)
        vol.close()


def test_resize_errors(tmp_path):
    with Pool.create(tmp_path / "p", make_devices(tmp_path, 1), extent_size=EXTENT) as pool:
        pool.create_volume("v", 4 * EXTENT)
        with pytest.raises(PoolError, match="shrink"):
            pool.resize_volume("v", EXTENT)
        with pytest.raises(PoolError, match="multiple of 512"):
            pool.resize_volume("v", 1000)
        with pytest.raises(PoolError, match="not enough free space"):
            pool.resize_volume("v", "10G")
        assert pool.volumes["v"].size == 4 * EXTENT
        vol = pool.open_volume("v")
        vol.write(EXTENT + 10, b"keep" + b"gone" * 10)
        with pytest.raises(PoolError, match="open"):
            pool.resize_volume("v", EXTENT + 512, shrink=True)
        vol.close()
        pool.resize_volume("v", EXTENT + 512, shrink=True)
        pool.resize_volume("v", 4 * EXTENT)
        vol = pool.open_volume("v")
        assert vol.read(EXTENT + 10, 44) == b"keep" + b"gone" * 10
        assert vol.read(EXTENT + 512, 1000) == bytes(1000)  # the cut tail reads zeros after a regrow
        vol.close()


@pytest.mark.parametrize("layout,ndev", [("linear", 2), ("mirror", 3), ("parity", 4)])
def test_move_under_concurrent_writer_loses_nothing(tmp_path, layout, ndev):
    devs = make_devices(tmp_path, ndev)
    size = 24 * EXTENT
    with Pool.create(tmp_path / "p", devs, extent_size=EXTENT) as pool:
        width = {"linear": 1, "mirror": 2, "parity": 3}[layout]
        pool.create_volume("v", size, layout, width=width, stripe="4K")
        vol = pool.open_volume("v")
        model = bytearray(os.urandom(size))
        vol.write(0, model)
        src = pool.devices[pool.chunks[pool.volumes["v"].map[0]][0][0]].path
        # linear: to the named other device; redundant layouts: anywhere not already in the chunk
        dst = next(d.path for d in pool.devices.values() if d.path != src) if layout == "linear" else None
        done = threading.Event()
        errors: list[BaseException] = []
        count = [0]

        def writer() -> None:
            rnd = random.Random(7)
            try:
                while not done.is_set() or count[0] < 50:
                    off = rnd.randrange(0, size - 9000)
                    data = os.urandom(rnd.randrange(1, 9000))
                    vol.write(off, data)
                    model[off : off + len(data)] = data  # acknowledged: must survive the move
                    count[0] += 1
            except BaseException as err:  # pragma: no cover - reported below
                errors.append(err)

        t = threading.Thread(target=writer)
        t.start()
        try:
            moved = pool.move_volume("v", src, dst)
        finally:
            done.set()
            t.join(timeout=300)
        assert not errors and moved > 0
        assert vol.read(0, size) == model
        src_id = pool.find_device(src).id
        assert all(d != src_id for cid in pool.volumes["v"].map for d, _ in pool.chunks[cid])
        vol.close()
    with Pool.open(tmp_path / "p") as pool:
        vol = pool.open_volume("v")
        assert vol.read(0, size) == model
        vol.close()
        if pool.find_device(src).free == pool.find_device(src).pe_count:
            pool.remove_device(src)
            assert src not in [d.path for d in pool.devices.values()]


def test_add_remove_device_and_evacuate(tmp_path):
    devs = make_devices(tmp_path, 2)
    with Pool.create(tmp_path / "p", devs[:1], extent_size=EXTENT) as pool:
        pool.create_volume("v", 10 * EXTENT, thin=True)
        vol = pool.open_volume("v")
        data = os.urandom(10 * EXTENT)
        vol.write(0, data)
        before = pool.status()["size"]
        pool.add_device(devs[1])
        assert pool.status()["size"] > before
        with pytest.raises(PoolError, match="still holds"):
            pool.remove_device(devs[0])
        pool.remove_device(devs[0], evacuate=True)
        assert [d.path for d in pool.devices.values()] == [devs[1]]
        assert vol.read(0, 10 * EXTENT) == data
        with pytest.raises(PoolError, match="last device"):
            pool.remove_device(devs[1], evacuate=True)
        vol.close()
    with open(devs[0], "rb") as f:  # the removed device's label was wiped
        assert f.read(8) == bytes(8)


WRITER = r"""
import sys
from virtkit.storage.pool import Pool
pool = Pool.open(sys.argv[1])
vol = pool.open_volume("v")
BLOCK = 4096
i = 0
while True:
    off = (i * 7 % 256) * BLOCK  # scattered: allocations and copy-on-write all the time
    vol.write(off, (f"1:{i}:".encode() * BLOCK)[:BLOCK])
    if i % 8 == 7:
        vol.flush()
        print(i, flush=True)
    i += 1
"""


@pytest.mark.parametrize("kill_after", [3, 17, 40])
def test_sigkill_mid_write_stream_keeps_flushed_writes(tmp_path, kill_after):
    devs = make_devices(tmp_path, 2)
    with Pool.create(tmp_path / "p", devs, extent_size=EXTENT) as pool:
        pool.create_volume("v", 256 * BLOCK, "mirror", thin=True)
        vol = pool.open_volume("v")
        for b in range(0, 256, 3):
            vol.write(b * BLOCK, block(b, gen=0))
        vol.close()
        pool.snapshot("v", "base")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "p")], stdout=subprocess.PIPE, text=True)
    last = -1
    for _ in range(kill_after):
        line = proc.stdout.readline()
        assert line, "writer died early"
        last = int(line)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # every write up to the last acknowledged flush is there; the base snapshot is untouched
    latest: dict[int, int] = {}
    for i in range(last + 1):
        latest[i * 7 % 256] = i
    with Pool.open(tmp_path / "p") as pool:
        assert any("not closed cleanly" in w for w in pool.warnings)
        vol = pool.open_volume("v")
        for b, i in latest.items():
            got = vol.read(b * BLOCK, BLOCK)
            j = int(got.split(b":")[1])  # the flushed write, or a later (unflushed) one to the same block
            assert got == (f"1:{j}:".encode() * BLOCK)[:BLOCK] and j >= i and j * 7 % 256 == b, f"block {b}"
        base = pool.open_volume("base")
        for b in range(256):
            want = block(b, gen=0) if b % 3 == 0 else bytes(BLOCK)
            assert base.read(b * BLOCK, BLOCK) == want
        base.close()
        vol.close()
        st = pool.status()
        assert st["extents_used"] == sum(d["extents_used"] for d in st["devices"])
    with Pool.open(tmp_path / "p") as pool:  # the warning stays until redundancy has been checked
        assert any("not closed cleanly" in w for w in pool.warnings)
        pool.scrub(repair=True)  # whatever the crash left half-written between the copies is made equal
        assert pool.scrub()["inconsistent"] == 0
    with Pool.open(tmp_path / "p") as pool:
        assert not pool.warnings
    out = subprocess.run(
        [sys.executable, "-m", "virtkit.cli", "pool", "status", str(tmp_path / "p"), "--json"],
        capture_output=True, text=True,
    )
    if out.returncode == 0:  # the CLI may not be there in every checkout
        assert json.loads(out.stdout)["name"] == "p"


def test_open_disk_pool_volume(tmp_path, monkeypatch):
    monkeypatch.setenv("VIRTKIT_POOLS_DIR", str(tmp_path / "pools"))
    with Pool.create("tank", make_devices(tmp_path, 2), extent_size=EXTENT) as pool:
        pool.create_volume("disk0", 4 * EXTENT, "mirror")
        pool.create_volume("disk1", 4 * EXTENT, thin=True)
    d0 = open_disk("tank/disk0")
    d1 = open_disk("tank/disk1")  # a second volume of the same pool in the same process
    d0.write(0, b"hello")
    d1.write(EXTENT, b"world")
    shared = shared_pool("tank")  # management in the VM's process grows a disk while it is open
    assert shared is not None and shared_pool("other") is None
    shared.resize_volume("disk0", 8 * EXTENT)
    assert d0.size == 8 * EXTENT
    d0.write(7 * EXTENT, b"grown")
    assert d0.read(0, 5) == b"hello" and d0.read(7 * EXTENT, 5) == b"grown"
    d0.close()
    d1.close()
    with Pool.open("tank") as pool:
        assert pool.open_volume("disk1").read(EXTENT, 5) == b"world"
    with pytest.raises(BlockError, match="no volume"):
        open_disk("tank/nope")
    ro = open_disk("tank/disk0", read_only=True)
    with pytest.raises(BlockError, match="read-only"):
        ro.write(0, b"x")
    ro.close()
    for bad in ("tank/", "nopool/disk0", "tank/disk0/extra", "tank/../disk0"):
        with pytest.raises(BlockError):  # not a pool volume, and no such file either
            open_disk(bad)
    with Pool.open("tank") as pool:  # nothing was opened or changed by the refused specs
        assert sorted(pool.volumes) == ["disk0", "disk1"]


MOVER = r"""
import sys
from virtkit.storage.pool import Pool
pool = Pool.open(sys.argv[1])
print("moving", flush=True)
pool.move_volume("v", sys.argv[2], sys.argv[3])
print("done", flush=True)
"""


def test_sigkill_during_move_keeps_volume_intact(tmp_path):
    from virtkit.storage.pool_meta import load_slots

    devs = make_devices(tmp_path, 2, size=40 << 20)
    size = 256 * EXTENT
    with Pool.create(tmp_path / "p", devs, extent_size=EXTENT) as pool:
        pool.create_volume("v", size, "linear")
        vol = pool.open_volume("v")
        data = os.urandom(size)
        vol.write(0, data)
        vol.close()
        src = pool.devices[pool.chunks[pool.volumes["v"].map[0]][0][0]].path
        dst = next(d for d in devs if d != src)
        seq0 = pool.seq
    proc = subprocess.Popen([sys.executable, "-c", MOVER, str(tmp_path / "p"), src, dst], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "moving"
    while proc.poll() is None and load_slots(tmp_path / "p").body["seq"] < seq0 + 3:
        time.sleep(0.01)  # wait until a few extents have been switched over, then pull the plug
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Pool.open(tmp_path / "p") as pool:
        vol = pool.open_volume("v")
        assert vol.read(0, size) == data
        on = {pool.devices[d].path for cid in pool.volumes["v"].map for d, _ in pool.chunks[cid]}
        assert dst in on  # the move had started...
        pool.move_volume("v", src, dst)  # ...and can simply be run again to finish
        assert vol.read(0, size) == data
        vol.close()
        st = pool.status()
        assert next(d for d in st["devices"] if d["path"] == src)["extents_used"] == 0


def test_a_committer_killed_before_publishing_its_number_does_not_wedge_io(tmp_path):
    """The metadata is written, then its sequence number published: a process killed in between leaves the
    published number behind. The next users still read and write (the first repairs the number)."""
    import struct

    devs = make_devices(tmp_path, 1, size=16 << 20)
    with Pool.create(tmp_path / "p", devs, extent_size=EXTENT) as pool:
        pool.create_volume("v", 8 * EXTENT, "linear")
    seq_file = tmp_path / "p" / "seq"
    seq = struct.unpack("<q", seq_file.read_bytes()[:8])[0]
    assert seq > 0
    seq_file.write_bytes(struct.pack("<q", seq - 1))  # the state the killed committer left
    with Pool.open(tmp_path / "p", read_only=True) as ro:  # a reader cannot repair it, yet reads
        assert ro.open_volume("v").read(0, EXTENT) == bytes(EXTENT)
    with Pool.open(tmp_path / "p") as pool:
        vol = pool.open_volume("v")
        vol.write(0, b"x" * EXTENT)
        assert vol.read(0, EXTENT) == b"x" * EXTENT
        vol.close()
    assert struct.unpack("<q", seq_file.read_bytes()[:8])[0] >= seq
