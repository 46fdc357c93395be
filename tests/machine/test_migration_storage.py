"""``migrate --copy-storage``: disks that are not shared move with the guest. The source copies the disk's
data while writes keep landing on it (through the same path the guest's virtio-blk requests take), then
the chunks written since, and the last ones at the switch-over; the target's new image reads exactly
like the source's at the end (``qemu-img compare``). A target whose file exists already refuses before
anything is copied, a failed migration deletes what the target created, and the source goes on."""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time

import pytest

from tests.helpers import require_tool
from tests.helpers.guests import COUNTING, Out, counter
from tests.helpers.machines import virt
from tests.helpers.opensbi import payload_image
from virtkit.machine.config import DiskConfig
from virtkit.machine.migration import Source, Target
from virtkit.storage.qcow2 import Qcow2

MiB = 1 << 20


def disk_machine(tmp_path, fmt="qcow2"):
    img = tmp_path / "c.img"
    payload_image(img, COUNTING)
    d = tmp_path / f"src-disk.{fmt}"
    if fmt == "qcow2":
        Qcow2.create(str(d), 32 * MiB)
    else:
        with open(d, "wb") as f:
            f.truncate(32 * MiB)
    subprocess.run(["qemu-io", "-f", fmt, "-c", "write -P 0x33 0 12M", str(d)], check=True, capture_output=True)
    m = virt(Out(), kernel=str(img), firmware=None, mem_mib=32, rng=False,
             disks=[DiskConfig(path=str(d), format=fmt)])
    return m, d


class Rx:
    def __init__(self, disk_dir):
        self.target = Target("tcp:127.0.0.1:0", "tok", accept_timeout=60, disk_dir=str(disk_dir))
        self.machine, self.error = None, None
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        try:
            self.machine = self.target.receive(Out(), "dst")
        except Exception as err:
            self.error = err


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_disk_copied_while_it_is_written_reads_the_same(tmp_path, fmt):
    require_tool("qemu-img", "qemu-io")
    src, disk = disk_machine(tmp_path, fmt)
    out = tmp_path / "dst"
    out.mkdir()
    src.vm.start()
    stop = threading.Event()
    blk = src.virtio[0]
    gate, running = threading.Lock(), [True]

    def on_state(state, reason):  # like the guest's requests, the writes stop while the VM is paused
        with gate:
            running[0] = state == "running"

    src.vm.listeners.append(on_state)

    def writer():  # writes that land during the copy, as the guest's would (through the device's backend)
        r = random.Random(1)
        while not stop.is_set():
            off = r.randrange(0, 32 * MiB - 70000) & ~511
            with gate:
                if running[0]:
                    blk.backend.write(off, r.randbytes(65536))
                    if r.random() < 0.1:
                        blk.backend.write_zeroes(off & ~0xFFFF, 65536)
            time.sleep(0.002)

    th = threading.Thread(target=writer)
    th.start()
    rx = Rx(out)
    mig = Source(src, f"tcp:127.0.0.1:{rx.target.port}", "tok", bandwidth=32 * MiB, copy_storage=True)
    mig.start()
    time.sleep(0.3)
    st = mig.wait(120)
    stop.set()
    th.join()
    rx.t.join(60)
    try:
        assert st.state == "completed", st.error
        assert rx.error is None, rx.error
        assert st.disk_bytes_sent >= 12 * MiB
        dst = rx.machine
        copied = out / disk.name
        assert dst.cfg.disks[0].path == str(copied) and dst.virtio[0].backend.path == str(copied)
        dst.vm.start()
        c = counter(dst)
        assert c > 0
        dst.vm.close()
        src.vm.close()
        p = subprocess.run(["qemu-img", "compare", "-f", fmt, "-F", fmt, str(disk), str(copied)],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
        if fmt == "qcow2":
            assert subprocess.run(["qemu-img", "check", str(copied)], capture_output=True).returncode == 0
    finally:
        if rx.machine is not None:
            rx.machine.vm.close()
        src.vm.close()


def test_target_refuses_an_existing_file_and_cleans_up_after_a_failure(tmp_path):
    require_tool("qemu-io")
    src, disk = disk_machine(tmp_path)
    out = tmp_path / "dst"
    out.mkdir()
    (out / disk.name).write_bytes(b"keep me")
    src.vm.start()
    try:
        rx = Rx(out)
        st = Source(src, f"tcp:127.0.0.1:{rx.target.port}", "tok", copy_storage=True)
        st.start()
        status = st.wait(60)
        assert status.state == "failed" and "exists already" in status.error
        assert (out / disk.name).read_bytes() == b"keep me"  # nothing of the target's was touched
        assert src.vm.state == "running" and src.virtio[0].backend.__class__.__name__ == "Qcow2"
        rx.target.close()
        # a target that fails mid-way (its machine cannot be built here: a bad --disk-dir file name) removes
        # the images it created: cancel after the copy has started
        os.unlink(out / disk.name)
        rx = Rx(out)
        st = Source(src, f"tcp:127.0.0.1:{rx.target.port}", "tok", copy_storage=True, bandwidth=2 * MiB)
        st.start()
        deadline = time.monotonic() + 30
        while not (out / disk.name).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        st.cancel()
        status = st.wait(60)
        rx.t.join(30)
        assert status.state == "cancelled", status
        assert not (out / disk.name).exists()  # the target deleted its partial copy
        assert src.vm.state == "running"
        c = counter(src)
        time.sleep(0.2)
        assert counter(src) > c
    finally:
        src.vm.close()
