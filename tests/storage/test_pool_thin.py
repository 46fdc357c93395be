"""Thin provisioning (over-commit, usage, discard) and copy-on-write snapshots with rollback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from virtkit.storage.backend import BlockError
from virtkit.storage.pool import Pool, PoolError

EXTENT = 64 << 10


def make_devices(tmp: Path, n: int, size: int = 4 << 20) -> list[str]:
    paths = []
    for i in range(n):
        p = tmp / f"dev{i}.img"
        with open(p, "wb") as f:
            f.truncate(size)
        paths.append(str(p))
    return paths


def test_thin_overcommit_usage_and_discard(tmp_path):
    with Pool.create(tmp_path / "p", make_devices(tmp_path, 2), extent_size=EXTENT) as pool:
        total = pool.status()["size"]
        pool.create_volume("a", "1G", thin=True)  # far more than the pool holds
        pool.create_volume("b", "1G", thin=True)
        st = pool.status()
        assert st["used"] == 0 and st["thin_virtual"] == 2 << 30 and st["overcommit"] > 100
        a = pool.open_volume("a")
        assert a.read(123456789, 100) == bytes(100)  # unallocated reads as zeros
        a.write(0, b"x" * 10)
        a.write(5 * EXTENT + 7, b"y" * (EXTENT + 1))  # spans two chunks
        st = pool.status()
        assert st["used"] == 3 * EXTENT
        usage = next(v for v in st["volumes"] if v["name"] == "a")
        assert usage["allocated"] == 3 * EXTENT and usage["size"] == 1 << 30
        a.discard(4 * EXTENT, 3 * EXTENT)  # frees the two whole chunks 5 and 6
        assert pool.status()["used"] == EXTENT
        assert a.read(5 * EXTENT, 10) == bytes(10)
        a.discard(0, 5)  # partial: zeros, chunk stays
        assert a.read(0, 10) == bytes(5) + b"x" * 5
        assert pool.status()["used"] == EXTENT
        # fill the pool past the warning threshold, then out of space is a clear write error
        n = total // EXTENT
        with pytest.raises(BlockError, match="out of space"):
            for i in range(n + 1):
                a.write((100 + i) * EXTENT, b"z")
        st = pool.status()
        assert st["used_percent"] == 100.0 and any("full" in w for w in st["warnings"])
        a.discard(0, 1 << 30)
        assert pool.status()["used"] == 0
        a.close()


def test_warning_threshold(tmp_path):
    with Pool.create(tmp_path / "p", make_devices(tmp_path, 1), extent_size=EXTENT, warn_percent=10) as pool:
        extents = pool.status()["extents_total"]
        pool.create_volume("t", "1G", thin=True)
        v = pool.open_volume("t")
        for i in range(extents // 10 - 1):
            v.write(i * EXTENT, b"x")
        assert not pool.status()["warnings"]
        v.write(extents * EXTENT, b"x")
        v.write((extents + 1) * EXTENT, b"x")
        assert "warning threshold 10%" in pool.status()["warnings"][0]
        v.close()


def test_thick_volume_needs_space_up_front(tmp_path):
    with Pool.create(tmp_path / "p", make_devices(tmp_path, 1), extent_size=EXTENT) as pool:
        with pytest.raises(PoolError, match="not enough free space"):
            pool.create_volume("big", "1G")
        assert pool.status()["used"] == 0 and not pool.volumes


@pytest.mark.parametrize("layout,thin", [("linear", True), ("linear", False), ("mirror", False), ("parity", True)])
def test_snapshot_keeps_old_content_and_rollback_restores_it(tmp_path, layout, thin):
    with Pool.create(tmp_path / "p", make_devices(tmp_path, 3), extent_size=EXTENT) as pool:
        width = {"linear": 1, "mirror": 2, "parity": 3}[layout]
        pool.create_volume("v", 8 * EXTENT, layout, width=width, thin=thin, stripe="4K")
        v = pool.open_volume("v")
        before = os.urandom(8 * EXTENT)
        v.write(0, before)
        used_before = pool.status()["used"]
        pool.snapshot("v", "s1")
        assert pool.status()["used"] == used_before  # a snapshot shares everything
        v.write(100, b"A" * 1000)  # copy on write of chunk 0 only
        v.write(3 * EXTENT, b"B" * EXTENT)
        after = bytearray(before)
        after[100:1100] = b"A" * 1000
        after[3 * EXTENT : 4 * EXTENT] = b"B" * EXTENT
        assert v.read(0, 8 * EXTENT) == after
        s = pool.open_volume("s1")
        assert s.read_only and s.read(0, 8 * EXTENT) == before
        s.close()
        assert pool.status()["used"] == used_before + 2 * EXTENT * width
        with pytest.raises(PoolError, match="open"):
            pool.rollback("v", "s1")
        v.close()
        pool.rollback("v", "s1")
        assert pool.status()["used"] == used_before  # the diverged chunks went back to the pool
    with Pool.open(tmp_path / "p") as pool:
        v = pool.open_volume("v")
        assert v.read(0, 8 * EXTENT) == before
        v.close()
        pool.delete_volume("v")
        s = pool.open_volume("s1")  # the snapshot outlives its origin
        assert s.read(0, 8 * EXTENT) == before
        s.close()
        pool.delete_volume("s1")
        assert pool.status()["used"] == 0


def test_snapshot_errors(tmp_path):
    with Pool.create(tmp_path / "p", make_devices(tmp_path, 1), extent_size=EXTENT) as pool:
        pool.create_volume("v", EXTENT, thin=True)
        pool.create_volume("w", EXTENT, thin=True)
        pool.snapshot("v", "s")
        with pytest.raises(PoolError, match="already exists"):
            pool.snapshot("v", "s")
        with pytest.raises(PoolError, match="not a snapshot of"):
            pool.rollback("w", "s")
        with pytest.raises(PoolError, match="bad snapshot name"):
            pool.snapshot("v", "../x")
        with pytest.raises(PoolError, match="no volume"):
            pool.snapshot("nope", "t")
        with pytest.raises(PoolError, match="read-only"):
            pool.open_volume("s", read_only=False)


def test_writable_clone_diverges_both_ways(tmp_path):
    with Pool.create(tmp_path / "p", make_devices(tmp_path, 2), extent_size=EXTENT) as pool:
        pool.create_volume("base", 4 * EXTENT, "mirror")
        b = pool.open_volume("base")
        golden = os.urandom(4 * EXTENT)
        b.write(0, golden)
        pool.snapshot("base", "clone", writable=True)
        c = pool.open_volume("clone")
        assert not c.read_only and c.read(0, 4 * EXTENT) == golden
        c.write(10, b"clone")
        b.write(EXTENT + 10, b"base")
        assert b.read(10, 5) == golden[10:15] and c.read(10, 5) == b"clone"
        assert c.read(EXTENT + 10, 4) == golden[EXTENT + 10 : EXTENT + 14] and b.read(EXTENT + 10, 4) == b"base"
        c.close()
        b.close()
        pool.rollback("base", "clone")  # like merging the clone back
        b = pool.open_volume("base")
        assert b.read(10, 5) == b"clone" and b.read(EXTENT + 10, 4) == golden[EXTENT + 10 : EXTENT + 14]
        b.close()
