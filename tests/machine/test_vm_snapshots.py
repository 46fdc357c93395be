"""Snapshots of running Linux guests, end to end through the CLI: RAM and disk taken in one instant while a
shell loop writes to an ext4 disk, the host copy of the disk clean under e2fsck, the restored guest going
on with RAM and disk agreeing; clones that diverge and share their unchanged memory."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers import require_tool
from tests.helpers.vmcli import (
    LOOP,
    console_log,
    ext4_qcow2,
    guest,
    host_fsck,
    linux_env,
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


def test_snapshot_of_a_guest_writing_its_disk_restores_consistently(env, tmp_path):
    require_tool("mkfs.ext4", "e2fsck", "debugfs", "qemu-img")
    disk = tmp_path / "vm.qcow2"
    ext4_qcow2(env, disk)
    vk(env, "run", "-d", "--name", "w1", *guest(env), "--disk", str(disk))
    wait_for(lambda: "virtkit:/#" in console_log(env, "w1"), 300, "the shell")
    shell(env, "w1", LOOP, "loop")
    wait_for(lambda: numbers(shell(env, "w1", "cat /tmp/mem", "n"))[-1:] > [20], 60, "the loop running")
    snap = json.loads(vk(env, "snapshot", "create", "w1", "s1", "--json").stdout)
    assert snap["disks"][0]["kind"] == "qcow2" and snap["memory"]["encoding"] == "sparse"
    bundle = Path(env["VIRTKIT_SNAPSHOTS"]) / "s1"
    # the VM goes on, now writing an overlay on the image the snapshot holds (qemu-img sees the chain)
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(disk)], capture_output=True,
                                     text=True, check=True).stdout)
    assert Path(disk.parent, info["backing-filename"]).resolve() == (bundle / "disk0.qcow2").resolve()
    n_later = numbers(shell(env, "w1", "cat /tmp/mem", "later"))[-1]
    at_snapshot = int(host_fsck(env, bundle / "disk0.qcow2", tmp_path))  # clean, and what the loop had written
    assert 0 < at_snapshot < n_later
    vk(env, "kill", "w1")

    vk(env, "snapshot", "restore", "s1", "-d", "--name", "w2")
    mem_now, disk_now = mem_and_disk(env, "w2", "r1")
    assert mem_now >= at_snapshot and disk_now >= at_snapshot  # RAM and disk went on from the snapshot
    assert abs(mem_now - disk_now) <= 1  # and agree with each other
    assert mem_now < n_later + 10_000_000  # (not the old VM's later state: its overlay was rolled back)
    shell(env, "w2", "kill %1; sync; umount /mnt", "r2")
    vk(env, "kill", "w2")
    host_fsck(env, disk, tmp_path)


def _smaps_memory_file(pid: int) -> dict[str, int]:
    """Rss/Pss/Shared_Clean (kB) of the snapshot memory file's mapping in process ``pid``."""
    out: dict[str, int] = {"Rss": 0, "Pss": 0, "Shared_Clean": 0}
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.rstrip().endswith("memory.bin")
        elif inside:
            k, _, v = line.partition(":")
            if k in out:
                out[k] += int(v.split()[0])
    return out


def test_clones_diverge_and_share_unchanged_memory(env, tmp_path):
    require_tool("mkfs.ext4", "qemu-img")
    disk = tmp_path / "base.qcow2"
    ext4_qcow2(env, disk)
    vk(env, "run", "-d", "--name", "b", *guest(env), "--disk", str(disk))
    wait_for(lambda: "virtkit:/#" in console_log(env, "b"), 300, "the shell")
    shell(env, "b", "mkdir -p /mnt && mount /dev/vda /mnt && echo base > /mnt/who && sync", "m")
    vk(env, "snapshot", "create", "b", "base")
    vk(env, "kill", "b")
    clones = json.loads(vk(env, "clone", "base", "--count", "2", "--name-prefix", "web", "--disk-dir",
                           str(tmp_path / "clones"), "--json").stdout)
    names = [c["name"] for c in clones]
    assert names == ["web-1", "web-2"]
    for n in names:  # each writes its own disk and memory
        shell(env, n, f"echo {n} > /mnt/who; echo {n} > /tmp/who; sync", "w")
    draws = set()  # the entropy device gives each clone its own random bytes (the host's, not the snapshot's)
    for n in names:
        out = shell(env, n, "head -c 16 /dev/hwrng | hexdump -v -e '16/1 \"%02x\"'; echo", "r")
        draws.update(re.findall(r"^([0-9a-f]{32})\r?$", out, re.M))
    assert len(draws) == 2, draws
    for n in names:
        out = shell(env, n, "cat /mnt/who /tmp/who", "c")
        others = [o for o in names if o != n]
        assert out.count(n) == 2 and not any(o in out for o in others), out
    overlays = sorted((tmp_path / "clones").glob("*.qcow2"))
    assert [p.name for p in overlays] == ["web-1-disk0.qcow2", "web-2-disk0.qcow2"]
    # the base image kept its content: the clones wrote their overlays
    assert "base" in subprocess.run(["debugfs", "-R", "cat /who", "-c", str(_raw(tmp_path, disk))],
                                    capture_output=True, text=True).stdout
    # RAM: both map the snapshot's memory file copy-on-write; the pages neither wrote are shared
    pids = [c["pid"] for c in clones]
    sm = [_smaps_memory_file(p) for p in pids]
    assert all(s["Rss"] > 1024 for s in sm), sm  # the guests run from the file's pages
    assert sum(s["Pss"] for s in sm) < 0.75 * sum(s["Rss"] for s in sm), sm  # and those pages are shared
    for n in names:
        vk(env, "kill", n)


def _raw(tmp_path: Path, image: Path) -> Path:
    raw = tmp_path / f"{image.stem}.check.raw"
    raw.unlink(missing_ok=True)
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(image), str(raw)], check=True)
    return raw
