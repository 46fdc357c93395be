"""Real Linux boots on the riscv64-virt board (OpenSBI fw_jump + Linux 6.1 + busybox initramfs).

Slow: each test boots the default guest on the software engine. The guest images are built
once from Debian packages (the ``guest_images`` fixture).
"""

import os
import subprocess
import threading
import time

import pytest

from tests.helpers import BOOT_TIMEOUT, require_root, require_tool, run_guest_exec
from tests.helpers.machines import virt

pytestmark = pytest.mark.slow


def test_exec_uname_cpuinfo_and_exit_status(guest_images):
    p = run_guest_exec(guest_images, "uname -m; grep -m1 '^isa' /proc/cpuinfo; exit 3")
    assert p.returncode == 3, (p.stdout, p.stderr)
    lines = p.stdout.splitlines()
    assert lines[0] == "riscv64", p.stdout
    assert "rv64imafdc" in lines[1]
    assert "OpenSBI" not in p.stdout and "Linux version" not in p.stdout  # boot log filtered out


def test_two_harts_and_virtio_rng(guest_images):
    p = run_guest_exec(guest_images, "nproc; cat /sys/class/misc/hw_random/rng_current; head -c 64 /dev/hwrng | wc -c",
                 "--cpus", "2", "--timeout", "900")
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert p.stdout.split() == ["2", "virtio_rng.0", "64"], p.stdout


def test_file_written_in_guest_is_on_the_ext4_disk(guest_images, tmp_path):
    from virtkit.images import make_ext4, read_ext4_file

    disk = tmp_path / "data.ext4"
    make_ext4(disk, "16M", {"hello.txt": "from the host\n"})
    p = run_guest_exec(guest_images, "mount -t ext4 /dev/vda /mnt && cat /mnt/hello.txt && "
                               "echo written-in-guest > /mnt/guest.txt && umount /mnt", "--disk", str(disk))
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert p.stdout == "from the host\n"
    assert read_ext4_file(disk, "guest.txt") == b"written-in-guest\n"
    subprocess.run(["e2fsck", "-fn", str(disk)], check=True, capture_output=True)


def test_read_only_disk_refuses_writes(guest_images, tmp_path):
    from virtkit.images import make_ext4

    disk = tmp_path / "ro.ext4"
    make_ext4(disk, "8M", {"a.txt": "x\n"})
    before = disk.read_bytes()
    p = run_guest_exec(guest_images, "cat /sys/block/vda/ro; mount -o ro /dev/vda /mnt && cat /mnt/a.txt; "
                               "dd if=/dev/zero of=/dev/vda bs=512 count=1 2>/dev/null; echo dd=$?",
                 "--disk", f"{disk},ro")
    assert p.stdout.splitlines()[:2] == ["1", "x"], p.stdout
    assert "dd=0" not in p.stdout
    assert disk.read_bytes() == before


def test_console_input_runs_a_typed_command(guest_images):
    out = bytearray()
    prompt = threading.Event()
    done = threading.Event()

    def console(data):
        out.extend(data)
        if b"virtkit:" in out and b"# " in out[-40:]:
            prompt.set()
        if b"typed-42" in out:
            done.set()

    board = virt(console, kernel=str(guest_images.kernel), initrd=str(guest_images.initrd),
                                  firmware=str(guest_images.firmware))
    board.vm.start()
    try:
        assert prompt.wait(int(BOOT_TIMEOUT)), out.decode(errors="replace")[-2000:]
        board.serial.feed(b"echo typed-$((6*7))\r")
        assert done.wait(600), out.decode(errors="replace")[-2000:]
        board.serial.feed(b"exit\r")
        res = board.vm.wait(600)
        assert res is not None and res.reason == "poweroff"
    finally:
        board.vm.close()


def test_ping_over_tap(guest_images):
    require_root()
    require_tool("ip")
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("needs /dev/net/tun")
    name = f"vkping{os.getpid() % 10000}"
    subprocess.run(["ip", "tuntap", "add", "dev", name, "mode", "tap"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", "10.213.7.1/24", "dev", name], check=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        time.sleep(0.1)
        p = run_guest_exec(guest_images, "ip addr add 10.213.7.2/24 dev eth0 && ip link set eth0 up && "
                                   "ping -c 2 -W 10 10.213.7.1", "--net", f"tap:{name}")
        assert p.returncode == 0, (p.stdout, p.stderr)
        assert "2 packets received" in p.stdout or " 0% packet loss" in p.stdout
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)


def test_qemu_boots_linux_with_our_device_tree(guest_images, tmp_path):
    """Cross-check of the board's FDT independent of the engine: QEMU's virt machine with *our* DTB."""
    require_tool("qemu-system-riscv64")
    from virtkit.boards.riscv_virt import MiB, build_fdt
    from virtkit.images import exec_append
    from virtkit.machine.config import MachineConfig

    cfg = MachineConfig(kernel="k", cpus=2)
    append = "console=ttyS0 " + exec_append("nproc; ls /sys/bus/virtio/devices")
    dtb = tmp_path / "virtkit.dtb"
    dtb.write_bytes(build_fdt(cfg, 256 * MiB, cmdline=append))
    disk = tmp_path / "d.raw"
    disk.write_bytes(bytes(1 << 20))
    p = subprocess.run(["qemu-system-riscv64", "-M", "virt", "-m", "256M", "-smp", "2", "-nographic",
                        "-bios", str(guest_images.firmware), "-kernel", str(guest_images.kernel),
                        "-initrd", str(guest_images.initrd), "-dtb", str(dtb), "-append", append,
                        "-drive", f"file={disk},format=raw,if=none,id=d0", "-device", "virtio-blk-device,drive=d0"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=int(BOOT_TIMEOUT))
    assert "virtkit-exit-status: 0" in p.stdout, p.stdout[-3000:]
    assert "Machine model: riscv-virtio,virtkit" in p.stdout
    assert "virtio0" in p.stdout


def test_virtio_rng_feeds_hwrng(guest_images):
    p = run_guest_exec(guest_images, "cat /sys/class/misc/hw_random/rng_current; head -c 64 /dev/hwrng | wc -c",
                 "--timeout", "600")
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert p.stdout.split() == ["virtio_rng.0", "64"], p.stdout
