"""Persistent dirty bitmaps in qcow2 (the bitmaps extension): what virtkit writes, QEMU's tools list,
check and export (``qemu-nbd -B`` + ``nbdinfo --map``); what QEMU's tools write, virtkit reads; a writer
that dies leaves its bitmaps marked inconsistent; malformed directories are refused with a clear error."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import require_tool, virtkit
from virtkit.storage import bitmap as bm
from virtkit.storage.qcow2 import Qcow2, Qcow2Error

MiB = 1 << 20


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=False)


def qemu_bitmaps(path: str) -> list[dict]:
    p = run("qemu-img", "info", "-U", "--output=json", path)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["format-specific"]["data"].get("bitmaps", [])


def qemu_check_clean(path: str) -> None:
    p = run("qemu-img", "check", "--output=json", path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout).get("leaks", 0) == 0


def nbd_dirty_map(path: str, name: str, tmp_path) -> list[tuple[int, int]]:
    """QEMU's own reading of a bitmap: ``qemu-nbd -B NAME`` exporting it, ``nbdinfo --map`` listing it."""
    require_tool("qemu-nbd", "nbdinfo")
    sock = str(tmp_path / f"{name}.sock")
    srv = subprocess.Popen(["qemu-nbd", "-r", "-f", "qcow2", "-B", name, "-k", sock, path],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        p = run("nbdinfo", "--json", f"--map=qemu:dirty-bitmap:{name}", f"nbd+unix:///?socket={sock}")
        assert p.returncode == 0, p.stderr
    finally:
        srv.kill()
        srv.wait()
    return [(e["offset"], e["length"]) for e in json.loads(p.stdout) if e["type"] & 1]


@pytest.fixture(autouse=True)
def _tools():
    require_tool("qemu-img", "qemu-io")


def test_virtkit_bitmap_is_listed_checked_and_exported_by_qemu(tmp_path):
    path = str(tmp_path / "a.qcow2")
    Qcow2.create(path, 64 * MiB)
    with Qcow2(path) as q:
        q.bitmap_add("daily")
        q.bitmap_add("coarse", granularity=MiB)
        q.write(0, b"x" * 4096)
        q.write(5 * MiB + 1000, b"y" * 100_000)  # straddles two 64K chunks
        q.write_zeroes(20 * MiB, 64 << 10)
        q.discard(33 * MiB, 128 << 10)
    assert [(b["name"], b["granularity"], b["flags"]) for b in qemu_bitmaps(path)] == [
        ("daily", 65536, ["auto"]), ("coarse", MiB, ["auto"])]
    qemu_check_clean(path)
    want = [(0, 65536), (5 * MiB, 131072), (20 * MiB, 65536), (33 * MiB, 131072)]
    assert nbd_dirty_map(path, "daily", tmp_path) == want
    assert nbd_dirty_map(path, "coarse", tmp_path) == [(0, MiB), (5 * MiB, MiB), (20 * MiB, MiB), (33 * MiB, MiB)]
    with Qcow2(path, read_only=True) as q:
        assert q.bitmap("daily").runs() == want


def test_qemu_bitmap_is_read_and_kept_up_by_virtkit(tmp_path):
    path = str(tmp_path / "q.qcow2")
    assert run("qemu-img", "create", "-f", "qcow2", path, "64M").returncode == 0
    assert run("qemu-img", "bitmap", "--add", path, "qb").returncode == 0
    assert run("qemu-img", "bitmap", "--add", "-g", "512", "--disable", path, "fine").returncode == 0
    assert run("qemu-io", "-c", "write 196608 4096", "-c", "write 10M 1M", path).returncode == 0
    with Qcow2(path) as q:
        assert q.bitmap("qb").runs() == [(196608, 65536), (10 * MiB, MiB)]
        assert q.bitmap("fine").count() == 0 and not q.bitmap("fine").enabled
        q.write(30 * MiB, b"z" * 70000)  # marks qb only: fine is disabled
    qemu_check_clean(path)
    assert nbd_dirty_map(path, "qb", tmp_path) == [(196608, 65536), (10 * MiB, MiB), (30 * MiB, 131072)]
    assert nbd_dirty_map(path, "fine", tmp_path) == []


def test_a_writer_that_dies_leaves_its_bitmaps_inconsistent(tmp_path):
    path = str(tmp_path / "c.qcow2")
    Qcow2.create(path, 16 * MiB)
    with Qcow2(path) as q:
        q.bitmap_add("b")
    code = f"import os\nfrom virtkit.storage.qcow2 import Qcow2\nq = Qcow2({path!r})\nq.write(0, b'1')\nos._exit(0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    assert qemu_bitmaps(path)[0]["flags"] == ["in-use", "auto"]  # what QEMU says of it too
    with Qcow2(path) as q:
        (info,) = q.bitmap_list()
        assert info["consistent"] is False
        with pytest.raises(bm.BitmapError, match="inconsistent"):
            q.bitmap("b")
        q.bitmap_add("fresh")  # the inconsistent one is kept as it is beside a new one
    assert [b["name"] for b in qemu_bitmaps(path)] == ["b", "fresh"]
    qemu_check_clean(path)
    with Qcow2(path) as q:
        q.bitmap_remove("b")
    assert [b["name"] for b in qemu_bitmaps(path)] == ["fresh"]
    qemu_check_clean(path)


def test_resize_and_internal_snapshot_keep_bitmaps(tmp_path):
    path = str(tmp_path / "r.qcow2")
    Qcow2.create(path, 16 * MiB)
    with Qcow2(path) as q:
        q.bitmap_add("b")
        q.write(MiB, b"a")
        q.resize(48 * MiB)
        q.write(40 * MiB, b"b")
        q.snapshot_create("s1")
    qemu_check_clean(path)
    assert nbd_dirty_map(path, "b", tmp_path) == [(MiB, 65536), (40 * MiB, 65536)]
    with Qcow2(path) as q:
        q.bitmap_remove("b")
    qemu_check_clean(path)
    assert qemu_bitmaps(path) == []


def test_cli_bitmap_verbs_match_qemu_img(tmp_path):
    path = str(tmp_path / "v.qcow2")
    assert virtkit("disk", "create", "-f", "qcow2", path, "16M").returncode == 0
    assert virtkit("disk", "bitmap", "--add", path, "b1").returncode == 0
    assert virtkit("disk", "bitmap", "--add", "-g", "1M", "--disable", path, "b2").returncode == 0
    assert run("qemu-io", "-c", "write 1M 64k", path).returncode == 0
    p = virtkit("disk", "bitmap", "--merge", "b1", "--json", path, "b2")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["bitmaps"][0]["dirty_bytes"] == MiB
    p = virtkit("disk", "show", path)
    assert "b1: granularity 65536, auto, 64K dirty" in p.stdout and "b2: granularity 1048576, disabled" in p.stdout
    assert virtkit("disk", "bitmap", "--clear", "--enable", path, "b2").returncode == 0
    assert [(b["name"], b["flags"]) for b in qemu_bitmaps(path)] == [("b1", ["auto"]), ("b2", ["auto"])]
    assert nbd_dirty_map(path, "b2", tmp_path) == []
    qemu_check_clean(path)
    for args, msg in ((["--remove", path, "nope"], "no bitmap 'nope'"), ([path, "b1"], "say what to do"),
                      (["--add", "-g", "1000", path, "b3"], "power of two"), (["--add", path, "b1"], "exists already"),
                      (["--merge", "nope", path, "b1"], "no bitmap 'nope'")):
        p = virtkit("disk", "bitmap", *args)
        assert p.returncode == 1 and msg in p.stderr, (args, p.stderr)
    raw = tmp_path / "x.raw"
    raw.write_bytes(bytes(MiB))
    p = virtkit("disk", "bitmap", "--add", str(raw), "b")
    assert p.returncode == 1 and "not a qcow2 image" in p.stderr


def _directory(path: str) -> tuple[int, int]:
    with Qcow2(path, read_only=True) as q:
        return q._bitmap_dir


@pytest.mark.parametrize("damage, msg", [
    (lambda d: d[:8] + struct.pack(">I", 7) + d[12:], "table of 7 entries"),  # wrong table size
    (lambda d: struct.pack(">Q", 4097) + d[8:], "not cluster aligned"),
    (lambda d: d[:12] + struct.pack(">I", 1 << 9) + d[16:], "unknown flags"),
    (lambda d: d[:16] + b"\x02" + d[17:], "unknown type"),
    (lambda d: d[:17] + b"\x40" + d[18:], "granularity bits 64"),
    (lambda d: d[:18] + struct.pack(">H", 0) + d[20:], "name length 0"),
    (lambda d: d[:18] + struct.pack(">H", 900) + d[20:], "overruns the directory"),
    (lambda d: d[:20] + struct.pack(">I", 4) + d[24:], "extra data"),
])
def test_corrupt_bitmap_directory_is_refused(tmp_path, damage, msg):
    path = str(tmp_path / "bad.qcow2")
    Qcow2.create(path, 16 * MiB)
    with Qcow2(path) as q:
        q.bitmap_add("b")
    off, size = _directory(path)
    with open(path, "r+b") as f:
        f.seek(off)
        d = f.read(size)
        f.seek(off)
        f.write(damage(d))
    with pytest.raises(Qcow2Error, match=msg):
        Qcow2(path, read_only=True)
    p = virtkit("disk", "show", path)
    assert p.returncode == 1 and "bitmap directory is corrupt" in p.stderr


def test_bitmaps_extension_outside_the_file_is_refused(tmp_path):
    path = str(tmp_path / "bad.qcow2")
    Qcow2.create(path, 16 * MiB)
    with Qcow2(path) as q:
        q.bitmap_add("b")
    with open(path, "r+b") as f:
        hc = bytearray(f.read(65536))
    pos = hc.find(struct.pack(">II", bm.EXT_BITMAPS, 24))
    struct.pack_into(">Q", hc, pos + 8 + 16, 1 << 40)
    with open(path, "r+b") as f:
        f.write(hc)
    with pytest.raises(Qcow2Error, match="bitmaps extension is corrupt"):
        Qcow2(path, read_only=True)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 5 * MiB), gbits=st.integers(9, 20),
       writes=st.lists(st.tuples(st.integers(0, 5 * MiB), st.integers(1, 300_000)), max_size=12))
def test_bitmap_runs_extents_and_encoding_agree(size, gbits, writes):
    b = bm.DirtyBitmap("h", size, 1 << gbits)
    ref = np.zeros(b.chunks_for(size), dtype=bool)
    for off, n in writes:
        off = off % size
        n = min(n, size - off)
        b.mark(off, n)
        ref[off >> gbits:((off + n - 1) >> gbits) + 1] = True
    assert np.array_equal(b.bits != 0, ref)
    covered = np.zeros(size, dtype=bool)
    for off, n in b.runs():
        covered[off:off + n] = True
    want = np.repeat(ref, 1 << gbits)[:size]
    assert np.array_equal(covered, want)
    pos = 0
    for n, dirty in b.extents(0, size):
        assert n > 0 and bool(want[pos]) == dirty and want[pos:pos + n].all() == dirty
        pos += n
    assert pos == size
    again = bm.DirtyBitmap.from_bytes("h", size, 1 << gbits, b.to_bytes())
    assert np.array_equal(again.bits, b.bits)
    coarse = bm.DirtyBitmap("c", size, 1 << min(gbits + 3, 31))
    coarse.merge(b)
    for off, n in b.runs():
        assert coarse.bits[off >> coarse.gbits] and coarse.bits[(off + n - 1) >> coarse.gbits]


def test_convert_with_bitmaps_copies_them_like_qemu_img(tmp_path):
    src, dst, qdst = (str(tmp_path / n) for n in ("s.qcow2", "d.qcow2", "q.qcow2"))
    Qcow2.create(src, 16 * MiB)
    with Qcow2(src) as q:
        q.bitmap_add("on")
        q.bitmap_add("off", granularity=MiB, enabled=False)
        q.write(3 * MiB, b"x" * 5000)
        q.bitmap_merge(q.bitmap("on").copy(), "off")
    p = virtkit("disk", "convert", "-q", "--bitmaps", src, dst)
    assert p.returncode == 0, p.stderr
    assert run("qemu-img", "convert", "--bitmaps", "-O", "qcow2", src, qdst).returncode == 0
    assert [(b["name"], b["flags"], b["granularity"]) for b in qemu_bitmaps(dst)] == \
        [(b["name"], b["flags"], b["granularity"]) for b in qemu_bitmaps(qdst)]
    with Qcow2(dst, read_only=True) as a, Qcow2(qdst, read_only=True) as b:
        for name in ("on", "off"):
            assert a.bitmap(name).runs() == b.bitmap(name).runs() == [(3 * MiB, 65536 if name == "on" else MiB)]
    qemu_check_clean(dst)
    p = virtkit("disk", "convert", "-q", "--bitmaps", "-O", "raw", src, str(tmp_path / "r.raw"))
    assert p.returncode == 1 and "qcow2 image to a qcow2 image" in p.stderr


def test_a_bitmap_removed_and_added_again_in_one_session_is_the_new_one(tmp_path):
    path = str(tmp_path / "again.qcow2")
    Qcow2.create(path, 16 * MiB)
    with Qcow2(path) as q:
        q.bitmap_add("b")
        q.write(0, b"1")
    with Qcow2(path) as q:
        q.bitmap_remove("b")
        assert not q.has_bitmap("b") and q.bitmap_list() == []
        q.bitmap_add("b", granularity=MiB)
        q.write(5 * MiB, b"2")
        assert q.bitmap_names() == ["b"]
    assert [(b["name"], b["granularity"]) for b in qemu_bitmaps(path)] == [("b", MiB)]
    qemu_check_clean(path)
    with Qcow2(path, read_only=True) as q:
        assert q.bitmap("b").runs() == [(5 * MiB, MiB)]
