"""ext4 images via mke2fs -d: files land where asked (read back with debugfs); bad input is a clear error."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers import require_tool
from virtkit.errors import ImageError
from virtkit.images.ext4 import make_ext4, parse_size, read_ext4_file


def test_make_ext4_files_readable_with_debugfs(tmp_path):
    require_tool("mke2fs", "debugfs", "e2fsck")
    img = make_ext4(tmp_path / "disk.img", "8M", {"hello.txt": "hello\n", "sub/dir/data.bin": bytes(range(256))})
    assert img.stat().st_size == 8 << 20
    assert read_ext4_file(img, "hello.txt") == b"hello\n"
    assert read_ext4_file(img, "/sub/dir/data.bin") == bytes(range(256))
    fsck = subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    blkid = subprocess.run(["dumpe2fs", "-h", str(img)], capture_output=True, text=True).stdout
    assert "virtkit" in blkid and "extent" in blkid  # label and an ext4 feature


def test_make_ext4_empty(tmp_path):
    require_tool("mke2fs", "debugfs")
    img = make_ext4(tmp_path / "e.img", 4 << 20)
    with pytest.raises(ImageError, match="cannot read"):
        read_ext4_file(img, "nothing")


@pytest.mark.parametrize("size", ["", "12X", "-5M", "1.5G", "512K", 100, True, None, "M"])
def test_bad_sizes(size, tmp_path):
    with pytest.raises(ImageError, match="size"):
        parse_size(size)


def test_sizes():
    assert parse_size("64M") == 64 << 20
    assert parse_size("1g") == 1 << 30
    assert parse_size("2MiB") == 2 << 20
    assert parse_size(1 << 20) == 1 << 20


@pytest.mark.parametrize(
    "files, message",
    [
        ({"../escape": "x"}, "'..'"),
        ({"": "x"}, "bad file name"),
        ({"a//b": "x"}, "empty"),
        ({"a": 5}, "bytes or str"),
        ({"a": "x", "a/b": "y"}, "parent"),
        ({"a/b": "x", "a": "y"}, "both a file and a directory"),
    ],
)
def test_bad_files_leave_nothing_behind(files, message, tmp_path):
    require_tool("mke2fs")
    with pytest.raises(ImageError, match=message):
        make_ext4(tmp_path / "bad.img", "4M", files)
    assert list(tmp_path.iterdir()) == []


def test_missing_directory(tmp_path):
    require_tool("mke2fs")
    with pytest.raises(ImageError, match="does not exist"):
        make_ext4(tmp_path / "no/such/dir/x.img", "4M", {})


def test_too_small_for_contents_is_clear(tmp_path):
    require_tool("mke2fs")
    with pytest.raises(ImageError, match="mke2fs failed"):
        make_ext4(tmp_path / "small.img", "1M", {"big": b"\1" * (3 << 20)})
    assert not (tmp_path / "small.img").exists()
