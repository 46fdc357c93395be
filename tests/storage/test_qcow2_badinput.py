"""Malformed qcow2 images: each is refused with a clear VirtkitError and the file is not modified."""

from __future__ import annotations

import hashlib
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtkit.errors import VirtkitError
from virtkit.storage import open_disk
from virtkit.storage.qcow2 import COPIED, Qcow2, Qcow2Error


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def patch(path, offset: int, fmt: str, value) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


@pytest.fixture
def good(tmp_path):
    path = str(tmp_path / "good.qcow2")
    Qcow2.create(path, 4 << 20)
    with Qcow2(path) as d:
        d.write(0, b"data" * 1000)
    return path


def refused(path, match: str, read_only_too: bool = True) -> None:
    before = digest(path)
    modes = (False, True) if read_only_too else (False,)
    for ro in modes:
        with pytest.raises(VirtkitError, match=match) as exc:
            Qcow2(path, read_only=ro)
        assert "\n" not in str(exc.value)
    assert digest(path) == before


# (offset, struct format, value, expected message)
HEADER_CASES = [
    (0, ">4s", b"QFI\x00", "bad magic"),
    (4, ">I", 1, "version 1 is not supported"),
    (4, ">I", 2, "version 2 is not supported"),
    (4, ">I", 4, "unsupported qcow2 version 4"),
    (20, ">I", 8, "cluster_bits 8 out of range"),
    (20, ">I", 22, "cluster_bits 22 out of range"),
    (32, ">I", 1, "encrypted"),
    (36, ">I", 0, "L1 table has 0 entries"),
    (36, ">I", 1 << 30, "too large"),
    (40, ">Q", 3 * 65536 + 512, "L1 table offset .* not cluster aligned"),
    (40, ">Q", 1 << 40, "L1 table .* outside the file"),
    (48, ">Q", 65536 + 8, "refcount table offset .* not cluster aligned"),
    (48, ">Q", 1 << 40, "refcount table .* outside the file"),
    (56, ">I", 0, "invalid refcount table size"),
    (60, ">I", 1, "snapshot table offset"),
    (72, ">Q", 1 << 10, "unsupported incompatible feature.*bit 10"),
    (72, ">Q", 1 << 4, "unsupported incompatible feature.*extended L2"),
    (72, ">Q", 1 << 2, "unsupported incompatible feature.*external data file"),
    (96, ">I", 7, "refcount_order 7 out of range"),
    (100, ">I", 100, "invalid header_length"),
    (100, ">I", 1 << 20, "invalid header_length"),
]


@pytest.mark.parametrize(("offset", "fmt", "value", "message"), HEADER_CASES,
                         ids=[c[3].split(" ")[0] + f"@{c[0]}" for c in HEADER_CASES])
def test_bad_header_fields_are_refused(good, offset, fmt, value, message):
    patch(good, offset, fmt, value)
    refused(good, message)


def test_truncated_header(tmp_path, good):
    head = open(good, "rb").read(60)
    short = tmp_path / "short.qcow2"
    short.write_bytes(head)
    refused(str(short), "truncated")
    tiny = tmp_path / "tiny.qcow2"
    tiny.write_bytes(b"QFI")
    with pytest.raises(VirtkitError):  # three bytes are not even the magic: probed as raw, not qcow2
        Qcow2(str(tiny))


def test_corrupt_bit_allows_read_only(good):
    patch(good, 72, ">Q", 1 << 1)
    refused(good, "marked corrupt", read_only_too=False)
    with Qcow2(good, read_only=True) as d:
        buf = bytearray(4000)
        d.readinto(0, buf)
        assert buf == b"data" * 1000


def l1_entry_offset(path) -> int:
    with open(path, "rb") as f:
        f.seek(40)
        return struct.unpack(">Q", f.read(8))[0]


@pytest.mark.parametrize(("entry", "message"), [
    ((1 << 40) | COPIED, "L2 table at .* outside the file"),
    ((65536 + 512) | COPIED, "L2 table offset .* not cluster aligned"),
    ((1 << 60) | 65536, "reserved bits"),
])
def test_bad_l1_entries_fail_reads_cleanly(good, entry, message):
    patch(good, l1_entry_offset(good), ">Q", entry)
    before = digest(good)
    with Qcow2(good, read_only=True) as d:
        with pytest.raises(Qcow2Error, match=message):
            d.readinto(0, bytearray(512))
    assert digest(good) == before


def test_bad_l2_entry_fails_reads_cleanly(good):
    with open(good, "rb") as f:
        f.seek(l1_entry_offset(good))
        l2 = struct.unpack(">Q", f.read(8))[0] & 0x00FFFFFFFFFFFE00
    patch(good, l2, ">Q", (1 << 40) | 0x100 | COPIED)  # reserved bits 1-8 set
    before = digest(good)
    with Qcow2(good, read_only=True) as d, pytest.raises(Qcow2Error, match="reserved bits"):
        d.readinto(0, bytearray(512))
    assert digest(good) == before


def test_backing_file_loops_are_detected(tmp_path):
    a, b = str(tmp_path / "a.qcow2"), str(tmp_path / "b.qcow2")
    Qcow2.create(a, 1 << 20)
    Qcow2.create(b, 1 << 20, backing="a.qcow2")
    # point a at b: a -> b -> a
    with open(a, "r+b") as f:
        name = b"b.qcow2"
        f.seek(112 + 8 + 8 * 48 + 8)  # after our extensions: a free spot in the header cluster
        pos = f.tell()
        f.write(name)
        f.seek(8)
        f.write(struct.pack(">QI", pos, len(name)))
    before = digest(a), digest(b)
    for path in (a, b):
        with pytest.raises(VirtkitError, match="backing file loop"):
            open_disk(path)
    assert (digest(a), digest(b)) == before
    with pytest.raises(VirtkitError, match="backing file loop"):
        Qcow2.create(a, 1 << 20, backing="a.qcow2")


def test_missing_backing_file(tmp_path):
    base = str(tmp_path / "base.qcow2")
    top = str(tmp_path / "top.qcow2")
    Qcow2.create(base, 1 << 20)
    Qcow2.create(top, -1, backing="base.qcow2")
    os.unlink(base)
    refused(top, "backing file .* does not exist")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, 111), data=st.binary(min_size=1, max_size=16))
def test_fuzzed_headers_never_crash_or_modify(tmp_path_factory, offset, data):
    path = str(tmp_path_factory.mktemp("fz") / "f.qcow2")
    Qcow2.create(path, 4 << 20)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    before = digest(path)
    try:
        d = Qcow2(path, read_only=True)
    except VirtkitError as err:
        assert str(err) and "\n" not in str(err)
    else:
        try:
            buf = bytearray(min(d.size, 1 << 20))
            d.readinto(0, buf)
            d.check()
        except VirtkitError:
            pass
        finally:
            d.close()
    assert digest(path) == before


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, 4 * 65536 - 8), value=st.integers(0, 2**64 - 1))
def test_fuzzed_metadata_tables_give_clear_errors(tmp_path_factory, offset, value):
    """Random 8-byte words anywhere in the metadata clusters: reads and checks fail cleanly or work."""
    path = str(tmp_path_factory.mktemp("fm") / "m.qcow2")
    Qcow2.create(path, 4 << 20)
    with Qcow2(path) as d:
        d.write(0, b"x" * 200_000)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(">Q", value))
    try:
        with Qcow2(path, read_only=True) as d:
            d.readinto(0, bytearray(d.size if d.size <= 8 << 20 else 1 << 20))
            d.check()
    except VirtkitError as err:
        assert "\n" not in str(err)
