"""``virtkit disk``: create/info/convert/snapshot/check, JSON output, and clear errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import require_tool
from virtkit.cli import main
from virtkit.errors import ConfigError
from virtkit.storage.qcow2 import Qcow2
from virtkit.units import parse_size


def vk(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "virtkit.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("text", "value"), [("512", 512), ("64K", 65536), ("10G", 10 << 30), ("1.5M", 3 << 19),
                                             ("2T", 2 << 40), ("4MiB", 4 << 20), ("8kb", 8192)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "10X", "-5G", "1.3", "1e9", "99999999999P"])
def test_parse_size_rejects(text):
    with pytest.raises(ConfigError):
        parse_size(text)


def test_create_info_snapshot_check(tmp_path, capsys):
    img = str(tmp_path / "a.qcow2")
    assert main(["disk", "create", img, "64M", "--cluster-size", "4K"]) == 0
    capsys.readouterr()
    assert main(["disk", "info", "--json", img]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "qcow2" and info["virtual_size"] == 64 << 20 and info["cluster_size"] == 4096
    with Qcow2(img) as d:
        d.write(0, b"x" * 10000)
    assert main(["disk", "snapshot", "-c", "first", img]) == 0
    assert main(["disk", "snapshot", "-l", "--json", img]) == 0
    snaps = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in snaps] == ["first"]
    assert main(["disk", "check", "--json", img]) == 0
    assert json.loads(capsys.readouterr().out)["corruptions"] == 0
    assert main(["disk", "snapshot", "-a", "first", img]) == 0
    assert main(["disk", "snapshot", "-d", "first", img]) == 0
    assert main(["disk", "info", img]) == 0
    assert "qcow2" in capsys.readouterr().out


def test_create_with_backing_and_info_chain(tmp_path, capsys):
    base = str(tmp_path / "base.raw")
    assert main(["disk", "create", "-f", "raw", base, "1M"]) == 0
    top = str(tmp_path / "top.qcow2")
    assert main(["disk", "create", "-b", "base.raw", top]) == 0
    capsys.readouterr()
    assert main(["disk", "info", "--json", top]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["virtual_size"] == 1 << 20 and info["backing_chain"][0]["format"] == "raw"


def test_convert_both_ways(tmp_path, capsys):
    require_tool("qemu-img")
    raw = tmp_path / "a.raw"
    raw.write_bytes(b"\x01" * 100_000 + bytes((2 << 20) - 100_000))
    q = str(tmp_path / "a.qcow2")
    assert main(["disk", "convert", "--json", str(raw), q]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 2 * 65536  # whole clusters
    back = str(tmp_path / "b.raw")
    assert main(["disk", "convert", "-q", "-O", "raw", q, back]) == 0
    assert open(back, "rb").read() == raw.read_bytes()
    p = subprocess.run(["qemu-img", "compare", str(raw), q], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout


def test_check_exit_codes_on_leaks_and_corruption(tmp_path):
    img = str(tmp_path / "c.qcow2")
    Qcow2.create(img, 1 << 20)
    with Qcow2(img) as d:
        d.write(0, b"x" * 70000)
        rb = int(d.rt[0])
    with open(img, "r+b") as f:  # refcount of unused cluster 10 -> 1: leak; of the header -> 0: corruption
        f.seek(rb + 2 * 10)
        f.write(b"\x00\x01")
    assert vk("disk", "check", img).returncode == 3
    with open(img, "r+b") as f:
        f.seek(rb)
        f.write(b"\x00\x00")
    p = vk("disk", "check", img)
    assert p.returncode == 2 and "ERROR" in p.stdout
    p = vk("disk", "check", "-r", "all", img)
    assert p.returncode == 0, p.stdout
    assert vk("disk", "check", img).returncode == 0


@pytest.mark.parametrize(("args", "message"), [
    (["disk", "create", "{d}/x.qcow2", "12Q"], "bad size '12Q'"),
    (["disk", "create", "{d}/x.qcow2"], "size is needed"),
    (["disk", "create", "-f", "raw", "-b", "y", "{d}/x.raw", "1M"], "cannot have a backing"),
    (["disk", "create", "{d}/x.qcow2", "1M", "--cluster-size", "1000"], "cluster size"),
    (["disk", "create", "-b", "{d}/nope.qcow2", "{d}/x.qcow2"], "does not exist"),
    (["disk", "info", "{d}/missing"], "does not exist"),
    (["disk", "info", "{d}/garbage.qcow2"], "truncated"),
    (["disk", "snapshot", "-l", "{d}/plain.raw"], "not a qcow2 image"),
    (["disk", "snapshot", "-a", "nosuch", "{d}/ok.qcow2"], "no snapshot"),
    (["disk", "convert", "{d}/missing", "{d}/out.qcow2"], "does not exist"),
    (["disk", "convert", "{d}/ok.qcow2", "{d}/ok.qcow2"], "same file"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    (tmp_path / "garbage.qcow2").write_bytes(b"QFI\xfb\x00\x00\x00\x03" + bytes(40))
    (tmp_path / "plain.raw").write_bytes(bytes(4096))
    Qcow2.create(str(tmp_path / "ok.qcow2"), 1 << 20)
    p = vk(*[a.format(d=tmp_path) for a in args])
    assert p.returncode == 1, p.stderr
    assert message in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
