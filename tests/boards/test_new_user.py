"""What a new user hits at `virtkit run`: hangs, silently fewer CPUs, lost piped input, a raw terminal left
behind, --json with other things on stdout, a device tree that depends on how the VM was described."""

from __future__ import annotations

import io
import json
import os
import pty
import signal
import subprocess
import sys
import termios
import time

import pytest

from tests.helpers import BOOT_TIMEOUT, run_guest_exec, virtkit
from virtkit.images import cpio

pytestmark = pytest.mark.slow


def guest_args(g, *, initrd=None):
    return ["--kernel", str(g.kernel), "--initrd", str(initrd or g.initrd), "--bios", str(g.firmware)]


def test_initramfs_without_init_panics_and_is_reported_with_the_console_tail(guest_images, tmp_path):
    buf = io.BytesIO()
    with cpio.CpioWriter(buf) as w:
        w.add_dir("etc")
        w.add_dir("dev")
        w.add_device("dev/console", "c", 5, 1)
    bad = tmp_path / "noinit.cpio.gz"
    bad.write_bytes(cpio.gzip_bytes(buf.getvalue()))
    p = virtkit("run", *guest_args(guest_images, initrd=bad), "--exec", "true", "--timeout", BOOT_TIMEOUT)
    assert p.returncode == 1
    assert "guest stopped (panic)" in p.stderr and "Kernel panic - not syncing" in p.stderr, p.stderr
    assert "No working init found" in p.stderr or "init" in p.stderr


def test_firmware_that_never_hands_over_hits_the_boot_time_limit(guest_images, tmp_path):
    fw = tmp_path / "spin.bin"
    fw.write_bytes((0x0000006F).to_bytes(4, "little") * 4)  # j . : never jumps to the kernel
    t0 = time.monotonic()
    p = virtkit("run", "--kernel", str(guest_images.kernel), "--initrd", str(guest_images.initrd), "--bios", str(fw),
                "--exec", "true", "--boot-timeout", "3")
    assert p.returncode == 1
    assert "guest stopped (boot-timeout)" in p.stderr and "within 3 s" in p.stderr, p.stderr
    assert time.monotonic() - t0 < 300  # a hang guard, not a performance claim


def test_eight_harts_and_a_warning_when_the_kernel_brings_up_fewer(guest_images):
    p = run_guest_exec(guest_images, "nproc", "--cpus", "8")
    assert p.returncode == 0 and p.stdout.strip() == "8", (p.stdout, p.stderr)
    assert "warning" not in p.stderr
    p = run_guest_exec(guest_images, "nproc", "--cpus", "2", "--append", "console=ttyS0 nr_cpus=1")
    assert p.stdout.strip() == "1"
    assert "warning: the guest kernel brought up 1 of 2 CPUs" in p.stderr, p.stderr


def test_piped_input_reaches_the_shell(guest_images):
    p = virtkit("run", *guest_args(guest_images), "--timeout", BOOT_TIMEOUT,
                input="uname -m; echo piped-$((40+2)); exit\n")
    assert p.returncode == 0, p.stderr
    assert "riscv64" in p.stdout and "piped-42" in p.stdout, p.stdout[-2000:]


def test_json_is_the_only_thing_on_stdout(guest_images):
    p = virtkit("run", *guest_args(guest_images), "--json", "--exec", "echo hello; exit 4", "--timeout", BOOT_TIMEOUT)
    doc = json.loads(p.stdout)  # nothing else on stdout
    assert p.returncode == 4 and doc["exit_status"] == 4 and doc["command_exit_status"] == 4
    assert doc["output"] == "hello\n" and "Linux version" in doc["console"]
    assert doc["stats"]["instructions"] > 0
    p = virtkit("run", *guest_args(guest_images), "--json", "--timeout", BOOT_TIMEOUT, input="exit\n")
    doc = json.loads(p.stdout)
    assert doc["reason"] == "poweroff" and "virtkit:/# " in doc["console"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_stops_the_vm_and_restores_the_terminal(guest_images, sig):
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen([sys.executable, "-m", "virtkit.cli", "run", *guest_args(guest_images)],
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    out = bytearray()
    try:
        deadline = time.monotonic() + int(BOOT_TIMEOUT)
        while b"virtkit:/# " not in out and time.monotonic() < deadline:
            import select

            r, _, _ = select.select([master], [], [], 1)
            if r:
                out += os.read(master, 65536)
        assert b"virtkit:/# " in out, out[-2000:]
        assert termios.tcgetattr(slave)[3] & termios.ICANON == 0  # raw while the console runs
        os.kill(proc.pid, sig)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    after = termios.tcgetattr(slave)
    assert after == before  # cooked again: echo, canonical mode, signals
    os.close(master)
    os.close(slave)


def test_device_tree_is_the_same_from_flags_and_from_a_config_file(guest_images, tmp_path):
    flags = [*guest_args(guest_images), "--cpus", "2", "--mem", "192M", "--append", "console=ttyS0 quiet"]
    conf = tmp_path / "vm.toml"
    conf.write_text(virtkit("run", *flags, "--dump-config").stdout)
    a, b = tmp_path / "a.dtb", tmp_path / "b.dtb"
    assert virtkit("run", *flags, "--dump-dtb", str(a)).returncode == 0
    assert virtkit("run", "--config", str(conf), "--dump-dtb", str(b)).returncode == 0
    assert a.read_bytes() == b.read_bytes() and len(a.read_bytes()) > 1000
    # and what the booted guest sees (Linux wipes the random seed, so boots compare byte for byte)
    cmd = "md5sum /sys/firmware/fdt; nproc"
    p1 = virtkit("run", *flags, "--exec", cmd, "--timeout", BOOT_TIMEOUT)
    p2 = virtkit("run", "--config", str(conf), "--exec", cmd, "--timeout", BOOT_TIMEOUT)
    assert p1.returncode == p2.returncode == 0, (p1.stderr, p2.stderr)
    assert p1.stdout == p2.stdout and p1.stdout.split()[-1] == "2"
