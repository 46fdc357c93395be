"""`virtkit backup` and `virtkit nbd serve --vm` on a small bare-metal guest (a counter, no Linux) with a qcow2
disk: the commands and their JSON, every bad request as a clear error that leaves the VM running and no
file behind, snapshots carrying the disk's dirty bitmaps on, and the VM's other operations waiting while
a point-in-time export is open."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from tests.helpers import require_tool
from tests.helpers.vmcli import counting_env, running, start, vk
from virtkit.machine.control import request

MiB = 1 << 20


@pytest.fixture(scope="module")
def vm(tmp_path_factory):
    """VM b1 (the counter) with a 16 MiB qcow2 disk holding 4 MiB of data."""
    require_tool("qemu-img", "qemu-io")
    tmp = tmp_path_factory.mktemp("backupcli")
    for env in counting_env(tmp):
        img = tmp / "d.qcow2"
        vk(env, "disk", "create", str(img), "16M")
        subprocess.run(["qemu-io", "-c", "write -P 7 0 4M", str(img)], check=True, capture_output=True)
        start(env, tmp, "b1", "--disk", str(img))
        yield env, tmp, img


def test_backup_of_a_running_vm_and_its_status(vm):
    env, tmp, img = vm
    st = json.loads(vk(env, "backup", "b1", "--to", str(tmp / "f.qcow2"), "--json").stdout)
    assert st["state"] == "completed" and st["kind"] == "full" and st["written"] == 4 * MiB
    assert st["disk"].startswith("disk 0 (") and st["target"] == str(tmp / "f.qcow2")
    assert json.loads(vk(env, "backup", "b1", "--status", "--json").stdout)["state"] == "completed"
    out = vk(env, "backup", "b1", "--status").stdout
    assert "completed" in out and "full" in out
    st = json.loads(vk(env, "backup", "b1", "--to", str(tmp / "i.raw"), "--incremental", "-O", "qcow2",
                       "--json").stdout)
    assert st["state"] == "completed" and st["total"] == 0 and st["format"] == "qcow2"
    p = subprocess.run(["qemu-img", "compare", "-U", str(img), str(tmp / "i.raw")], capture_output=True)
    assert p.returncode == 0
    assert running(env, "b1")


@pytest.mark.parametrize("args, msg", [
    (["--disk", "3"], "no disk 3: the VM has disks 0..0"),
    (["--bitmap", ""], "bitmap name must be"),
    (["-O", "raw", "--incremental"], "use -O qcow2"),
    (["--incremental", "--bitmap", "nope"], "no bitmap 'nope' yet"),
    (["--speed", "0"], "--speed must be positive"),
])
def test_bad_backup_requests_are_clear_errors(vm, args, msg):
    env, tmp, _ = vm
    p = vk(env, "backup", "b1", "--to", str(tmp / "bad.qcow2"), *args, check=False)
    assert p.returncode == 1 and msg in p.stderr, p.stderr
    assert not (tmp / "bad.qcow2").exists() and running(env, "b1")


@pytest.mark.parametrize("args, msg", [
    ({"to": "relative.qcow2"}, "to must be an absolute path"),
    ({"to": "/x.qcow2", "disk": "0"}, "disk must be a disk index"),
    ({"to": "/x.qcow2", "speed": -1}, "speed must be bytes per second"),
    ({"to": "/x.qcow2", "incremental": "yes"}, "incremental must be true or false"),
    ({"to": "/x.qcow2", "base": "rel"}, "base must be an absolute path"),
    ({"to": "/x.qcow2", "bogus": 1}, "bad arguments for 'backup'"),
])
def test_malformed_control_requests_are_refused(vm, args, msg, monkeypatch):
    env, _, _ = vm
    monkeypatch.setenv("VIRTKIT_RUN_DIR", env["VIRTKIT_RUN_DIR"])
    with pytest.raises(Exception, match=msg):
        request("b1", "backup", **args)
    with pytest.raises(Exception, match="no backup is running"):
        request("b1", "backup-cancel")
    with pytest.raises(Exception, match="no NBD export 7"):
        request("b1", "nbd-export-stop", id=7)
    with pytest.raises(Exception, match="invalid port"):
        request("b1", "nbd-export", port=70000)


def test_pull_export_holds_other_operations_and_ends_cleanly(vm):
    env, tmp, img = vm
    require_tool("nbdinfo")
    for args, msg in ((["--vm", "b1", "x.qcow2"], "give no FILE_OR_SPEC"), (["--vm", "b1", "--reset-bitmap"],
                      "--reset-bitmap needs --bitmap"), (["--vm", "b1", "--bitmap", "nope", "-k", str(tmp / "s")],
                      "no bitmap 'nope'"), (["--bitmap", "b", "x.qcow2"], "are for --vm"), ([], "give the disks")):
        p = vk(env, "nbd", "serve", *args, check=False)
        assert p.returncode == 1 and msg in p.stderr, (args, p.stderr)
    sock = tmp / "pull.sock"
    srv = subprocess.Popen([sys.executable, "-m", "virtkit.cli", "nbd", "serve", "--vm", "b1", "--socket",
                            str(sock), "-x", "b1disk", "--json"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(srv.stdout.readline())
        assert info["exports"] == ["b1disk"] and info["contexts"] == ["base:allocation"]
        p = vk(env, "snapshot", "create", "b1", "s-held", check=False)
        assert p.returncode == 1 and "point-in-time NBD export" in p.stderr
        p = vk(env, "backup", "b1", "--to", str(tmp / "held.qcow2"), check=False)
        assert p.returncode == 1 and "export of it is open" in p.stderr
        out = tmp / "pulled.raw"
        subprocess.run(["qemu-img", "convert", "-O", "raw", f"nbd+unix:///b1disk?socket={sock}", str(out)],
                       check=True)
        assert subprocess.run(["qemu-img", "compare", "-U", str(out), str(img)], capture_output=True).returncode == 0
    finally:
        srv.send_signal(signal.SIGTERM)
        assert srv.wait(timeout=30) == 0
    assert not sock.exists()
    vk(env, "snapshot", "create", "b1", "s-after")  # the export is gone: the VM's operations go on


def test_a_snapshot_carries_the_disks_bitmaps_on(tmp_path):
    require_tool("qemu-img", "qemu-io")
    for env in counting_env(tmp_path):
        img = tmp_path / "d.qcow2"
        vk(env, "disk", "create", str(img), "16M")
        vk(env, "disk", "bitmap", "--add", str(img), "daily")
        vk(env, "disk", "bitmap", "--add", "--disable", str(img), "frozen")
        subprocess.run(["qemu-io", "-c", "write -P 1 1M 128k", str(img)], check=True, capture_output=True)
        start(env, tmp_path, "c1", "--disk", str(img))
        vk(env, "snapshot", "create", "c1", "s1")
        vk(env, "kill", "c1")
        show = json.loads(vk(env, "disk", "show", "--json", str(img)).stdout)
        assert show["backing_file"] and [(b["name"], b["enabled"], b["dirty_bytes"]) for b in show["bitmaps"]] == [
            ("daily", True, 128 << 10), ("frozen", False, 0)]
        assert subprocess.run(["qemu-img", "check", str(img)], capture_output=True).returncode == 0


def test_a_vm_on_a_pool_volume_backs_up_into_its_own_pool(tmp_path):
    """The VM's process holds the pool open (its disk is a volume of it); the backup's new volume is created
    through that same open pool, while the guest runs."""
    import os

    for env in counting_env(tmp_path):
        env["VIRTKIT_POOLS_DIR"] = str(tmp_path / "pools")
        devs = []
        for i in range(2):
            d = tmp_path / f"pv{i}.img"
            with open(d, "wb") as f:
                f.truncate(96 * MiB)
            devs.append(str(d))
        vk(env, "pool", "create", "vault", *devs)
        vk(env, "volume", "create", "vault/vm0", "--size", "16M")
        start(env, tmp_path, "p1", "--disk", "vault/vm0")
        st = json.loads(vk(env, "backup", "p1", "--to", "vault/bk0", "--json").stdout)
        assert st["state"] == "completed" and st["target"] == os.path.realpath(tmp_path / "pools" / "vault") + "/bk0"
        p = vk(env, "backup", "p1", "--to", "vault/bk1", "--incremental", check=False)
        assert p.returncode == 1 and "kept in qcow2 images" in p.stderr  # a volume keeps no dirty bitmap
        vols = json.loads(vk(env, "volume", "list", "vault", "--json").stdout)
        assert {v["name"] for v in vols} >= {"vm0", "bk0"} and "bk1" not in {v["name"] for v in vols}
        assert running(env, "p1")


def test_every_disk_of_a_vm_into_a_directory_at_one_instant(tmp_path):
    """``--to DIR/``: both disks of a VM, one pause for both, the VM's config beside them; an incremental
    into another directory builds each disk on its own previous backup."""
    require_tool("qemu-img", "qemu-io")
    for env in counting_env(tmp_path):
        disks = []
        for i in range(2):
            d = tmp_path / f"d{i}.qcow2"
            vk(env, "disk", "create", str(d), "8M")
            subprocess.run(["qemu-io", "-c", f"write -P {i + 1} 0 1M", str(d)], check=True, capture_output=True)
            disks += ["--disk", str(d)]
        start(env, tmp_path, "g1", *disks)
        p = vk(env, "backup", "g1", "--to", str(tmp_path / "mon") + "/", "--json")
        st = json.loads(p.stdout)
        assert st["state"] == "completed" and st["disk"] == "all" and len(st["disks"]) == 2, st
        files = sorted(x.name for x in (tmp_path / "mon").iterdir())
        assert files == ["disk0-d0.qcow2", "disk1-d1.qcow2", "vm.json"]
        cfg = json.loads((tmp_path / "mon" / "vm.json").read_text())
        assert [d["path"] for d in cfg["machine"]["disks"]] == [str(tmp_path / "d0.qcow2"), str(tmp_path / "d1.qcow2")]
        for i in range(2):
            assert subprocess.run(["qemu-img", "compare", "-U", str(tmp_path / f"d{i}.qcow2"),
                                   str(tmp_path / "mon" / f"disk{i}-d{i}.qcow2")], capture_output=True).returncode == 0
        (tmp_path / "tue").mkdir()  # an existing directory needs no trailing slash
        st = json.loads(vk(env, "backup", "g1", "--to", str(tmp_path / "tue"), "--incremental", "--json").stdout)
        assert st["state"] == "completed" and st["kind"] == "incremental" and st["total"] == 0
        for i in range(2):
            info = json.loads(subprocess.run(["qemu-img", "info", "--output=json",
                                              str(tmp_path / "tue" / f"disk{i}-d{i}.qcow2")],
                                             capture_output=True, text=True, check=True).stdout)
            assert info["backing-filename"].endswith(f"mon/disk{i}-d{i}.qcow2")
        p = vk(env, "backup", "g1", "--to", str(tmp_path / "mon") + "/", check=False)
        assert p.returncode == 1 and "exists already" in p.stderr  # a backup never overwrites
        assert sorted(x.name for x in (tmp_path / "mon").iterdir()) == files
        assert running(env, "g1")
