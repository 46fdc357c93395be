"""The riscv64-virt board: device tree (checked with dtc and by QEMU's OpenSBI), placement, bad images."""

import gzip
import os
import struct
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import require_tool
from virtkit.boards.riscv_virt import (
    FW_JUMP_FDT_ADDR,
    BoardConfig,
    DiskSpec,
    MiB,
    NetSpec,
    Segment,
    build_fdt,
    parse_mem,
    plan_layout,
)
from virtkit.errors import ConfigError, ImageError

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
    cfg = BoardConfig(kernel="k", cpus=2, append="console=ttyS0 root=/dev/vda")
    dts = dts_of(build_fdt(cfg, 256 * MiB, [], (0x8820_0000, 0x8830_0000), rng_seed=bytes(32)), tmp_path)
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
    cfg = BoardConfig(kernel="k", initrd="i", firmware="fw")
    fw = [Segment(0x8000_0000, b"x" * 100_000, 100_000)]
    kernel = fake_image_bytes(20 * MiB)
    lay, segs = plan_layout(cfg, 256 * MiB, fw, kernel, 5 * MiB, 0x5000)
    assert lay.entry == 0x8000_0000
    assert lay.kernel == (0x8020_0000, 0x8020_0000 + 20 * MiB)
    assert lay.initrd == (0x8020_0000 + 128 * MiB, 0x8020_0000 + 133 * MiB)
    assert lay.fdt[0] == 0x8FE0_0000
    lay, _ = plan_layout(cfg, 128 * MiB, fw, kernel, 5 * MiB, 0x5000)
    assert lay.initrd[0] == 0x8020_0000 + 64 * MiB  # half of RAM on small machines
    # a big initrd that does not fit half-way goes right under the device tree
    lay, _ = plan_layout(cfg, 128 * MiB, fw, kernel, 60 * MiB, 0x5000)
    assert lay.initrd[1] <= lay.fdt[0] and lay.initrd[0] >= FW_JUMP_FDT_ADDR + 0x5000


def fake_image_bytes(image_size):
    hdr = bytearray(64)
    struct.pack_into("<Q", hdr, 16, image_size)
    hdr[56:60] = b"RSC\x05"
    return bytes(hdr)


def test_layout_errors():
    cfg = BoardConfig(kernel="k", firmware="fw")
    fw = [Segment(0x8000_0000, b"x", 1)]
    with pytest.raises(ImageError, match="RAM too small"):
        plan_layout(cfg, 32 * MiB, fw, fake_image_bytes(4 * MiB), None, 0x5000)
    with pytest.raises(ImageError, match="fw_jump"):
        plan_layout(cfg, 256 * MiB, fw, fake_image_bytes(40 * MiB), None, 0x5000)
    with pytest.raises(ImageError, match="RAM too small"):
        plan_layout(cfg, 64 * MiB, fw, fake_image_bytes(20 * MiB), 60 * MiB, 0x5000)


def build(tmp_path, **kw):
    """Build the board with the real engine (devices wired, images loaded) without running it."""
    from virtkit.boards.riscv_virt import RiscvVirt

    kw.setdefault("kernel", str(fake_image(tmp_path / "Image")))
    kw.setdefault("firmware", str(FW_JUMP))
    return RiscvVirt(BoardConfig(**kw))


@pytest.mark.parametrize("setup,match", [
    (lambda t: {"kernel": str(t / "nope")}, "does not exist"),
    (lambda t: {"kernel": str(t)}, "not a regular file"),
    (lambda t: {"kernel": _write(t / "empty", b"")}, "is empty"),
    (lambda t: {"kernel": _write(t / "Image.gz", gzip.compress(b"x" * 100))}, "gzip"),
    (lambda t: {"kernel": _write(t / "junk", os.urandom(4096))}, "neither a RISC-V Linux Image"),
    (lambda t: {"kernel": _write(t / "elf", b"\x7fELF\x01\x01" + bytes(100))}, "64-bit"),
    (lambda t: {"kernel": _write(t / "elf", b"\x7fELF\x02\x01" + bytes(12) + struct.pack("<H", 62) + bytes(50))},
     "not RISC-V"),
    (lambda t: {"firmware": str(t / "nofw")}, "firmware .* does not exist"),
    (lambda t: {"firmware": _write(t / "bigfw", bytes(3 * MiB))}, "larger than the 2 MiB"),
    (lambda t: {"initrd": str(t / "noinitrd")}, "initrd .* does not exist"),
    (lambda t: {"mem_mib": 32}, "RAM too small"),
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
    ({"cpus": 0}, "--cpus"), ({"cpus": 9}, "--cpus"), ({"mem_mib": 8}, "--mem"), ({"mmu": "sv57"}, "mmu"),
    ({"append": "a\0b"}, "NUL"), ({"disks": [DiskSpec("x")] * 9}, "too many virtio"),
])
def test_bad_config(kw, match):
    with pytest.raises(ConfigError, match=match):
        BoardConfig(kernel="k", **kw).validate()


def test_disk_net_mem_specs():
    assert DiskSpec.parse("a.img") == DiskSpec("a.img", False)
    assert DiskSpec.parse("a.img,ro") == DiskSpec("a.img", True)
    for bad in ("", ",ro", "a.img,rx"):
        with pytest.raises(ConfigError):
            DiskSpec.parse(bad)
    assert NetSpec.parse("tap:tap0") == NetSpec("tap", "tap0")
    assert NetSpec.parse("tap:t1,mac=52:54:00:00:00:01").mac == "52:54:00:00:00:01"
    sw = NetSpec.parse("switch:lan,vlan=7,mac=52:54:00:00:00:02")
    assert (sw.kind, sw.name, sw.switch_spec, sw.mac) == ("switch", "lan", "lan,vlan=7", "52:54:00:00:00:02")
    for bad in ("tap0", "tap:", "user:x", "tap:t,foo=1", "tap:t,vlan=7", "switch:", "switch:lan,vlan", "switch:s,x=1"):
        with pytest.raises(ConfigError):
            NetSpec.parse(bad)
    assert parse_mem("256") == 256 and parse_mem("1G") == 1024 and parse_mem("512M") == 512
    with pytest.raises(ConfigError):
        parse_mem("lots")


def test_disk_errors(tmp_path):
    from virtkit.storage.backend import BlockError

    img = tmp_path / "d.img"
    img.write_bytes(bytes(1 << 20))
    with pytest.raises(BlockError, match="does not exist"):
        build(tmp_path, disks=[DiskSpec(str(tmp_path / "missing.img"))])
    a = build(tmp_path, disks=[DiskSpec(str(img))])
    try:
        with pytest.raises(BlockError, match="locked"):
            build(tmp_path, disks=[DiskSpec(str(img))])
    finally:
        a.vm.close()
    img.chmod(0o444)
    if os.geteuid() != 0:  # root writes anyway
        with pytest.raises(BlockError, match="not writable"):
            build(tmp_path, disks=[DiskSpec(str(img))])


def test_qemu_opensbi_accepts_our_device_tree(tmp_path):
    """QEMU's virt machine + OpenSBI fw_jump booted with *our* DTB prints our model name."""
    require_tool("qemu-system-riscv64")
    if not FW_JUMP.exists():
        pytest.skip("needs Debian package opensbi")
    cfg = BoardConfig(kernel="k", cpus=2)
    dtb = tmp_path / "virtkit.dtb"
    dtb.write_bytes(build_fdt(cfg, 256 * MiB, []))
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
