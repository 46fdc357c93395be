"""Failed devices: mirror and parity volumes stay readable (degraded), rebuild restores redundancy."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from virtkit.storage.backend import BlockError
from virtkit.storage.pool import Pool, PoolError
from virtkit.storage.pool_meta import DATA_START

EXTENT = 32 << 10
SIZE = 12 * EXTENT


def make_devices(tmp: Path, n: int, size: int = 4 << 20, prefix: str = "dev") -> list[str]:
    paths = []
    for i in range(n):
        p = tmp / f"{prefix}{i}.img"
        with open(p, "wb") as f:
            f.truncate(size)
        paths.append(str(p))
    return paths


def raw_extent(pool: Pool, dev_id: int, pe: int) -> bytes:
    with open(pool.devices[dev_id].path, "rb") as f:
        f.seek(DATA_START + pe * pool.extent)
        return f.read(pool.extent)


def check_redundancy(pool: Pool, name: str) -> None:
    """Every chunk's columns are consistent: mirror copies equal, parity = XOR of data."""
    vol = pool.volumes[name]
    for cid in vol.map:
        raws = [raw_extent(pool, d, pe) for d, pe in pool.chunks[cid]]
        if vol.geo.layout == "mirror":
            assert all(r == raws[0] for r in raws)
        else:
            x = bytearray(pool.extent)
            for r in raws:
                x = bytearray(a ^ b for a, b in zip(x, r, strict=True))
            assert x == bytes(pool.extent)


@pytest.mark.parametrize("layout,width", [("mirror", 2), ("mirror", 3), ("parity", 3), ("parity", 4)])
def test_degraded_reads_writes_and_rebuild(tmp_path, layout, width):
    devs = make_devices(tmp_path, 4)
    with Pool.create(tmp_path / "p", devs, extent_size=EXTENT) as pool:
        pool.create_volume("v", SIZE, layout, width=width, stripe="4K")
        v = pool.open_volume("v")
        data = bytearray(os.urandom(SIZE))
        v.write(0, data)
        v.flush()
        victim = pool.chunks[pool.volumes["v"].map[0]][0][0]
        victim_path = pool.devices[victim].path
        pool.fail_device(victim_path)
        assert pool.status()["state"] == "degraded"
        assert pool.status()["volumes"][0]["state"] == "degraded"
        assert v.read(0, SIZE) == data  # degraded reads reconstruct
        # degraded writes: partial rows, full rows and single bytes
        for off, n in [(5, 3000), (EXTENT - 100, 9000), (4 * EXTENT, 2 * EXTENT), (SIZE - 1, 1)]:
            chunk = os.urandom(n)
            v.write(off, chunk)
            data[off : off + n] = chunk
        assert v.read(0, SIZE) == data
        v.close()
    # the failure is persistent across a reopen
    spare = make_devices(tmp_path, 1, prefix="spare")[0]
    with Pool.open(tmp_path / "p") as pool:
        assert pool.find_device(victim_path).state == "failed"
        v = pool.open_volume("v")
        assert v.read(0, SIZE) == data
        moved = pool.rebuild(victim_path, spare)
        assert moved > 0
        assert pool.status()["state"] == "ok" and pool.status()["volumes"][0]["state"] == "ok"
        assert victim_path not in [d.path for d in pool.devices.values()]
        check_redundancy(pool, "v")
        assert v.read(0, SIZE) == data
        # redundancy restored: lose another device, still readable
        other = next(d for d in pool.devices.values() if d.path != spare and d.free < d.pe_count)
        pool.fail_device(other.path)
        assert v.read(0, SIZE) == data
        v.close()


def test_mirror_rebuild_is_byte_equal_copy(tmp_path):
    devs = make_devices(tmp_path, 2)
    with Pool.create(tmp_path / "p", devs, extent_size=EXTENT) as pool:
        pool.create_volume("m", SIZE, "mirror")
        v = pool.open_volume("m")
        data = os.urandom(SIZE)
        v.write(0, data)
        pool.fail_device(devs[1])
        spare = make_devices(tmp_path, 1, prefix="spare")[0]
        pool.rebuild(devs[1], spare)
        new = pool.find_device(spare)
        for ci, cid in enumerate(pool.volumes["m"].map):
            pe = dict(pool.chunks[cid])[new.id]
            assert raw_extent(pool, new.id, pe) == data[ci * EXTENT : (ci + 1) * EXTENT]
        v.close()


def test_parity_rebuild_reconstructs_the_lost_column(tmp_path):
    devs = make_devices(tmp_path, 3)
    with Pool.create(tmp_path / "p", devs, extent_size=EXTENT) as pool:
        pool.create_volume("r", SIZE, "parity", stripe="4K")
        v = pool.open_volume("r")
        v.write(0, os.urandom(SIZE))
        v.flush()
        dev0 = pool.find_device(devs[0])
        lost = {cid: raw_extent(pool, dev0.id, dict(pool.chunks[cid])[dev0.id]) for cid in pool.volumes["r"].map}
        with open(devs[0], "r+b") as f:  # the dead disk's content is really gone
            f.seek(DATA_START)
            f.write(bytes(os.path.getsize(devs[0]) - DATA_START))
        pool.fail_device(devs[0])
        spare = make_devices(tmp_path, 1, prefix="spare")[0]
        pool.rebuild(devs[0], spare)
        new = pool.find_device(spare)
        for cid, want in lost.items():
            assert raw_extent(pool, new.id, dict(pool.chunks[cid])[new.id]) == want
        v.close()


def test_missing_device_detected_at_open(tmp_path):
    devs = make_devices(tmp_path, 3)
    with Pool.create(tmp_path / "p", devs, extent_size=EXTENT) as pool:
        pool.create_volume("m", SIZE, "mirror")
        pool.create_volume("lin", EXTENT, "linear")
        v = pool.open_volume("m")
        data = os.urandom(SIZE)
        v.write(0, data)
        v.close()
        lin_dev = pool.devices[pool.chunks[pool.volumes["lin"].map[0]][0][0]].path
    gone = next(d for d in devs if d != lin_dev)
    os.rename(gone, gone + ".away")
    with Pool.open(tmp_path / "p") as pool:
        assert pool.find_device(gone).state == "missing"
        assert any("missing" in w for w in pool.status()["warnings"])
        v = pool.open_volume("m")
        assert v.read(0, SIZE) == data
        v.close()


def test_io_error_marks_device_failed_and_mirror_continues(tmp_path):
    devs = make_devices(tmp_path, 2)
    with Pool.create(tmp_path / "p", devs, extent_size=EXTENT) as pool:
        pool.create_volume("m", SIZE, "mirror")
        v = pool.open_volume("m")
        data = os.urandom(SIZE)
        v.write(0, data)
        first = pool.chunks[pool.volumes["m"].map[0]][0][0]
        os.truncate(pool.devices[first].path, DATA_START)  # every read on it is now short: an I/O error
        assert v.read(0, SIZE) == data
        assert pool.devices[first].state == "failed"
        v.close()


def test_non_redundant_volume_on_failed_device(tmp_path):
    devs = make_devices(tmp_path, 2)
    with Pool.create(tmp_path / "p", devs, extent_size=EXTENT) as pool:
        pool.create_volume("lin", EXTENT)
        dev = pool.devices[pool.chunks[pool.volumes["lin"].map[0]][0][0]].path
        v = pool.open_volume("lin")
        pool.fail_device(dev)
        assert pool.status()["volumes"][0]["state"] == "unavailable"
        with pytest.raises(BlockError, match="unavailable"):
            v.read(0, 10)
        v.close()
        spare = make_devices(tmp_path, 1, prefix="spare")[0]
        with pytest.raises(PoolError, match="no redundancy"):
            pool.rebuild(dev, spare)
        assert spare not in [d.path for d in pool.devices.values()]


def test_two_failures_in_parity_is_an_error_not_garbage(tmp_path):
    devs = make_devices(tmp_path, 3)
    with Pool.create(tmp_path / "p", devs, extent_size=EXTENT) as pool:
        pool.create_volume("r", SIZE, "parity", stripe="4K")
        v = pool.open_volume("r")
        v.write(0, os.urandom(SIZE))
        pool.fail_device(devs[0])
        pool.fail_device(devs[1])
        with pytest.raises(BlockError, match="unavailable"):
            v.read(0, SIZE)
        with pytest.raises(BlockError):
            v.write(0, b"x" * 100)
        v.close()


@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MiB tmpfs: a device file on it fails with ENOSPC once it has 1 MiB of data (a real I/O error)."""
    from tests.helpers import require_root

    require_root()
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.parametrize("layout,width", [("parity", 3), ("mirror", 2)])
def test_device_failing_in_the_middle_of_writes(tmp_path, tiny_fs, layout, width):
    devs = make_devices(tmp_path, width - 1)
    flaky = str(tiny_fs / "flaky.img")
    with open(flaky, "wb") as f:
        f.truncate(4 << 20)
    with Pool.create(tmp_path / "p", [*devs, flaky], extent_size=EXTENT) as pool:
        size = 64 * EXTENT  # more than fits on the tmpfs: the flaky device fails part way
        pool.create_volume("v", size, layout, width=width, stripe="4K")
        v = pool.open_volume("v")
        model = bytearray(size)
        for off in range(0, size, 5000):  # unaligned writes: read-modify-write rows hit the failure
            chunk = os.urandom(min(5000, size - off))
            v.write(off, chunk)
            model[off : off + len(chunk)] = chunk
        assert pool.find_device(flaky).state == "failed"
        assert "I/O error" in pool.find_device(flaky).reason
        assert v.read(0, size) == model
        spare = make_devices(tmp_path, 1, prefix="spare")[0]
        pool.rebuild(flaky, spare)
        check_redundancy(pool, "v")
        assert v.read(0, size) == model
        v.close()


@pytest.mark.parametrize("layout,width", [("mirror", 2), ("mirror", 3), ("parity", 3), ("parity", 4)])
def test_scrub_finds_and_repairs_disagreeing_columns(tmp_path, layout, width):
    devs = make_devices(tmp_path, 4)
    with Pool.create(tmp_path / "p", devs, extent_size=EXTENT) as pool:
        pool.create_volume("v", SIZE, layout, width=width, stripe="4K")
        pool.create_volume("lin", EXTENT)
        v = pool.open_volume("v")
        data = os.urandom(SIZE)
        v.write(0, data)
        v.flush()
        assert pool.scrub() == {"checked": len(pool.volumes["v"].map), "inconsistent": 0, "repaired": 0,
                                "skipped_degraded": 0, "volumes": []}
        # what a crash between the column writes leaves behind: one column with stale bytes
        cid = pool.volumes["v"].map[2]
        dev_id, pe = pool.chunks[cid][-1]
        with open(pool.devices[dev_id].path, "r+b") as f:
            f.seek(DATA_START + pe * EXTENT + 5000)
            f.write(b"stale" * 100)
        report = pool.scrub()
        assert report["inconsistent"] == 1 and report["volumes"] == ["v"] and report["repaired"] == 0
        assert pool.scrub(repair=True)["repaired"] == 1
        check_redundancy(pool, "v")
        assert pool.scrub()["inconsistent"] == 0
        # after the repair the chunk is consistent again: losing a device changes nothing that is read
        before = v.read(0, SIZE)
        if layout == "mirror":
            assert before == data  # the first copy is authoritative
        pool.fail_device(pool.devices[pool.chunks[cid][0][0]].path)
        assert v.read(0, SIZE) == before
        v.close()
