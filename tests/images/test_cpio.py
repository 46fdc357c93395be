"""The newc cpio writer: GNU cpio lists and extracts what we write; bad members are clear errors."""

from __future__ import annotations

import io
import os
import stat
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import require_root, require_tool
from virtkit.errors import ImageError
from virtkit.images.cpio import CpioError, CpioWriter, gzip_bytes, read_cpio


def sample() -> bytes:
    buf = io.BytesIO()
    with CpioWriter(buf) as w:
        w.add_dir("bin")
        w.add_dir("dev")
        w.add_dir("tmp", 0o1777)
        w.add_file("bin/busybox", b"\x7fELF" + bytes(range(256)) * 3, 0o755)
        w.add_symlink("bin/sh", "/bin/busybox")
        w.add_device("dev/console", "c", 5, 1, 0o600)
        w.add_device("dev/vda", "b", 254, 0, 0o660)
        w.add_file("init", b"#!/bin/sh\necho hi\n", 0o755)
        w.add_file("empty", b"")
    return buf.getvalue()


def test_gnu_cpio_lists_members(tmp_path):
    require_tool("cpio")
    out = subprocess.run(["cpio", "-t", "-v"], input=sample(), capture_output=True, check=True).stdout.decode()
    lines = out.splitlines()
    names = [line.split()[-1] if "->" not in line else line.split()[-3] for line in lines]
    assert names == ["bin", "dev", "tmp", "bin/busybox", "bin/sh", "dev/console", "dev/vda", "init", "empty"]
    by_name = dict(zip(names, lines, strict=True))
    assert by_name["bin/busybox"].startswith("-rwxr-xr-x")
    assert by_name["tmp"].startswith("drwxrwxrwt")
    assert by_name["bin/sh"].startswith("lrwxrwxrwx") and by_name["bin/sh"].endswith("-> /bin/busybox")
    assert by_name["dev/console"].startswith("crw-------") and "5,   1" in by_name["dev/console"]
    assert by_name["dev/vda"].startswith("brw-rw----")


def test_gnu_cpio_extracts_contents(tmp_path):
    require_tool("cpio")
    subprocess.run(["cpio", "-i", "-d", "--no-absolute-filenames", "--quiet"], input=sample(), cwd=tmp_path,
                   check=True, capture_output=True)
    assert (tmp_path / "bin/busybox").read_bytes() == b"\x7fELF" + bytes(range(256)) * 3
    assert (tmp_path / "bin/busybox").stat().st_mode & 0o777 == 0o755
    assert os.readlink(tmp_path / "bin/sh") == "/bin/busybox"
    assert (tmp_path / "init").read_text() == "#!/bin/sh\necho hi\n"
    assert (tmp_path / "empty").read_bytes() == b""


def test_gnu_cpio_creates_device_nodes_as_root(tmp_path):
    require_tool("cpio")
    require_root()
    subprocess.run(["cpio", "-i", "-d", "--quiet"], input=sample(), cwd=tmp_path, check=True, capture_output=True)
    st_ = (tmp_path / "dev/console").stat()
    assert stat.S_ISCHR(st_.st_mode) and os.major(st_.st_rdev) == 5 and os.minor(st_.st_rdev) == 1


def test_our_reader_agrees_with_gnu_cpio_writer(tmp_path):
    """Archives GNU cpio writes (-H newc) parse with read_cpio, so the reader is checked independently."""
    require_tool("cpio")
    (tmp_path / "d").mkdir()
    (tmp_path / "d/f").write_bytes(b"abc" * 100)
    os.symlink("f", tmp_path / "d/l")
    data = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input=b"d\nd/f\nd/l\n", cwd=tmp_path,
                          capture_output=True, check=True).stdout
    members = {m.name: m for m in read_cpio(data)}
    assert members["d/f"].data == b"abc" * 100 and members["d/f"].kind == "file"
    assert members["d/l"].kind == "symlink" and members["d/l"].data == b"f"
    assert members["d"].kind == "dir"


def test_reproducible_and_gzip_roundtrip():
    assert sample() == sample()
    assert gzip_bytes(sample()) == gzip_bytes(sample())
    members = read_cpio(gzip_bytes(sample()))
    assert [m.name for m in members][:3] == ["bin", "dev", "tmp"]
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == 0 for m in members)
    assert len(sample()) % 512 == 0


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.text(st.characters(min_codepoint=48, max_codepoint=122, blacklist_characters="/\\"),
                               min_size=1, max_size=30).filter(lambda s: s not in (".", "..")),
                       st.binary(max_size=300), max_size=10))
def test_roundtrip_any_files(files):
    buf = io.BytesIO()
    with CpioWriter(buf) as w:
        w.add_dir("d")
        for name, data in files.items():
            w.add_file(f"d/{name}", data)
    got = {m.name: m.data for m in read_cpio(buf.getvalue()) if m.kind == "file"}
    assert got == {f"d/{k}": v for k, v in files.items()}


@pytest.mark.parametrize(
    "action, message",
    [
        (lambda w: w.add_file("", b"x"), "empty path"),
        (lambda w: w.add_file("/", b"x"), "empty path"),
        (lambda w: w.add_file("a/../b", b"x"), "'..'"),
        (lambda w: w.add_file("a//b", b"x"), "empty"),
        (lambda w: w.add_file("nul\0name", b"x"), "NUL"),
        (lambda w: w.add_file("x" * 5000, b"x"), "longer than"),
        (lambda w: w.add_file("missing/parent", b"x"), "parent directory"),
        (lambda w: w.add_file("f", "text not bytes"), "must be bytes"),
        (lambda w: w.add_file("f", b"x", mode=0o10000), "out of range"),
        (lambda w: w.add_file("f", b"x", mode=-1), "out of range"),
        (lambda w: w.add_file("f", b"x", uid=-5), "uid"),
        (lambda w: w.add_file("f", b"x", gid=1 << 33), "gid"),
        (lambda w: w.add_symlink("l", ""), "symlink target"),
        (lambda w: w.add_symlink("l", "a\0b"), "symlink target"),
        (lambda w: w.add_device("dev0", "x", 1, 1), "'c' or 'b'"),
        (lambda w: w.add_device("dev0", "c", 4096, 1), "major"),
        (lambda w: w.add_device("dev0", "c", 1, -1), "minor"),
        (lambda w: w.add_dir(123), "must be a string"),
    ],
)
def test_bad_members_are_clear_errors(action, message):
    buf = io.BytesIO()
    w = CpioWriter(buf)
    with pytest.raises(CpioError, match=message):
        action(w)
    assert isinstance(CpioError("x"), ImageError)
    # nothing half-written: the writer still works and the archive stays valid
    w.add_file("ok", b"fine")
    w.close()
    assert [m.name for m in read_cpio(buf.getvalue())] == ["ok"]


def test_duplicates_and_closed_archive():
    buf = io.BytesIO()
    w = CpioWriter(buf)
    w.add_file("a", b"1")
    with pytest.raises(CpioError, match="duplicate"):
        w.add_file("/a", b"2")
    w.close()
    with pytest.raises(CpioError, match="closed"):
        w.add_file("b", b"")


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "truncated header"),
        (b"070707" + b"0" * 200, "bad magic"),
        (b"070701" + b"Z" * 104, "non-hex"),
        (b"070701" + b"00000000" * 11 + b"00000000" + b"00000000", "zero name size"),
        (b"070701" + b"00000000" * 6 + b"000000FF" + b"00000000" * 4 + b"00000002" + b"00000000" + b"a\0",
         "past end"),
        (b"\x1f\x8b\x08\x00garbage", "gzip"),
    ],
)
def test_reader_rejects_malformed_archives(data, message):
    with pytest.raises(CpioError, match=message):
        read_cpio(data)


def test_reader_rejects_truncated_sample():
    data = sample()
    for cut in (50, 200, 400):
        with pytest.raises(CpioError):
            read_cpio(data[:cut])
