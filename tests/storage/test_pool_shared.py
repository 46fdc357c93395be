"""One pool, many processes: writers on different volumes, thin allocation from both, an online move and a
resize from a third process while they write. Every byte must be where it was written."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import pytest

from virtkit.storage.pool import Pool, PoolError

EXTENT = 1 << 20

WRITER = textwrap.dedent("""
    import hashlib, os, random, sys
    from virtkit.storage.pool import Pool
    path, name, seed, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    rnd = random.Random(seed)
    with Pool.open(path) as pool:
        vol = pool.open_volume(name)
        size = vol.size
        model = bytearray(size)
        print("ready", flush=True)
        sys.stdin.readline()
        i = 0
        while i < 200 or not os.path.exists(stop):  # until the test says stop: the admin works meanwhile
            i += 1
            off = rnd.randrange(size // 4096) * 4096
            n = min(size - off, rnd.choice([4096, 65536, 3 * 65536 + 512 * 3]))
            data = rnd.randbytes(n)
            vol.write(off, data)
            model[off:off + n] = data
            if i % 50 == 0:
                vol.flush()
        vol.flush()
        got = vol.read(0, size)
        print("ok" if got == bytes(model) else "MISMATCH", hashlib.sha256(model).hexdigest(), i, flush=True)
        vol.close()
""")


def make_devices(tmp_path, n, size=48 << 20):
    out = []
    for i in range(n):
        p = tmp_path / f"dev{i}.img"
        with open(p, "wb") as f:
            f.truncate(size)
        out.append(str(p))
    return out


def spawn(path, name, seed, stop):
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, str(seed), str(stop)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


@pytest.mark.parametrize("layout", ["linear", "mirror"])
def test_writers_in_two_processes_a_move_and_a_resize_from_a_third(tmp_path, layout):
    devs = make_devices(tmp_path, 3)
    with Pool.create(tmp_path / "p", devs, extent_size=EXTENT) as pool:
        pool.create_volume("a", 12 * EXTENT, layout)
        pool.create_volume("b", 12 * EXTENT, layout, thin=True)  # allocates while the other process does too
    stop = tmp_path / "stop"
    procs = [spawn(tmp_path / "p", name, seed, stop) for name, seed in (("a", 1), ("b", 2))]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        with Pool.open(tmp_path / "p") as admin:
            src = admin.devices[admin.chunks[admin.volumes["a"].map[0]][0][0]].path
            moved = admin.move_volume("a", src)  # online, while "a" is written in another process
            admin.create_volume("c", 2 * EXTENT, "linear", thin=True)
            with pytest.raises(PoolError, match="in use by another VM or process"):
                admin.open_volume("a")
            with pytest.raises(PoolError, match="is open"):
                admin.delete_volume("b")
        stop.touch()
        results = [p.stdout.readline().split() for p in procs]
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=300)
    assert moved > 0
    assert [r[0] for r in results] == ["ok", "ok"], results
    with Pool.open(tmp_path / "p") as pool:  # and a fresh process reads back what each writer wrote
        for name, r in zip(("a", "b"), results, strict=True):
            v = pool.open_volume(name, read_only=True)
            assert hashlib.sha256(v.read(0, v.size)).hexdigest() == r[1]
            v.close()
        on = {pool.devices[d].path for cid in pool.volumes["a"].map for d, _ in pool.chunks[cid]}
        assert src not in on
        used = sum(1 for d in pool.devices.values() for x in d.used if x)
        assert used == sum(len(c) for c in pool.chunks.values())  # no extent handed out twice, none leaked
        assert "c" in pool.volumes


def test_a_resize_in_one_process_is_seen_by_an_open_volume_in_another(tmp_path):
    devs = make_devices(tmp_path, 1)
    with Pool.create(tmp_path / "p", devs, extent_size=EXTENT) as pool:
        pool.create_volume("v", 2 * EXTENT, "linear")
    with Pool.open(tmp_path / "p") as user, Pool.open(tmp_path / "p") as admin:
        vol = user.open_volume("v")
        assert vol.size == 2 * EXTENT
        admin.resize_volume("v", 5 * EXTENT)
        assert vol.size == 5 * EXTENT  # no reopen: the sequence number told it
        vol.write(4 * EXTENT, b"z" * 4096)
        vol.close()
        with pytest.raises(PoolError, match="smaller"):
            admin.resize_volume("v", EXTENT)


def test_delete_in_another_process_makes_an_open_volume_fail_cleanly(tmp_path):
    devs = make_devices(tmp_path, 1)
    with Pool.create(tmp_path / "p", devs, extent_size=EXTENT) as pool:
        pool.create_volume("v", 2 * EXTENT, "linear")
    with Pool.open(tmp_path / "p") as reader_pool, Pool.open(tmp_path / "p") as admin:
        ro = reader_pool.open_volume("v", force_share=True)  # unlocked: a delete is not refused
        admin.delete_volume("v")
        from virtkit.storage.backend import BlockError

        with pytest.raises(BlockError, match="was deleted"):
            ro.readinto(0, bytearray(512)) if ro.size else None
        ro.close()


def test_crash_of_the_only_writer_is_noticed_but_not_while_another_has_it(tmp_path):
    devs = make_devices(tmp_path, 2)
    with Pool.create(tmp_path / "p", devs, extent_size=EXTENT) as pool:
        pool.create_volume("m", 2 * EXTENT, "mirror")
    code = ("import os; from virtkit.storage.pool import Pool; p = Pool.open(r'%s'); v = p.open_volume('m'); "
            "v.write(0, b'x' * 4096); v.flush(); os._exit(9)" % (tmp_path / "p"))
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    with Pool.open(tmp_path / "p") as pool:
        assert pool.needs_scrub and any("not closed cleanly" in w for w in pool.warnings)
        assert pool.scrub(repair=True)["inconsistent"] == 0
    with Pool.open(tmp_path / "p") as pool:
        assert not pool.needs_scrub
    assert os.path.exists(tmp_path / "p" / "sessions")
