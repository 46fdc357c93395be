"""The riscv64-virt board: device tree (checked with dtc and by QEMU's OpenSBI), placement, bad images."""

import gzip
import os
import struct
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import require_tool
from virtkit.boards.riscv_virt import FW_JUMP_FDT_ADDR, MiB, Segment, build_fdt, plan_layout
from virtkit.errors import ConfigError, ImageError
from virtkit.machine.config import DiskConfig, MachineConfig, NicConfig, parse_memory

FW_JUMP = Path("/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_jump.bin")


def fake_image(path: Path, image_size: int = 4 * MiB, code: bytes = struct.pack("<I", 0x6F)) -> Path:
    """A minimal RISC-V Linux Image: header (magic RSC\\x05, image_size) whose first instruction is ``j .``."""
    hdr = bytearray(64)
    hdr[: len(code)] = code
    struct.pack_into("<Q", hdr, 16, image_size)
    hdr[48:56] = b"RISCV\0\0\0"
    hdr[56:60] = b"RSC\x05"
    path.write_bytes(bytes(hdr))
    return path


def dts_of(blob: bytes, tmp_path: Path) -> str:
    require_tool("dtc")
    p = tmp_path / "board.dtb"
    p.write_bytes(blob)
    r = subprocess.run(["dtc", "-I", "dtb", "-O", "dts", str(p)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_fdt_matches_qemu_virt_layout(tmp_path):
    cfg = MachineConfig(kernel="k", cpus=2)
    dts = dts_of(build_fdt(cfg, 256 * MiB, (0x8820_0000, 0x8830_0000), rng_seed=bytes(32),
                           cmdline="console=ttyS0 root=/dev/vda"), tmp_path)
    for want in [
        'compatible = "riscv-virtio";',
        'bootargs = "console=ttyS0 root=/dev/vda";',
        'stdout-path = "/soc/serial@10000000";',
        "linux,initrd-start = <0x00 0x88200000>;",
        "linux,initrd-end = <0x00 0x88300000>;",
        "memory@80000000 {", "reg = <0x00 0x80000000 0x00 0x10000000>;",
        "timebase-frequency = <0x989680>;",
        "cpu@0 {", "cpu@1 {", 'riscv,isa = "rv64imafdc";', 'mmu-type = "riscv,sv48";',
        'compatible = "riscv,cpu-intc";',
        "clint@2000000 {", "reg = <0x00 0x2000000 0x00 0x10000>;",
        "plic@c000000 {", "riscv,ndev = <0x60>;", "reg = <0x00 0xc000000 0x00 0x204000>;",
        'compatible = "sifive,plic-1.0.0\\0riscv,plic0";',
        "serial@10000000 {", 'compatible = "ns16550a";', "interrupts = <0x0a>;",
        "test@100000 {", 'compatible = "sifive,test1\\0sifive,test0\\0syscon";',
        'compatible = "syscon-poweroff";', "value = <0x5555>;", 'compatible = "syscon-reboot";', "value = <0x7777>;",
        "rtc@101000 {", 'compatible = "google,goldfish-rtc";',
    ]:
        assert want in dts, want
    for i in range(8):
        assert f"virtio_mmio@{0x10001000 + 0x1000 * i:x} {{" in dts
    # interrupts-extended: each hart's intc phandle with M/S external (11, 9) and timer/soft (7, 3)
    assert dts.count("interrupts-extended") == 2


def test_layout_like_qemu():
    fw = [Segment(0x8000_0000, b"x" * 100_000, 100_000)]
    kernel = fake_image_bytes(20 * MiB)
    lay, segs = plan_layout(256 * MiB, fw, kernel, 5 * MiB, 0x5000)
    assert lay.entry == 0x8000_0000
    assert lay.kernel == (0x8020_0000, 0x8020_0000 + 20 * MiB)
    assert lay.initrd == (0x8020_0000 + 128 * MiB, 0x8020_0000 + 133 * MiB)
    assert lay.fdt[0] == 0x8FE0_0000
    lay, _ = plan_layout(128 * MiB, fw, kernel, 5 * MiB, 0x5000)
    assert lay.initrd[0] == 0x8020_0000 + 64 * MiB  # half of RAM on small machines
    # a big initrd that does not fit half-way goes right under the device tree
    lay, _ = plan_layout(128 * MiB, fw, kernel, 60 * MiB, 0x5000)
    assert lay.initrd[1] <= lay.fdt[0] and lay.initrd[0] >= FW_JUMP_FDT_ADDR + 0x5000


def fake_image_bytes(image_size):
    hdr = bytearray(64)
    struct.pack_into("<Q", hdr, 16, image_size)
    hdr[56:60] = b"RSC\x05"
    return bytes(hdr)


def test_layout_errors():
    fw = [Segment(0x8000_0000, b"x", 1)]
    with pytest.raises(ImageError, match="RAM too small"):
        plan_layout(32 * MiB, fw, fake_image_bytes(4 * MiB), None, 0x5000)
    with pytest.raises(ImageError, match="fw_jump"):
        plan_layout(256 * MiB, fw, fake_image_bytes(40 * MiB), None, 0x5000)
    with pytest.raises(ImageError, match="RAM too small"):
        plan_layout(64 * MiB, fw, fake_image_bytes(20 * MiB), 60 * MiB, 0x5000)


def build(tmp_path, **kw):
    """Build the machine with the real engine (devices wired, images loaded) without running it."""
    from virtkit.machine.builder import build as build_machine

    kw.setdefault("kernel", str(fake_image(tmp_path / "Image")))
    kw.setdefault("firmware", str(FW_JUMP))
    kw.setdefault("memory", 256 * MiB)
    return build_machine(MachineConfig(**kw))


@pytest.mark.parametrize("setup,match", [
    (lambda t: {"kernel": str(t / "nope")}, "does not exist"),
    (lambda t: {"kernel": str(t)}, "not a regular file"),
    (lambda t: {"kernel": _write(t / "empty", b"")}, "is empty"),
    (lambda t: {"kernel": _write(t / "Image.gz", gzip.compress(b"x" * 100))}, "gzip"),
    (lambda t: {"kernel": _write(t / "junk", os.urandom(4096))}, "neither a RISC-V Linux Image"),
    (lambda t: {"kernel": "/etc/passwd"}, "is a text file: neither"),
    (lambda t: {"initrd": "/etc/passwd"}, "not an initramfs: it is a text file"),
    (lambda t: {"initrd": _write(t / "gz", gzip.compress(b"plain text" * 100))}, "holds a text file, not a cpio"),
    (lambda t: {"firmware": "/etc/passwd"}, "firmware '/etc/passwd' is a text file, not firmware"),
    (lambda t: {"firmware": str(fake_image(t / "Image2"))}, "is a RISC-V Linux kernel Image, not firmware"),
    (lambda t: {"kernel": _write(t / "elf", b"\x7fELF\x01\x01" + bytes(100))}, "64-bit"),
    (lambda t: {"kernel": _write(t / "elf", b"\x7fELF\x02\x01" + bytes(12) + struct.pack("<H", 62) + bytes(50))},
     "not RISC-V"),
    (lambda t: {"firmware": str(t / "nofw")}, "firmware .* does not exist"),
    (lambda t: {"firmware": _write(t / "bigfw", bytes(3 * MiB))}, "larger than the 2 MiB"),
    (lambda t: {"initrd": str(t / "noinitrd")}, "initrd .* does not exist"),
    (lambda t: {"memory": 32 * MiB}, "RAM too small"),
])
def test_bad_images_are_clear_errors(tmp_path, setup, match):
    if not FW_JUMP.exists():
        pytest.skip("needs Debian package opensbi")
    with pytest.raises(ImageError, match=match):
        build(tmp_path, **setup(tmp_path))


def _write(p: Path, data: bytes) -> str:
    p.write_bytes(data)
    return str(p)


@pytest.mark.parametrize("kw,match", [
    ({"cpus": 9}, "cpus: 9 is out of range 1..8 for board riscv64-virt"),
    ({"memory": 8 * MiB}, "memory: 8M is out of range: board riscv64-virt takes 16M to 16G"),
    ({"memory": 17 * MiB + 4096}, "in whole MiB"),
    ({"disks": [DiskConfig("/etc/hostname", format="raw")] * 9}, "too many virtio devices"),
])
def test_board_limits(tmp_path, kw, match):
    if not FW_JUMP.exists():
        pytest.skip("needs Debian package opensbi")
    with pytest.raises(ConfigError, match=match):
        build(tmp_path, **kw)


def test_disk_net_mem_specs():
    assert DiskConfig.parse("a.img") == DiskConfig("a.img")
    assert DiskConfig.parse("a.img,ro") == DiskConfig("a.img", read_only=True)
    assert DiskConfig.parse("a.img,format=raw,werror=stop") == DiskConfig("a.img", format="raw", werror="stop")
    for bad in ("", ",ro", "a.img,rx", "a.img,format=vmdk", "a.img,werror=maybe"):
        with pytest.raises(ConfigError):
            DiskConfig.parse(bad)
    assert NicConfig.parse("tap:tap0") == NicConfig("tap", "tap0")
    assert NicConfig.parse("tap:t1,mac=52:54:00:00:00:01").mac == "52:54:00:00:00:01"
    sw = NicConfig.parse("switch:lan,vlan=7,mac=52:54:00:00:00:02")
    assert (sw.backend, sw.name, sw.vlan, sw.mac) == ("switch", "lan", 7, "52:54:00:00:00:02")
    assert NicConfig.parse(sw.to_flag()) == sw
    for bad in ("tap0", "tap:", "user:x", "tap:t,foo=1", "tap:t,vlan=7", "switch:", "switch:lan,vlan",
                "switch:s,x=1", "switch:s,vlan=4095", "switch:s,vlan=x", "tap:t,mac=01:00:00:00:00:00",
                "switch:s,port=a,vlan=3"):
        with pytest.raises(ConfigError):
            NicConfig.parse(bad)
    assert parse_memory("256") == 256 * MiB and parse_memory("1G") == 1024 * MiB
    assert parse_memory("1.5G") == 1536 * MiB and parse_memory(512) == 512 * MiB
    with pytest.raises(ConfigError):
        parse_memory("lots")


def test_disk_errors(tmp_path):
    from virtkit.storage.backend import BlockError

    img = tmp_path / "d.img"
    img.write_bytes(bytes(1 << 20))
    with pytest.raises(BlockError, match="does not exist"):
        build(tmp_path, disks=[DiskConfig(str(tmp_path / "missing.img"), format="raw")])
    a = build(tmp_path, disks=[DiskConfig(str(img), format="raw")])
    try:
        with pytest.raises(BlockError, match="locked"):
            build(tmp_path, disks=[DiskConfig(str(img), format="raw")])
    finally:
        a.vm.close()
    img.chmod(0o444)
    if os.geteuid() != 0:  # root writes anyway
        with pytest.raises(BlockError, match="not writable"):
            build(tmp_path, disks=[DiskConfig(str(img), format="raw")])


def test_qemu_opensbi_accepts_our_device_tree(tmp_path):
    """QEMU's virt machine + OpenSBI fw_jump booted with *our* DTB prints our model name."""
    require_tool("qemu-system-riscv64")
    if not FW_JUMP.exists():
        pytest.skip("needs Debian package opensbi")
    cfg = MachineConfig(kernel="k", cpus=2)
    dtb = tmp_path / "virtkit.dtb"
    dtb.write_bytes(build_fdt(cfg, 256 * MiB))
    kernel = fake_image(tmp_path / "Image")
    p = subprocess.Popen(["qemu-system-riscv64", "-M", "virt", "-m", "256M", "-smp", "2", "-nographic",
                          "-bios", str(FW_JUMP), "-kernel", str(kernel), "-dtb", str(dtb)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    out = b""
    try:
        os.set_blocking(p.stdout.fileno(), False)
        deadline = time.monotonic() + 60
        while b"Boot HART MEDELEG" not in out and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.1)
            out += p.stdout.read() or b""
    finally:
        p.kill()
        p.wait()
    text = out.decode(errors="replace")
    assert "Platform Name             : riscv-virtio,virtkit" in text, text
    assert "Platform HART Count       : 2" in text
    assert "Firmware Base" in text
