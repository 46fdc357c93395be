"""Live migration of a running Linux guest through the CLI: a detached target waits (``run --incoming -d``),
``migrate --bandwidth --json`` moves a guest that writes its ext4 disk in a loop; the guest goes on on the
target with its RAM and disk agreeing, the source is gone, the disk is clean under e2fsck afterwards."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers import require_tool
from tests.helpers.vmcli import (
    LOOP,
    console_log,
    ext4_qcow2,
    guest,
    host_fsck,
    linux_env,
    loop_count,
    mem_and_disk,
    numbers,
    shell,
    vk,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def env(tmp_path, guest_images):
    yield from linux_env(tmp_path, guest_images)


def test_a_guest_writing_its_disk_migrates_and_goes_on(env, tmp_path):
    require_tool("mkfs.ext4", "e2fsck", "debugfs", "qemu-img")
    disk = tmp_path / "vm.qcow2"
    ext4_qcow2(env, disk)
    vk(env, "run", "-d", "--name", "src", "--mem", "192M", *guest(env), "--disk", str(disk))
    wait_for(lambda: "virtkit:/#" in console_log(env, "src"), 300, "the shell")
    shell(env, "src", LOOP, "loop")
    before = loop_count(env, "src")
    tgt = json.loads(vk(env, "run", "--incoming", "tcp:127.0.0.1:0", "-d", "--name", "dst", "--json").stdout)
    assert tgt["name"] == "dst" and tgt["port"] > 0 and len(tgt["token"]) >= 16
    # a wrong token is refused and the source goes on as before
    bad = vk(env, "migrate", "src", f"tcp:127.0.0.1:{tgt['port']}", "--token", "not-the-token", "--json",
             check=False)
    assert bad.returncode != 0 and json.loads(bad.stdout)["state"] == "failed"
    assert numbers(shell(env, "src", "cat /tmp/mem", "still"))[-1] > before
    st = json.loads(vk(env, "migrate", "src", f"tcp:127.0.0.1:{tgt['port']}", "--token", tgt["token"],
                       "--bandwidth", "64M", "--json").stdout)
    assert st["state"] == "completed", st
    assert st["bytes_sent"] > 4 << 20 and 0 < st["downtime"] < st["total_seconds"]
    ps = {v["name"]: v for v in json.loads(vk(env, "ps", "--json").stdout)}
    assert "src" not in ps and ps["dst"]["state"] == "running"
    mem_now, disk_now = mem_and_disk(env, "dst", "there")
    assert mem_now > before and abs(mem_now - disk_now) <= 1  # RAM and disk went on together
    later = numbers(shell(env, "dst", "cat /tmp/mem", "later"))[-1]
    assert later > mem_now  # the loop runs on the target
    shell(env, "dst", "kill %1; sync; umount /mnt", "end")
    vk(env, "kill", "dst")
    host_fsck(env, disk, tmp_path)


def test_postcopy_moves_a_guest_writing_memory_and_disk(env, tmp_path):
    """``migrate --postcopy`` on a capped link: the guest runs on the target before its memory is all there;
    its RAM and disk go on together and the disk is clean afterwards."""
    require_tool("mkfs.ext4", "e2fsck", "debugfs", "qemu-img")
    from virtkit.machine import postcopy

    why = postcopy.available()
    if why is not None:
        pytest.skip(why)
    disk = tmp_path / "vm.qcow2"
    ext4_qcow2(env, disk)
    vk(env, "run", "-d", "--name", "src", "--mem", "192M", *guest(env), "--disk", str(disk))
    wait_for(lambda: "virtkit:/#" in console_log(env, "src"), 300, "the shell")
    shell(env, "src", LOOP + " (while :; do dd if=/dev/zero of=/tmp/big bs=1M count=24 2>/dev/null; done) &",
          "loop")  # and rewrite 24 MiB of page cache over and over: faster than the 16 MiB/s link
    before = loop_count(env, "src")
    tgt = json.loads(vk(env, "run", "--incoming", "tcp:127.0.0.1:0", "-d", "--name", "dst", "--json").stdout)
    st = json.loads(vk(env, "migrate", "src", f"tcp:127.0.0.1:{tgt['port']}", "--token", tgt["token"],
                       "--bandwidth", "16M", "--postcopy", "--downtime", "1ms", "--max-downtime", "1ms",
                       "--json").stdout)  # a goal no pre-copy round meets: the switch to post-copy comes at once
    assert st["state"] == "completed" and st["postcopy"], st
    assert st["throttle"] == 0 and st["downtime"] < 1.0
    assert st["postcopy_requests"] > 0  # the guest touched pages that had not arrived: fetched on demand
    mem_now, disk_now = mem_and_disk(env, "dst", "there")
    assert mem_now > before and abs(mem_now - disk_now) <= 1
    shell(env, "dst", "kill %1 %2; sync; umount /mnt", "end")
    vk(env, "kill", "dst")
    host_fsck(env, disk, tmp_path)


def test_copy_storage_moves_the_disk_with_the_guest(env, tmp_path):
    """``migrate --copy-storage`` to a target with its own ``--disk-dir``: the ext4 disk the guest keeps
    writing is copied while it runs; the guest goes on on the target's copy, which is clean afterwards."""
    require_tool("mkfs.ext4", "e2fsck", "debugfs", "qemu-img")
    disk = tmp_path / "vm.qcow2"
    ext4_qcow2(env, disk)
    there = tmp_path / "there"
    there.mkdir()
    vk(env, "run", "-d", "--name", "src", "--mem", "192M", *guest(env), "--disk", str(disk))
    wait_for(lambda: "virtkit:/#" in console_log(env, "src"), 300, "the shell")
    shell(env, "src", LOOP, "loop")
    before = loop_count(env, "src")
    tgt = json.loads(vk(env, "run", "--incoming", "tcp:127.0.0.1:0", "-d", "--name", "dst", "--disk-dir",
                        str(there), "--json").stdout)
    st = json.loads(vk(env, "migrate", "src", f"tcp:127.0.0.1:{tgt['port']}", "--token", tgt["token"],
                       "--copy-storage", "--bandwidth", "64M", "--json").stdout)
    assert st["state"] == "completed", st
    assert st["disk_bytes_sent"] > 1 << 20
    copy = there / "vm.qcow2"
    cfg = json.loads(vk(env, "ps", "--json").stdout)
    assert [v["name"] for v in cfg] == ["dst"]
    mem_now, disk_now = mem_and_disk(env, "dst", "there")
    assert mem_now > before and abs(mem_now - disk_now) <= 1
    shell(env, "dst", "kill %1; sync; umount /mnt", "end")
    vk(env, "kill", "dst")
    host_fsck(env, copy, tmp_path)  # the copy the guest went on with is consistent
    assert subprocess.run(["qemu-img", "check", str(copy)], capture_output=True).returncode == 0


def test_auto_converge_moves_a_guest_that_outruns_a_slow_link(env, tmp_path):
    """A Linux guest rewriting 24 MiB of page cache in a loop, migrated over an 8 MiB/s link (a rate-limited
    relay: a real slow link, which the sends feel): pre-copy alone would never converge; auto-converge
    throttles the vCPU until it does, and the guest goes on on the target with RAM and disk agreeing."""
    require_tool("mkfs.ext4", "e2fsck", "debugfs", "qemu-img")
    from tests.helpers.migration import SlowLink

    disk = tmp_path / "vm.qcow2"
    ext4_qcow2(env, disk)
    vk(env, "run", "-d", "--name", "src", "--mem", "128M", *guest(env), "--disk", str(disk))
    wait_for(lambda: "virtkit:/#" in console_log(env, "src"), 300, "the shell")
    shell(env, "src", LOOP + " (while :; do dd if=/dev/zero of=/tmp/big bs=1M count=24 2>/dev/null; done) &",
          "loop")
    tgt = json.loads(vk(env, "run", "--incoming", "tcp:127.0.0.1:0", "-d", "--name", "dst", "--json").stdout)
    link = SlowLink(tgt["port"], 8 << 20)
    st = json.loads(vk(env, "migrate", "src", f"tcp:127.0.0.1:{link.port}", "--token", tgt["token"],
                       "--max-downtime", "500ms", "--json", timeout=600).stdout)
    assert st["state"] == "completed", st
    assert st["throttle"] > 0 and any("throttled" in line for line in st["log"]), st["log"]
    mem_now, disk_now = mem_and_disk(env, "dst", "there")
    assert abs(mem_now - disk_now) <= 1
    shell(env, "dst", "kill %1 %2; sync; umount /mnt", "end")
    vk(env, "kill", "dst")
    host_fsck(env, disk, tmp_path)
