"""Pool volumes behave like a plain disk: random write/read/discard sequences on every layout
are compared against a bytearray model, and data really lands on several devices."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtkit.storage.backend import BlockBackend, BlockError
from virtkit.storage.pool import Pool
from virtkit.storage.pool_meta import DATA_START

EXTENT = 16 << 10
STRIPE = 4 << 10


def make_devices(tmp: Path, n: int, size: int = 4 << 20) -> list[str]:
    paths = []
    for i in range(n):
        p = tmp / f"dev{i}.img"
        with open(p, "wb") as f:
            f.truncate(size)
        paths.append(str(p))
    return paths


LAYOUTS = [("linear", 1), ("striped", 3), ("mirror", 2), ("parity", 4), ("parity", 3)]

op = st.one_of(
    st.tuples(st.just("w"), st.integers(0, 200_000), st.integers(1, 40_000), st.integers(0, 255)),
    st.tuples(st.just("r"), st.integers(0, 200_000), st.integers(1, 40_000), st.just(0)),
    st.tuples(st.just("d"), st.integers(0, 200_000), st.integers(1, 60_000), st.just(0)),
    st.tuples(st.just("f"), st.just(0), st.just(0), st.just(0)),
)


@pytest.mark.parametrize("thin", [False, True], ids=["thick", "thin"])
@pytest.mark.parametrize("layout,width", LAYOUTS, ids=[f"{a}{b}" for a, b in LAYOUTS])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, max_size=25))
def test_volume_matches_bytearray_model(tmp_path_factory, layout, width, thin, ops):
    tmp = tmp_path_factory.mktemp("m")
    size = 200_704  # not a multiple of the chunk capacity: the tail is exercised too
    with Pool.create(tmp / "pool", make_devices(tmp, 4), extent_size=EXTENT) as pool:
        pool.create_volume("v", size, layout, width=width, stripe=STRIPE, thin=thin)
        vol = pool.open_volume("v")
        assert isinstance(vol, BlockBackend)
        model = bytearray(size)
        for kind, off, n, val in ops:
            off = off % size
            n = min(n, size - off)
            if kind == "w":
                data = bytes([val]) * n if val % 2 else os.urandom(n)
                vol.write(off, data)
                model[off : off + n] = data
            elif kind == "r":
                assert vol.read(off, n) == model[off : off + n]
            elif kind == "d":
                vol.discard(off, n)
                model[off : off + n] = bytes(n)
            else:
                vol.flush()
        assert vol.read(0, size) == model
        vol.close()
    # and the same content after reopening from metadata
    with Pool.open(tmp / "pool") as pool:
        vol = pool.open_volume("v")
        assert vol.read(0, size) == model
        vol.close()


def test_out_of_range_and_read_only(tmp_path):
    with Pool.create(tmp_path / "p", make_devices(tmp_path, 1), extent_size=EXTENT) as pool:
        pool.create_volume("v", 64 << 10)
        vol = pool.open_volume("v")
        with pytest.raises(BlockError, match="outside"):
            vol.write(64 << 10, b"x")
        with pytest.raises(BlockError, match="outside"):
            vol.readinto(-1, bytearray(1))
        vol.close()
        pool.snapshot("v", "s")
        snap = pool.open_volume("s")
        with pytest.raises(BlockError, match="read-only"):
            snap.write(0, b"x")
        snap.close()


def raw_extent(pool: Pool, dev_id: int, pe: int) -> bytes:
    dev = pool.devices[dev_id]
    with open(dev.path, "rb") as f:
        f.seek(DATA_START + pe * pool.extent)
        return f.read(pool.extent)


def test_striped_data_is_spread_round_robin(tmp_path):
    with Pool.create(tmp_path / "p", make_devices(tmp_path, 3), extent_size=EXTENT) as pool:
        pool.create_volume("s", 3 * EXTENT, "striped", width=3, stripe=STRIPE)
        vol = pool.open_volume("s")
        units = [bytes([i + 1]) * STRIPE for i in range(3 * EXTENT // STRIPE)]
        vol.write(0, b"".join(units))
        vol.flush()
        cols = pool.chunks[pool.volumes["s"].map[0]]
        assert len({d for d, _ in cols}) == 3  # three distinct devices
        for c, (dev_id, pe) in enumerate(cols):
            raw = raw_extent(pool, dev_id, pe)
            expect = b"".join(units[u] for u in range(c, len(units), 3))
            assert raw == expect
        vol.close()


def test_mirror_copies_are_byte_equal_on_distinct_devices(tmp_path):
    with Pool.create(tmp_path / "p", make_devices(tmp_path, 3), extent_size=EXTENT) as pool:
        pool.create_volume("m", 4 * EXTENT, "mirror", width=3)
        vol = pool.open_volume("m")
        data = os.urandom(4 * EXTENT)
        vol.write(0, data)
        vol.flush()
        for ci, cid in enumerate(pool.volumes["m"].map):
            cols = pool.chunks[cid]
            assert len({d for d, _ in cols}) == 3
            for dev_id, pe in cols:
                assert raw_extent(pool, dev_id, pe) == data[ci * EXTENT : (ci + 1) * EXTENT]
        vol.close()


def test_parity_rotates_and_xors(tmp_path):
    with Pool.create(tmp_path / "p", make_devices(tmp_path, 4), extent_size=EXTENT) as pool:
        pool.create_volume("r5", 3 * EXTENT, "parity", width=4, stripe=STRIPE)
        vol = pool.open_volume("r5")
        data = os.urandom(3 * EXTENT)
        vol.write(0, data[:5000])  # read-modify-write path
        vol.write(5000, data[5000:])  # then mostly full-stripe writes
        vol.flush()
        cols = pool.chunks[pool.volumes["r5"].map[0]]
        raws = [raw_extent(pool, d, pe) for d, pe in cols]
        geo = pool.volumes["r5"].geo
        rows = EXTENT // STRIPE
        parity_cols = set()
        for row in range(rows):
            pc = geo.parity_col(row)
            parity_cols.add(pc)
            units = [raws[c][row * STRIPE : (row + 1) * STRIPE] for c in range(4)]
            x = bytearray(STRIPE)
            for c in range(4):
                if c != pc:
                    x = bytearray(a ^ b for a, b in zip(x, units[c], strict=True))
            assert bytes(x) == units[pc], f"row {row}"
            for u in range(3):  # the data units hold the volume bytes in order
                start = (row * 3 + u) * STRIPE
                assert units[geo.data_col(row, u)] == data[start : start + STRIPE]
        assert parity_cols == {0, 1, 2, 3}  # parity rotates over every device
        vol.close()


def test_volume_of_a_closed_pool_is_a_clear_error(tmp_path):
    pool = Pool.create(tmp_path / "p", make_devices(tmp_path, 1), extent_size=EXTENT)
    pool.create_volume("v", EXTENT)
    vol = pool.open_volume("v")
    pool.close()
    with pytest.raises(BlockError, match="closed"):
        vol.read(0, 1)
    with pytest.raises(BlockError, match="closed"):
        vol.write(0, b"x")
    vol.close()
    with Pool.open(tmp_path / "p") as again:  # nothing was marked failed by the stale handle
        assert again.status()["state"] == "ok"
