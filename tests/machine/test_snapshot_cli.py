"""`virtkit snapshot | clone | template` on a small bare-metal guest (a counter, no Linux): the commands, their
JSON, and every bad input as a clear error that leaves the VM running and every file as it was."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.vmcli import counting_env, running, start, vk


@pytest.fixture
def env(tmp_path):
    yield from counting_env(tmp_path)


@pytest.fixture(scope="module")
def one_vm(tmp_path_factory):
    """VM c1 and its snapshot s1, shared by the bad-input cases (each checks it changed nothing)."""
    tmp_path = tmp_path_factory.mktemp("snapcli")
    for e in counting_env(tmp_path):
        start(e, tmp_path, "c1")
        vk(e, "snapshot", "create", "c1", "s1")
        yield e, tmp_path


def test_create_list_info_restore_clone_template_delete(env, tmp_path):
    start(env, tmp_path, "c1")
    made = json.loads(vk(env, "snapshot", "create", "c1", "s1", "--json").stdout)
    assert made["name"] == "s1" and made["memory"]["encoding"] == "sparse" and running(env, "c1")
    listed = json.loads(vk(env, "snapshot", "list", "--json").stdout)
    assert [s["name"] for s in listed] == ["s1"] and listed[0]["vm"] == "c1"
    info = json.loads(vk(env, "snapshot", "info", "s1", "--verify", "--json").stdout)
    assert info["verified"] and info["machine"]["memory"] == "32M"
    vk(env, "snapshot", "create", "c1", "s2", "--diff-from", "s1")
    z = json.loads(vk(env, "snapshot", "create", "c1", str(tmp_path / "elsewhere" / "sz"), "--compress",
                       "--json").stdout)
    assert z["memory"]["encoding"] == "zstd" and (tmp_path / "elsewhere" / "sz" / "memory.zst").exists()
    assert vk(env, "snapshot", "restore", "s1", "-d", "--name", "r1").stdout.strip() == "r1"
    clones = json.loads(vk(env, "clone", "s1", "--count", "2", "--json").stdout)
    assert [c["name"] for c in clones] == ["c1-1", "c1-2"]
    vk(env, "template", "create", "c1", "tpl")
    assert vk(env, "run", "--template", "tpl", "-d", "--name", "t1").stdout.strip() == "t1"
    assert all(running(env, n) for n in ("c1", "r1", "c1-1", "c1-2", "t1"))
    assert "tpl" in vk(env, "template", "list").stdout
    p = vk(env, "snapshot", "delete", "s1", check=False)
    assert p.returncode == 1 and "snapshot s2 is a diff on top of s1: delete it first" in p.stderr
    vk(env, "snapshot", "delete", "s2")
    vk(env, "snapshot", "delete", "s1")
    assert json.loads(vk(env, "snapshot", "list", "--json").stdout) == []


@pytest.mark.parametrize("args,msg", [
    (["snapshot", "create", "nosuchvm", "x"], "no running VM named 'nosuchvm' (running: c1)"),
    (["snapshot", "restore", "nosuch"], "no snapshot at"),
    (["snapshot", "info", "bad name!"], "bad snapshot name"),
    (["clone", "nosuch", "--count", "2"], "no snapshot at"),
    (["clone", "s1", "--count", "0"], "--count must be 1..64"),
    (["run", "--template", "nosuch"], "no template 'nosuch'"),
    (["run", "--restore", "s1", "--mem", "64"], "--mem: the machine comes from the snapshot"),
    (["run", "--clone"], "--clone, --disk-dir and --no-verify go with --restore or --template"),
    (["snapshot", "create", "c1", "s1"], "snapshot"),  # exists already
])
def test_bad_input_is_a_clear_error_and_changes_nothing(one_vm, args, msg):
    env, tmp_path = one_vm
    before = sorted(p.name for p in (tmp_path / "snaps").iterdir())
    p = vk(env, *args, check=False)
    assert p.returncode != 0 and msg in p.stderr, p.stderr
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == before
    assert running(env, "c1")


def test_a_raw_disk_is_refused_and_left_alone(env, tmp_path):
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\x5a" * (1 << 20))
    start(env, tmp_path, "c1", "--disk", f"{raw},format=raw")
    p = vk(env, "snapshot", "create", "c1", "s1", check=False)
    assert p.returncode == 1 and "is a raw file" in p.stderr and "virtkit disk convert -O qcow2" in p.stderr
    assert raw.read_bytes() == b"\x5a" * (1 << 20)
    assert not (tmp_path / "snaps" / "s1").exists() and not list((tmp_path / "snaps").glob(".*"))
    assert running(env, "c1")


def test_qcow2_disk_snapshot_and_rollback(env, tmp_path):
    img = tmp_path / "d.qcow2"
    vk(env, "disk", "create", str(img), "4M")
    start(env, tmp_path, "c1", "--disk", str(img))
    vk(env, "snapshot", "create", "c1", "s1")
    base = tmp_path / "snaps" / "s1" / "disk0.qcow2"
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(img)], capture_output=True,
                                     text=True, check=True).stdout) if _have("qemu-img") else None
    if info is not None:
        assert Path(img.parent, info["backing-filename"]).resolve() == base.resolve()
    assert not os.access(base, os.W_OK) or os.geteuid() == 0  # frozen (mode 0444)
    assert oct(base.stat().st_mode & 0o777) == "0o444"
    p = vk(env, "snapshot", "restore", "s1", "-d", check=False)
    assert p.returncode != 0 and "a VM named 'c1' is already running" in p.stderr
    p = vk(env, "snapshot", "restore", "s1", "-d", "--name", "c9", check=False)  # c1 still holds the disk
    assert p.returncode != 0 and "is in use by another VM or process" in p.stderr + p.stdout
    assert running(env, "c1")
    vk(env, "kill", "c1")
    vk(env, "snapshot", "restore", "s1", "-d")
    assert running(env, "c1")


def _have(tool: str) -> bool:
    import shutil

    return shutil.which(tool) is not None
