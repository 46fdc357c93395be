"""qcow2 images written and read by virtkit alone: data model, zero clusters, backing chains,
snapshots, refcount growth and the checker (interop with QEMU is in test_qcow2_interop.py)."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtkit.errors import VirtkitError
from virtkit.storage import open_disk
from virtkit.storage.backend import BlockBackend, BlockError, RawFile
from virtkit.storage.imgtool import convert, image_info
from virtkit.storage.qcow2 import Qcow2, Qcow2Error


def read_all(d: BlockBackend) -> bytes:
    buf = bytearray(d.size)
    d.readinto(0, buf)
    return bytes(buf)


@pytest.fixture
def img(tmp_path):
    path = str(tmp_path / "a.qcow2")
    Qcow2.create(path, 8 << 20)
    return path


def test_new_image_reads_zero_and_is_a_block_backend(img):
    with Qcow2(img) as d:
        assert isinstance(d, BlockBackend)
        assert d.size == 8 << 20 and d.cluster_size == 65536
        assert read_all(d) == bytes(8 << 20)
        assert d.check().clean


def test_open_disk_detects_format(tmp_path, img):
    raw = tmp_path / "r.img"
    raw.write_bytes(b"\x01" * 4096)
    d = open_disk(str(raw), read_only=True)
    assert isinstance(d, RawFile)
    d.close()
    d = open_disk(img)
    assert isinstance(d, Qcow2)
    d.close()
    with pytest.raises(BlockError, match="does not exist"):
        open_disk(str(tmp_path / "missing"))


def test_random_writes_match_a_model_and_survive_reopen(img):
    rng = random.Random(5)
    model = bytearray(8 << 20)
    with Qcow2(img) as d:
        for i in range(150):
            off = rng.randrange(0, len(model) - 1)
            n = rng.randrange(1, min(300_000, len(model) - off) + 1)
            data = rng.randbytes(n)
            d.write(off, data)
            model[off:off + n] = data
            if i % 40 == 0:
                d.flush()
        assert read_all(d) == model
        assert d.check().clean
    with Qcow2(img, read_only=True) as d:
        assert read_all(d) == model
        assert d.check().clean


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(["write", "zero", "discard", "flush"]),
                              st.integers(0, (2 << 20) - 1), st.integers(1, 200_000), st.integers(0, 255)),
                    max_size=25),
       cluster_bits=st.sampled_from([9, 12, 16]))
def test_hypothesis_sequences_match_bytearray_model(tmp_path, ops, cluster_bits):
    path = str(tmp_path / f"h{cluster_bits}.qcow2")
    size = 2 << 20
    Qcow2.create(path, size, cluster_size=1 << cluster_bits)
    model = bytearray(size)
    with Qcow2(path) as d:
        for op, off, n, byte in ops:
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
                d.flush()
        assert read_all(d) == model
    with Qcow2(path, read_only=True) as d:
        assert read_all(d) == model
        res = d.check()
        assert res.corruptions == 0 and res.leaks == 0, res.messages


def test_zero_clusters_free_space_and_read_zero(img):
    with Qcow2(img) as d:
        d.write(0, b"\xaa" * (4 << 20))
        d.flush()
        d.write_zeroes(65536, 3 << 20)
        d.flush()
        d.flush()  # second flush writes the refcount decrements released by the first
        buf = read_all(d)
        assert buf[:65536] == b"\xaa" * 65536 and buf[65536:65536 + (3 << 20)] == bytes(3 << 20)
        assert buf[65536 + (3 << 20):4 << 20] == b"\xaa" * ((4 << 20) - 65536 - (3 << 20))
        assert d.check().clean
        # freed clusters are reused by later writes instead of growing the file
        end_before = d.check().image_end_offset
        d.write(5 << 20, b"\x55" * (2 << 20))
        assert d.check().image_end_offset == end_before


def test_refcount_table_grows_with_small_clusters(tmp_path):
    path = str(tmp_path / "small.qcow2")
    Qcow2.create(path, 16 << 20, cluster_size=512)
    data = random.Random(1).randbytes(16 << 20)
    with Qcow2(path) as d:
        rt_before = d.rt_clusters
        d.write(0, data)
        assert d.rt_clusters > rt_before
        assert d.check().clean
    with Qcow2(path, read_only=True) as d:
        assert read_all(d) == data


def test_backing_chain_reads_fall_through_and_writes_stay_on_top(tmp_path):
    base = str(tmp_path / "base.raw")
    with open(base, "wb") as f:
        f.write(b"B" * (1 << 20))
        f.truncate(4 << 20)
    mid = str(tmp_path / "mid.qcow2")
    top = str(tmp_path / "top.qcow2")
    Qcow2.create(mid, -1, backing="base.raw")
    with Qcow2(mid) as d:
        assert d.size == 4 << 20 and d.backing_format == "raw"
        d.write(100_000, b"M" * 1000)
    Qcow2.create(top, 6 << 20, backing=mid, backing_fmt="qcow2")  # larger than its backing: tail reads zero
    with Qcow2(top) as d:
        d.write(200_000, b"T" * 70_000)  # partial clusters: copy-on-write of the backing's data
        d.discard(0, 65536)  # a discarded cluster must not show the backing again
        got = read_all(d)
        assert len(d.backing_chain()) == 3
    want = bytearray(b"B" * (1 << 20) + bytes(5 << 20))
    want[100_000:101_000] = b"M" * 1000
    want[200_000:270_000] = b"T" * 70_000
    want[0:65536] = bytes(65536)
    assert got == want
    with open(base, "rb") as f:
        assert f.read(1 << 20) == b"B" * (1 << 20)  # the backing file is never written
    info = image_info(top)
    assert [b["format"] for b in info["backing_chain"]] == ["qcow2", "raw"]


def test_snapshots_create_apply_delete(img):
    with Qcow2(img) as d:
        d.write(0, b"1" * 200_000)
        d.snapshot_create("one")
        d.write(100_000, b"2" * 200_000)
        d.snapshot_create("two")
        d.write(0, b"3" * 10)
        assert [s.name for s in d.snapshots] == ["one", "two"]
        assert d.check().clean
        d.snapshot_apply("one")
        assert read_all(d)[:300_000] == b"1" * 200_000 + bytes(100_000)
        assert d.check().clean
        d.snapshot_delete("one")
        d.snapshot_apply("2")  # by id
        assert read_all(d)[:300_000] == b"1" * 100_000 + b"2" * 200_000
        d.snapshot_delete("two")
        assert d.snapshots == [] and d.check().clean
        with pytest.raises(Qcow2Error, match="no snapshot"):
            d.snapshot_apply("one")
        d.snapshot_create("again")
        with pytest.raises(Qcow2Error, match="already exists"):
            d.snapshot_create("again")


def test_read_only_rejects_writes(img):
    with Qcow2(img, read_only=True) as d:
        for call in (lambda: d.write(0, b"x"), lambda: d.write_zeroes(0, 512), lambda: d.discard(0, 512),
                     lambda: d.snapshot_create("s")):
            with pytest.raises(BlockError, match="read-only"):
                call()


def test_out_of_range_requests(img):
    with Qcow2(img) as d:
        with pytest.raises(BlockError, match="outside"):
            d.write(d.size - 1, b"ab")
        with pytest.raises(BlockError, match="outside"):
            d.readinto(d.size, bytearray(1))
        with pytest.raises(BlockError, match="outside"):
            d.write_zeroes(-1, 10)


def test_second_writer_is_locked_out(img):
    with Qcow2(img):
        with pytest.raises(BlockError, match="locked"):
            Qcow2(img)


def test_convert_roundtrip_and_compaction(tmp_path, img):
    data = random.Random(3).randbytes(1 << 20)
    with Qcow2(img) as d:
        d.write(3 << 20, data)
        d.write(0, bytes(1 << 20))  # zeros written as data: convert drops them
    raw = str(tmp_path / "out.raw")
    back = str(tmp_path / "back.qcow2")
    convert(img, raw, "raw")
    res = convert(raw, back, "qcow2")
    assert res["written"] == 1 << 20
    with Qcow2(back, read_only=True) as d:
        got = read_all(d)
        assert d.check().clean
    assert got[3 << 20:4 << 20] == data and got.count(0) == len(got) - len(data) + data.count(0)
    with pytest.raises(VirtkitError, match="same file"):
        convert(back, back)


def test_size_not_multiple_of_cluster(tmp_path):
    path = str(tmp_path / "odd.qcow2")
    Qcow2.create(path, 100_000)
    with Qcow2(path) as d:
        assert d.size == 100_352  # rounded up to 512 like qemu-img
        d.write(d.size - 10, b"z" * 10)
        d.write_zeroes(65536, d.size - 65536)
        assert read_all(d)[-10:] == bytes(10)
        assert d.check().clean


def test_create_rejects_bad_parameters(tmp_path):
    with pytest.raises(Qcow2Error, match="cluster size"):
        Qcow2.create(str(tmp_path / "x.qcow2"), 1 << 20, cluster_size=3000)
    with pytest.raises(Qcow2Error, match="does not exist"):
        Qcow2.create(str(tmp_path / "y.qcow2"), 1 << 20, backing="nope.qcow2")
    with pytest.raises(Qcow2Error, match="size is needed"):
        Qcow2.create(str(tmp_path / "z.qcow2"), -1)
    assert not os.path.exists(tmp_path / "y.qcow2")


def test_create_refuses_to_overwrite_an_open_image(img):
    with Qcow2(img) as d:
        d.write(0, b"keep")
        with pytest.raises(BlockError, match="locked"):
            Qcow2.create(img, 1 << 20)
        buf = bytearray(4)
        d.readinto(0, buf)
        assert buf == b"keep"
