"""Longer random histories: snapshots and rollbacks interleaved with writes, a device failing in
the middle of the history and a rebuild at the end, and several threads writing at once."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtkit.storage.pool import Pool
from virtkit.storage.pool_meta import DATA_START

EXTENT = 16 << 10


def make_devices(tmp: Path, n: int, size: int = 4 << 20, prefix: str = "dev") -> list[str]:
    paths = []
    for i in range(n):
        p = tmp / f"{prefix}{i}.img"
        with open(p, "wb") as f:
            f.truncate(size)
        paths.append(str(p))
    return paths


op = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 10**6), st.integers(1, 30_000)),
    st.tuples(st.just("discard"), st.integers(0, 10**6), st.integers(1, 50_000)),
    st.tuples(st.just("snapshot"), st.just(0), st.just(0)),
    st.tuples(st.just("rollback"), st.integers(0, 100), st.just(0)),
    st.tuples(st.just("fail"), st.integers(0, 3), st.just(0)),
    st.tuples(st.just("reopen"), st.just(0), st.just(0)),
)


@pytest.mark.parametrize("layout,width", [("linear", 1), ("mirror", 2), ("parity", 3), ("striped", 2)])
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, max_size=20))
def test_history_with_snapshots_failure_and_rebuild(tmp_path_factory, layout, width, ops):
    tmp = tmp_path_factory.mktemp("h")
    size = 150_016
    devs = make_devices(tmp, 4)
    pool = Pool.create(tmp / "p", devs, extent_size=EXTENT)
    pool.create_volume("v", size, layout, width=width, stripe="4K", thin=True)
    vol = pool.open_volume("v")
    model = bytearray(size)
    snaps: dict[str, bytes] = {}
    failed: str | None = None
    for kind, a, b in ops:
        if kind == "write":
            off = a % size
            n = min(b, size - off)
            data = os.urandom(n)
            vol.write(off, data)
            model[off : off + n] = data
        elif kind == "discard":
            off = a % size
            n = min(b, size - off)
            vol.discard(off, n)
            model[off : off + n] = bytes(n)
        elif kind == "snapshot":
            name = f"s{len(snaps)}"
            pool.snapshot("v", name)
            snaps[name] = bytes(model)
        elif kind == "rollback" and snaps:
            name = sorted(snaps)[a % len(snaps)]
            vol.close()
            pool.rollback("v", name)
            vol = pool.open_volume("v")
            model = bytearray(snaps[name])
        elif kind == "fail" and failed is None and pool.volumes["v"].geo.redundant:
            failed = devs[a]
            pool.fail_device(failed)
        elif kind == "reopen":
            vol.close()
            pool.close()
            pool = Pool.open(tmp / "p")
            vol = pool.open_volume("v")
        assert vol.read(0, size) == model
    for name, content in snaps.items():
        s = pool.open_volume(name)
        assert s.read(0, size) == content, name
        s.close()
    if failed is not None:
        spare = make_devices(tmp, 1, prefix="spare")[0]
        pool.rebuild(failed, spare)
        assert pool.status()["state"] == "ok"
        assert vol.read(0, size) == model
    vol.close()
    pool.close()


def test_concurrent_writers_on_one_parity_volume(tmp_path):
    """Threads write disjoint ranges that share parity rows: the pool lock keeps parity right."""
    size = 64 * EXTENT
    with Pool.create(tmp_path / "p", make_devices(tmp_path, 4), extent_size=EXTENT) as pool:
        pool.create_volume("r", size, "parity", width=4, stripe="4K")
        vols = [pool.open_volume("r") for _ in range(4)]  # like four NBD clients
        model = bytearray(size)
        errors: list[BaseException] = []

        def writer(k: int) -> None:
            rnd = random.Random(k)
            try:
                for _ in range(150):
                    # 1 KiB slots interleaved between threads: every write shares a row with the others
                    slot = rnd.randrange(size // 1024 // 4) * 4 + k
                    data = os.urandom(1024)
                    vols[k].write(slot * 1024, data)
                    model[slot * 1024 : (slot + 1) * 1024] = data
            except BaseException as err:  # pragma: no cover - reported below
                errors.append(err)

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors
        assert vols[0].read(0, size) == model
        vols[0].flush()
        for cid in pool.volumes["r"].map:  # parity consistent on disk
            x = bytearray(EXTENT)
            for dev_id, pe in pool.chunks[cid]:
                with open(pool.devices[dev_id].path, "rb") as f:
                    f.seek(DATA_START + pe * EXTENT)
                    x = bytearray(p ^ q for p, q in zip(x, f.read(EXTENT), strict=True))
            assert x == bytes(EXTENT)
        for v in vols:
            v.close()
