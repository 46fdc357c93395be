"""Machine snapshots: a guest counting in RAM is snapshotted, restored (into a new machine, into the same
one) and goes on counting from where it stopped, with equal memory; sparse, compressed and diff bundles;
every kind of damaged bundle is a clear error.

The guest is a few hand-encoded instructions on the riscv64-virt board (no firmware), run by the real
engine in deterministic mode, so two machines given the same instruction budget must agree exactly.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time

import numpy as np
import pytest

from tests.helpers.guests import COUNTING, Out, counter
from tests.helpers.machines import virt
from tests.helpers.opensbi import payload_image
from virtkit.machine import snapshot
from virtkit.machine.snapshot import SnapshotError
from virtkit.machine.state import StateError


def counting_machine(tmp_path, console=None, **kw):
    img = tmp_path / "Image"
    if not img.exists():
        payload_image(img, COUNTING)
    return virt(console or Out(), kernel=str(img), firmware=None, mem_mib=32, rng=False, deterministic=True, **kw)


def ram_sha(m) -> str:
    return hashlib.sha256(m.mem.array[: m.mem.size].tobytes()).hexdigest()


def run_until(m, insns: int, start: bool) -> None:
    """Run (or resume) ``m`` until the engine has done ``insns`` in all; it ends with reason "budget"."""
    m.vm.max_insns = insns
    if start:
        m.vm.start()
    else:
        m.vm.resume()
    res = m.vm.wait(120)
    assert res is not None and res.reason == "budget", res


@pytest.fixture()
def counted(tmp_path):
    """A machine that counted for a while and is paused, and a snapshot of it."""
    m = counting_machine(tmp_path)
    m.vm.start()
    deadline = time.monotonic() + 60
    while counter(m) < 50_000 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert m.vm.pause(), "the VM did not pause"
    snap = tmp_path / "snap1"
    man = snapshot.save(m, snap)
    yield m, snap, man
    m.vm.close()


def test_restored_guest_counts_on_from_where_it_stopped(tmp_path, counted):
    a, snap, man = counted
    c1, sha1, p1 = counter(a), ram_sha(a), a.engine.progress()
    assert c1 >= 50_000 and man["memory"]["encoding"] == "sparse"
    assert man["memory"]["pages"] < (32 << 20) // 4096 // 2  # zero pages were not written
    b = snapshot.restore(snap, Out())
    try:
        assert counter(b) == c1 and ram_sha(b) == sha1  # memory checksums equal
        assert b.engine.save() == a.engine.save()
        target = p1 + 3_000_000
        run_until(a, target, start=False)
        run_until(b, target, start=True)
        assert counter(b) == counter(a) > c1 + 100_000  # both counted on, in lockstep
        assert ram_sha(b) == ram_sha(a)
    finally:
        b.vm.close()


def test_restore_maps_memory_copy_on_write_and_never_changes_the_file(tmp_path, counted):
    a, snap, _ = counted
    before = hashlib.sha256((snap / "memory.bin").read_bytes()).hexdigest()
    b = snapshot.restore(snap, Out())
    try:
        run_until(b, b.engine.progress() + 1_000_000, start=True)
    finally:
        b.vm.close()
    assert hashlib.sha256((snap / "memory.bin").read_bytes()).hexdigest() == before
    snapshot.verify(snap)


def test_restore_into_the_paused_vm_rewinds_it_in_place(tmp_path, counted):
    a, snap, _ = counted
    c1, sha1 = counter(a), ram_sha(a)
    a.vm.resume()
    deadline = time.monotonic() + 60
    while counter(a) < c1 + 20_000 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert a.vm.pause() and counter(a) >= c1 + 20_000
    secs = snapshot.restore_into(a, snap)  # same process, same machine: the guest goes back in time
    assert secs < 5 and counter(a) == c1 and ram_sha(a) == sha1
    a.vm.resume()
    deadline = time.monotonic() + 60
    while counter(a) < c1 + 1000 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert a.vm.pause() and counter(a) >= c1 + 1000  # and counts on from there


def test_compressed_and_diff_snapshots(tmp_path, counted):
    a, snap, _ = counted
    run_until(a, a.engine.progress() + 500_000, start=False)  # ends the run: a stopped VM can be saved too
    sha2, c2 = ram_sha(a), counter(a)
    diff = snapshot.save(a, tmp_path / "snap2", parent=snap)
    z = snapshot.save(a, tmp_path / "snap2z", compress=True)
    assert diff["memory"]["encoding"] == "diff" and 0 < diff["memory"]["changed"] < 16
    assert z["memory"]["encoding"] == "zstd" and z["memory"]["compressed"] < (1 << 20)
    for s in ("snap2", "snap2z"):
        b = snapshot.restore(tmp_path / s, Out())
        try:
            assert counter(b) == c2 and ram_sha(b) == sha2, s
        finally:
            b.vm.close()
    # relocatable: the pair moves together, the diff finds its parent by relative path
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.move(str(snap), moved / "snap1")
    shutil.move(str(tmp_path / "snap2"), moved / "snap2")
    b = snapshot.restore(moved / "snap2", Out())
    try:
        assert ram_sha(b) == sha2
    finally:
        b.vm.close()
    with pytest.raises(SnapshotError, match="is a diff on top of snap1"):
        snapshot.delete(moved / "snap1")


def _damage(snap, what):
    if what == "truncated memory":
        with open(snap / "memory.bin", "r+b") as f:
            f.truncate(4096)
    elif what == "corrupt memory":
        (snap / "memory.bin").chmod(0o644)
        with open(snap / "memory.bin", "r+b") as f:
            f.seek(0x40)
            b = f.read(1)
            f.seek(0x40)
            f.write(bytes([b[0] ^ 1]))
    elif what == "corrupt state":
        data = bytearray((snap / "state.json").read_bytes())
        data[10] ^= 1
        (snap / "state.json").write_bytes(bytes(data))
    elif what == "edited manifest":
        m = json.loads((snap / "manifest.json").read_text())
        m["machine"]["memory"] = 64 << 20
        (snap / "manifest.json").write_text(json.dumps(m))
    elif what == "wrong version":
        m = json.loads((snap / "manifest.json").read_text())
        m["version"] = 99
        (snap / "manifest.json").write_text(json.dumps(m))
    elif what == "not json":
        (snap / "manifest.json").write_text("{nope")
    elif what == "missing state":
        (snap / "state.json").unlink()
    elif what == "no manifest":
        (snap / "manifest.json").unlink()


@pytest.mark.parametrize("what,msg", [
    ("truncated memory", "memory.bin is corrupt|truncated"),
    ("corrupt memory", "memory.bin is corrupt"),
    ("corrupt state", "state.json is corrupt"),
    ("edited manifest", "checksum mismatch: the manifest was changed"),
    ("wrong version", "snapshot format version 99"),
    ("not json", "not valid JSON"),
    ("missing state", "state.json is missing"),
    ("no manifest", "not a virtkit snapshot"),
])
def test_damaged_snapshots_are_clear_errors(tmp_path, counted, what, msg):
    _, snap, _ = counted
    _damage(snap, what)
    with pytest.raises(SnapshotError, match=msg):
        snapshot.restore(snap, Out())


def test_wrong_machine_is_refused(tmp_path, counted):
    _, snap, _ = counted
    other = virt(Out(), kernel=str(tmp_path / "Image"), firmware=None, mem_mib=64, rng=False)
    try:
        with pytest.raises(SnapshotError, match="RAM of 33554432 bytes"):
            snapshot.restore_into(other, snap)
    finally:
        other.vm.close()
    two = virt(Out(), kernel=str(tmp_path / "Image"), firmware=None, mem_mib=32, rng=True)
    try:  # one device more (the rng in a virtio slot): the records do not fit
        with pytest.raises(StateError, match="devices"):
            snapshot.restore_into(two, snap)
    finally:
        two.vm.close()


def test_saving_a_running_vm_is_refused(tmp_path):
    m = counting_machine(tmp_path)
    m.vm.start()
    try:
        with pytest.raises(Exception, match="pause it"):
            snapshot.save(m, tmp_path / "s")
        assert not (tmp_path / "s").exists()
    finally:
        m.vm.close()


def test_memory_checksum_does_not_depend_on_holes(tmp_path, counted):
    """A bundle copied without holes (cp --sparse=never, a tar without -S) still verifies and restores."""
    _, snap, _ = counted
    full = tmp_path / "copied"
    shutil.copytree(snap, full)
    mem = full / "memory.bin"
    data = (snap / "memory.bin").read_bytes()
    mem.chmod(0o644)
    mem.unlink()
    with open(mem, "wb") as f:  # every byte written: no holes left
        f.write(data)
    assert mem.stat().st_blocks * 512 >= len(data)
    snapshot.verify(full)
    assert snapshot.memory_digest(mem) == snapshot.read_manifest(snap)["memory"]["digest"]


def test_restores_and_clones_are_new_generations_the_guest_reads(tmp_path):
    """The guest copies the VM generation ID from its MMIO window into RAM: each restored copy of a
    snapshot reads an ID of its own (a clone knows it is a copy); a migration-style state transfer keeps it."""
    from tests.helpers.guests import COUNTER, GENID
    from virtkit.machine import vmsnap

    img = tmp_path / "gen.img"
    payload_image(img, GENID)
    m = virt(Out(), kernel=str(img), firmware=None, mem_mib=16, rng=False)
    seen = {}
    try:
        m.vm.start()
        deadline = time.monotonic() + 30
        while m.mem.read(COUNTER, 16) != m.device("vmgenid").guid and time.monotonic() < deadline:
            time.sleep(0.01)
        seen["original"] = m.mem.read(COUNTER, 16)
        assert seen["original"] == m.device("vmgenid").guid
        assert m.vm.pause()
        vmsnap.take(m, tmp_path / "g1")
        copies = [vmsnap.restore(tmp_path / "g1", Out(), clone=True)[0] for _ in range(2)]
        copies.append(snapshot.restore(tmp_path / "g1", Out()))  # a plain restore is a new generation too
        for i, c in enumerate(copies):
            try:
                assert c.mem.read(COUNTER, 16) == seen["original"]  # RAM as it was at the snapshot...
                c.vm.start()
                deadline = time.monotonic() + 30
                # ...then the guest copies its new ID (wait for the whole of it: the guest may resume between
                # its two stores, and a read in between sees half the old ID and half the new)
                while c.mem.read(COUNTER, 16) != c.device("vmgenid").guid and time.monotonic() < deadline:
                    time.sleep(0.01)
                seen[i] = c.mem.read(COUNTER, 16)
                assert seen[i] == c.device("vmgenid").guid
            finally:
                c.vm.close()
        assert len(set(seen.values())) == 4, seen
        state = m.save_state()
        other = virt(Out(), kernel=str(img), firmware=None, mem_mib=16, rng=False)
        try:
            other.restore_state(state)  # what a migration target does: the same VM, the same ID
            assert other.device("vmgenid").guid == seen["original"]
        finally:
            other.vm.close()
    finally:
        m.vm.close()


def test_untouched_ram_is_neither_read_nor_written_and_touched_pages_all_are(tmp_path):
    """``GuestMemory.resident_pages`` (pagemap: present or swapped) tells which pages the guest ever wrote;
    the sparse memory file holds exactly the non-zero ones among them, and restores equal."""
    from virtkit.machine.memory import GuestMemory

    mem = GuestMemory(8 << 20)
    try:
        res = mem.resident_pages()
        if res is None:
            pytest.skip("/proc/self/pagemap is not readable here")
        assert not res.any()
        for page, value in ((0, 1), (7, 2), (1500, 3), (2047, 4)):
            mem.array[page * 4096 + 100] = value
        mem.array[300 * 4096] = 0  # touched (written), but zero: resident, not in the file
        res = mem.resident_pages()
        assert set(np.flatnonzero(res)) == {0, 7, 300, 1500, 2047}
        path = tmp_path / "mem"
        written, _, _ = snapshot.write_memory(mem.array[: mem.size], path, resident=res)
        assert written == 4
        data = np.fromfile(path, dtype=np.uint8)
        assert np.array_equal(data, mem.array[: mem.size])
    finally:
        mem.close()
