"""Copy-before-write backups on real images: the view stays the disk as of its instant while a writer keeps
changing the disk; full and incremental backups (offline, through the CLI) read back equal to the disk
at their instants (``qemu-img compare``); a target that fills up, a cancel, a bad request: clear errors,
the disk untouched and its bitmap still counting everything since the last good backup."""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading

import numpy as np
import pytest

from tests.helpers import require_tool, virtkit
from virtkit.storage.backup import BackupJob, PointInTime, allocated_runs
from virtkit.storage.qcow2 import Qcow2

MiB = 1 << 20


def fill(q, rng: random.Random, size: int) -> None:
    for off in range(0, size, MiB):
        if rng.random() < 0.7:
            q.write(off, rng.randbytes(MiB))


def read_all(b, view: bool = False) -> bytes:
    buf = bytearray(b.size)
    (b.read_view if view else b.readinto)(0, buf)
    return bytes(buf)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_view_is_the_instant_while_a_writer_goes_on(tmp_path, seed):
    rng = random.Random(seed)
    src = str(tmp_path / "src.qcow2")
    Qcow2.create(src, 24 * MiB)
    q = Qcow2(src)
    fill(q, rng, q.size)
    before = read_all(q)
    pit = PointInTime(q, 64 << 10, None, scratch_dir=str(tmp_path))
    target = str(tmp_path / "t.raw")
    with open(target, "wb") as f:
        f.truncate(q.size)
    from virtkit.storage.backend import RawFile

    t = RawFile(target)
    job = BackupJob(pit, t, allocated_runs(q), speed=48 * MiB)
    stop = threading.Event()

    def writer() -> None:  # the guest: writes, zeroes and discards all over the disk while the copy runs
        w = random.Random(seed + 100)
        while not stop.is_set():
            off = w.randrange(0, q.size - 200_000)
            kind = w.random()
            if kind < 0.7:
                pit.write(off, w.randbytes(w.randrange(1, 200_000)))
            elif kind < 0.85:
                pit.write_zeroes(off & ~511, 65536)
            else:
                pit.discard(off & ~511, 131072)

    th = threading.Thread(target=writer)
    th.start()
    job.start()
    assert job.wait(60)
    stop.set()
    th.join()
    assert job.state == "completed", job.error
    assert pit.saved_bytes > 0  # the writer did hit chunks the copy still needed
    t.close()
    with open(target, "rb") as f:
        assert f.read() == before
    pit.release_scratch()
    q.close()
    require_tool("qemu-img")
    assert subprocess.run(["qemu-img", "check", src], capture_output=True).returncode == 0


def test_view_reads_are_bounded_and_fail_after_a_broken_copy(tmp_path):
    src = str(tmp_path / "s.qcow2")
    Qcow2.create(src, 4 * MiB)
    with Qcow2(src) as q:
        pit = PointInTime(q, 65536, None, scratch_dir=str(tmp_path))
        with pytest.raises(Exception, match="outside device"):
            pit.read_view(4 * MiB - 512, bytearray(1024))
        with pytest.raises(Exception, match="power of two"):
            PointInTime(q, 3000)
        with pytest.raises(Exception, match="protect map"):
            PointInTime(q, 65536, np.ones(3, dtype=bool))
        pit._scratch.close()  # the scratch file is lost: the guest's write still lands, the view is broken
        pit._sfd = 10_000
        pit.write(0, b"new")
        assert pit.error and "incomplete" in pit.error
        with pytest.raises(Exception, match="incomplete"):
            pit.read_view(0, bytearray(512))
        buf = bytearray(3)
        q.readinto(0, buf)
        assert buf == b"new"


def qcompare(a: str, b: str) -> None:
    p = subprocess.run(["qemu-img", "compare", "-U", a, b], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.fixture
def env(tmp_path):
    require_tool("qemu-img", "qemu-io")
    return dict(os.environ, VIRTKIT_SNAPSHOTS=str(tmp_path / "snaps"), VIRTKIT_RUN_DIR=str(tmp_path / "run"))


def vk(env, *args, ok=True):
    p = virtkit(*args, env=env)
    if ok:
        assert p.returncode == 0, p.stderr
    return p


def qio(path, *cmds):
    args = ["qemu-io"]
    for c in cmds:
        args += ["-c", c]
    assert subprocess.run([*args, path], capture_output=True).returncode == 0


def test_offline_incremental_chain_reads_back_each_instant(tmp_path, env):
    d = str(tmp_path / "d.qcow2")
    vk(env, "disk", "create", "-f", "qcow2", d, "64M")
    qio(d, "write -P 1 0 8M", "write -P 9 60M 64k")
    full, inc1, inc2 = (str(tmp_path / n) for n in ("full.qcow2", "inc1.qcow2", "inc2.qcow2"))
    st = json.loads(vk(env, "backup", d, "--to", full, "--json").stdout)
    assert st["state"] == "completed" and st["kind"] == "full" and st["written"] == 8 * MiB + 65536
    qcompare(d, full)
    qio(d, "write -P 2 1M 64k", "write -P 3 40M 1M", "write -z 60M 64k")
    st = json.loads(vk(env, "backup", d, "--to", inc1, "--incremental", "--json").stdout)
    assert st["base"] == full and st["total"] == 64 * 1024 + MiB + 64 * 1024
    qcompare(d, inc1)
    ref1 = str(tmp_path / "ref1.raw")
    subprocess.run(["qemu-img", "convert", "-O", "raw", d, ref1], check=True)
    qio(d, "discard 0 4M", "write -P 4 50M 128k")
    st = json.loads(vk(env, "backup", d, "--to", inc2, "--incremental", "--json").stdout)
    assert st["base"] == inc1
    qcompare(d, inc2)
    qcompare(ref1, inc1)  # the older link of the chain still reads as its own instant
    info = json.loads(subprocess.run(["qemu-img", "info", "--backing-chain", "--output=json", inc2],
                                     capture_output=True, text=True, check=True).stdout)
    assert [os.path.basename(i["filename"]) for i in info] == ["inc2.qcow2", "inc1.qcow2", "full.qcow2"]
    for img in (d, full, inc1, inc2):
        assert subprocess.run(["qemu-img", "check", img], capture_output=True).returncode == 0


def test_backup_errors_change_nothing(tmp_path, env):
    d = str(tmp_path / "d.qcow2")
    raw = str(tmp_path / "r.raw")
    vk(env, "disk", "create", "-f", "qcow2", d, "16M")
    with open(raw, "wb") as f:
        f.truncate(MiB)
    for args, msg in (
        ([d, "--to", str(tmp_path / "x.qcow2"), "--incremental"], "no bitmap 'virtkit-backup' yet"),
        ([raw, "--to", str(tmp_path / "x.qcow2"), "--incremental"], "not qcow2"),
        ([d, "--to", d], "exists already"),
        ([d, "--to", str(tmp_path / "nodir" / "x.qcow2")], "does not exist"),
        ([d], "needs --to"),
        ([d, "--to", str(tmp_path / "x.raw"), "--base", d], "--base is for --incremental"),
        ([d, "--to", str(tmp_path / "x.qcow2"), "--speed", "-5"], "speed"),
        (["nosuchvm", "--to", str(tmp_path / "x.qcow2")], "no running VM and no disk named"),
        (["nosuchvm", "--status"], "no running VM named"),
    ):
        p = vk(env, "backup", *args, ok=False)
        assert p.returncode != 0 and msg in p.stderr, (args, p.stderr)
    assert not os.path.exists(tmp_path / "x.qcow2") and not os.path.exists(tmp_path / "x.raw")
    vk(env, "backup", d, "--to", str(tmp_path / "full.qcow2"))
    os.unlink(tmp_path / "full.qcow2")
    p = vk(env, "backup", d, "--to", str(tmp_path / "i.qcow2"), "--incremental", ok=False)
    assert "is gone" in p.stderr and not os.path.exists(tmp_path / "i.qcow2")
    p = vk(env, "backup", d, "--to", str(tmp_path / "i.qcow2"), "--incremental", "-O", "raw",
           "--base", raw, ok=False)
    assert "use -O qcow2" in p.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs as a full backup target needs root")
def test_a_target_that_fills_up_fails_the_backup_and_keeps_the_bitmap(tmp_path, env):
    d = str(tmp_path / "d.qcow2")
    vk(env, "disk", "create", "-f", "qcow2", d, "64M")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(small)], check=True)
    try:
        qio(d, "write -P 5 0 12M")
        p = vk(env, "backup", d, "--to", str(small / "full.qcow2"), ok=False)
        assert "target is full" in p.stderr and os.listdir(small) == []
        vk(env, "backup", d, "--to", str(tmp_path / "base.qcow2"))
        qio(d, "write -P 6 16M 8M")
        p = vk(env, "backup", d, "--to", str(small / "inc.qcow2"), "--incremental", "--json", ok=False)
        st = json.loads(p.stdout)
        assert st["state"] == "failed" and "target is full" in st["error"], st
        assert os.listdir(small) == []  # the partial target is removed
        show = json.loads(vk(env, "disk", "show", "--json", d).stdout)
        assert show["bitmaps"][0]["dirty_bytes"] == 8 * MiB  # still counts what the failed backup missed
        vk(env, "backup", d, "--to", str(tmp_path / "inc.qcow2"), "--incremental")
        qcompare(d, str(tmp_path / "inc.qcow2"))
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_backups_to_pool_volumes_full_and_incremental(tmp_path, env):
    """``--to POOL/VOL``: a full backup becomes a new thin volume, an incremental a writable snapshot of the
    previous backup volume with the changed chunks written over it; both read as the disk at their instant."""
    env = dict(env, VIRTKIT_POOLS_DIR=str(tmp_path / "pools"))
    devs = []
    for i in range(2):
        d = tmp_path / f"pv{i}.img"
        with open(d, "wb") as f:
            f.truncate(128 * MiB)
        devs.append(str(d))
    vk(env, "pool", "create", "vault", *devs)
    disk = str(tmp_path / "d.qcow2")
    vk(env, "disk", "create", "-f", "qcow2", disk, "32M")
    qio(disk, "write -P 1 0 4M", "write -P 2 20M 1M")
    st = json.loads(vk(env, "backup", disk, "--to", "vault/full", "--json").stdout)
    assert st["state"] == "completed" and st["format"] == "volume" and st["target"].endswith("/vault/full")

    def volume_bytes(name: str) -> bytes:
        p = virtkit("volume", "show", f"vault/{name}", "--json", env=env)
        assert p.returncode == 0, p.stderr
        out = tmp_path / f"{name}.raw"
        vk(env, "disk", "convert", "-q", "-O", "raw", f"vault/{name}", str(out))
        return out.read_bytes()

    def disk_bytes() -> bytes:
        out = tmp_path / "disk.raw"
        out.unlink(missing_ok=True)
        subprocess.run(["qemu-img", "convert", "-O", "raw", disk, str(out)], check=True)
        return out.read_bytes()

    assert volume_bytes("full") == disk_bytes()
    qio(disk, "write -P 3 1M 64k", "write -z 20M 64k")
    st = json.loads(vk(env, "backup", disk, "--to", "vault/inc1", "--incremental", "--json").stdout)
    assert st["state"] == "completed" and st["total"] == 2 * 65536
    assert volume_bytes("inc1") == disk_bytes()
    full_before = volume_bytes("full")
    assert full_before != disk_bytes()  # the older backup kept its own instant
    p = vk(env, "backup", disk, "--to", "vault/inc1", "--incremental", ok=False)
    assert "exists already" in p.stderr
