"""Live backup of a running Linux guest through the CLI: a full backup taken while the guest writes its
disk equals the disk at the backup's instant (``qemu-img compare``) and copy-before-write did the work;
an incremental chain reads back each instant; the pull-mode export (``virtkit nbd serve --vm``) serves
the disk as of its instant and ``nbdinfo --map=qemu:dirty-bitmap:NAME`` lists exactly the chunks the
guest wrote since the last backup."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.helpers import require_tool, virtkit
from tests.helpers.vmcli import console_log, guest, shell, vk, vm_env, wait_for

pytestmark = pytest.mark.slow
MiB = 1 << 20
CHUNK = 64 << 10


@pytest.fixture(scope="module")
def lab(tmp_path_factory, guest_images):
    """One Linux guest for the module, its 128 MiB qcow2 disk full of data (written from the host first)."""
    require_tool("qemu-img", "qemu-io", "nbdinfo")
    tmp = tmp_path_factory.mktemp("backup")
    g = json.dumps([str(guest_images.kernel), str(guest_images.initrd), str(guest_images.firmware)])
    envs = vm_env(tmp, GUEST=g)
    env = next(envs)
    disk = tmp / "vm.qcow2"
    vk(env, "disk", "create", "-f", "qcow2", str(disk), "128M")
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 0 120M", str(disk)], check=True, capture_output=True)
    vk(env, "run", "-d", "--name", "bk", "--mem", "128M", *guest(env), "--disk", str(disk))
    wait_for(lambda: "virtkit:/#" in console_log(env, "bk"), 300, "the shell")
    yield env, tmp, disk
    for _ in envs:
        pass


def qcompare(a: str, b: str) -> None:
    p = subprocess.run(["qemu-img", "compare", "-U", a, b], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def status(env) -> dict:
    return json.loads(vk(env, "backup", "bk", "--status", "--json").stdout)


def guest_dd(env, *blocks: tuple[int, int]) -> None:
    """The guest writes random data to 64 KiB blocks (first, count) of its disk and syncs."""
    cmd = "; ".join(f"dd if=/dev/urandom of=/dev/vda bs=64k count={n} seek={b} conv=notrunc,fsync 2>/dev/null"
                    for b, n in blocks)
    shell(env, "bk", cmd, f"dd{blocks[0][0]}")


def test_full_backup_while_the_guest_writes_is_the_disk_at_its_instant(lab):
    env, tmp, disk = lab
    shell(env, "bk", "(while :; do dd if=/dev/urandom of=/dev/vda bs=64k count=4 seek=$((RANDOM % 1900)) "
          "conv=notrunc,fsync 2>/dev/null; done) &", "writer")
    time.sleep(1)
    vk(env, "pause", "bk")
    target = tmp / "full.qcow2"
    job = subprocess.Popen([*virtkit_cmd(), "backup", "bk", "--to", str(target), "--speed", "24M", "--json"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _started(env), 30, "the backup's instant")
        ref = tmp / "ref.raw"  # the disk at the instant: the VM is paused, the disk flushed by the backup
        subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(disk), str(ref)], check=True)
        assert status(env)["state"] == "running"
        vk(env, "resume", "bk")
        out, err = job.communicate(timeout=120)
    finally:
        job.kill()
    st = json.loads(out)
    assert st["state"] == "completed", err
    assert st["saved_by_cbw"] > 0  # the guest overwrote chunks the copy still needed: they were saved first
    qcompare(str(ref), str(target))
    shell(env, "bk", "kill %1; wait", "stopped")
    p = subprocess.run(["qemu-img", "compare", "-U", str(ref), str(disk)], capture_output=True, text=True)
    assert p.returncode == 1  # the guest did go on writing: the live disk is not the backup
    assert subprocess.run(["qemu-img", "check", str(target)], capture_output=True).returncode == 0
    # another VM operation waits for nothing now; a second backup to the same name is refused, nothing lost
    p = vk(env, "backup", "bk", "--to", str(target), check=False)
    assert p.returncode == 1 and "exists already" in p.stderr


def virtkit_cmd() -> list[str]:
    import sys

    return [sys.executable, "-m", "virtkit.cli"]


def _started(env) -> bool:
    p = virtkit("backup", "bk", "--status", "--json", env=env)
    return p.returncode == 0 and json.loads(p.stdout).get("state") in ("running", "completed")


def test_incremental_chain_of_a_running_guest_reads_back_each_instant(lab):
    env, tmp, disk = lab
    full, inc1, inc2 = tmp / "c-full.qcow2", tmp / "c-inc1.qcow2", tmp / "c-inc2.qcow2"
    vk(env, "backup", "bk", "--to", str(full))
    guest_dd(env, (3, 2), (700, 1))
    vk(env, "pause", "bk")
    st = json.loads(vk(env, "backup", "bk", "--to", str(inc1), "--incremental", "--json").stdout)
    assert st["kind"] == "incremental" and st["total"] == 3 * CHUNK and st["base"] == str(full)
    qcompare(str(disk), str(inc1))
    vk(env, "resume", "bk")
    guest_dd(env, (1000, 3))
    vk(env, "pause", "bk")
    st = json.loads(vk(env, "backup", "bk", "--to", str(inc2), "--incremental", "--json").stdout)
    assert st["total"] == 3 * CHUNK and st["base"] == str(inc1)
    qcompare(str(disk), str(inc2))
    vk(env, "resume", "bk")
    assert os.path.getsize(inc2) < 2 * MiB  # only the changed chunks (and qcow2's metadata)


def test_pull_export_serves_the_instant_and_the_changed_blocks(lab):
    env, tmp, disk = lab
    vk(env, "backup", "bk", "--to", str(tmp / "p-full.qcow2"))  # the bitmap starts again here
    guest_dd(env, (10, 2), (500, 1), (1500, 1))
    sock = tmp / "pull.sock"
    srv = subprocess.Popen([*virtkit_cmd(), "nbd", "serve", "--vm", "bk", "--bitmap", "virtkit-backup",
                            "--socket", str(sock), "--json"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        info = json.loads(srv.stdout.readline())
        assert info["contexts"] == ["base:allocation", "qemu:dirty-bitmap:virtkit-backup"]
        uri = f"nbd+unix:///?socket={sock}"
        guest_dd(env, (20, 1))  # after the instant: neither in the map nor in the view
        p = subprocess.run(["nbdinfo", "--json", "--map=qemu:dirty-bitmap:virtkit-backup", uri],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        dirty = [(e["offset"], e["length"]) for e in json.loads(p.stdout) if e["type"] & 1]
        assert dirty == [(10 * CHUNK, 2 * CHUNK), (500 * CHUNK, CHUNK), (1500 * CHUNK, CHUNK)]
        p = subprocess.run(["nbdinfo", "--list", "--json", uri], capture_output=True, text=True)
        assert p.returncode == 0 and json.loads(p.stdout)["exports"][0]["is_read_only"], p.stdout
        view = tmp / "view.raw"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", uri, str(view)], check=True)
        p = subprocess.run(["qemu-img", "compare", "-U", str(view), str(disk)], capture_output=True, text=True)
        assert "mismatch at offset 1310720" in p.stdout  # block 20, written after the instant, differs
        p = vk(env, "backup", "bk", "--to", str(tmp / "x.qcow2"), check=False)
        assert p.returncode == 1 and "export of it is open" in p.stderr  # one view of a disk at a time
        assert not (tmp / "x.qcow2").exists()
    finally:
        srv.send_signal(signal.SIGTERM)
        srv.wait(timeout=30)
    assert not sock.exists()
