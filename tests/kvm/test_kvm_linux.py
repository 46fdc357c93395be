"""The x86-64 Linux guest on the KVM engine: Linux 6.1 from Debian's linux-source-6.1 (allnoconfig +
src/virtkit/images/kernel-x86_64.config) and busybox-static. Where the host has hardware virtualization it
boots to the shell and runs ``--exec`` (bzImage and PVH). On kvm_pvm (ring-0 guest code emulated by the host
kernel) a stock kernel does not boot: the emulator lacks cmpxchg16b (virtkit hides CX16 there) and stops at
the kernel's XSAVE set-up; there the PVH kernel's first console lines (early printk on the 16550: the banner,
the e820 map, the MP table) must appear within a bounded time, so the boot path is exercised."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers.x86guests import kvm_missing

pytestmark = [pytest.mark.slow, pytest.mark.skipif(kvm_missing() is not None, reason=str(kvm_missing()))]


@pytest.fixture(scope="module")
def x86_guest():
    from virtkit.images import MissingToolError, build

    try:
        paths = build(["kernel-x86_64", "initramfs-x86_64"], progress=False)
    except MissingToolError as err:
        pytest.skip(f"cannot build the x86-64 guest: {err}")
    kdir = paths["kernel-x86_64"].parent
    return {"bzimage": paths["kernel-x86_64"], "vmlinux": kdir / "vmlinux", "initrd": paths["initramfs-x86_64"]}


def run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "virtkit.cli", "run", "--engine", "kvm", *args],
                          capture_output=True, text=True, errors="replace", timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_the_kernels_are_what_the_loader_expects(x86_guest):
    """The build gives a bzImage (boot protocol 2.12+, 64-bit entry) and a vmlinux with the PVH note."""
    from virtkit.boards import x86boot

    assert x86boot.kind_of(x86_guest["bzimage"].read_bytes()) == "bzimage"
    assert x86boot.kind_of(x86_guest["vmlinux"].read_bytes()) == "pvh"


@pytest.mark.parametrize("which", ["vmlinux", "bzimage"])
def test_the_kernel_prints_its_first_lines(x86_guest, which):
    """On any KVM: the PVH entry (vmlinux) and the 64-bit boot protocol (bzImage: its decompressor runs first,
    about 80 s when ring 0 is emulated) reach the kernel's early console, with the loader's memory map and
    the board's MP table and virtio-mmio devices."""
    p = run("--kernel", str(x86_guest[which]), "--initrd", str(x86_guest["initrd"]), "--mem", "256",
            "--append", "earlyprintk=serial,ttyS0 console=ttyS0 reboot=k panic=-1 virtkit.bench=init",
            "--timeout", "240", timeout=400)
    assert "Linux version 6.1" in p.stdout, (p.returncode, p.stdout[-2000:], p.stderr[-1000:])
    assert "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable" in p.stdout  # the loader's map
    assert "MPTABLE: OEM ID: VIRTKIT" in p.stdout and "virtio_mmio.device=4K@0xd0000000:5" in p.stdout


@pytest.mark.skipif(__import__("virtkit.engines.kvm.host", fromlist=["kind"]).kind()["kind"] != "hardware",
                    reason="the host's KVM is not hardware virtualization: kvm_pvm emulates ring-0 guest code, and "
                           "its emulator stops this kernel at its XSAVE set-up (an emulation error) after the "
                           "memory and MP-table lines")
@pytest.mark.parametrize("which", ["bzimage", "vmlinux"])
def test_linux_boots_and_runs_a_command(x86_guest, which):
    p = run("--kernel", str(x86_guest[which]), "--initrd", str(x86_guest["initrd"]), "--mem", "256", "--cpus", "2",
            "--exec", "uname -m; grep -c ^processor /proc/cpuinfo", timeout=300)
    assert p.returncode == 0 and "x86_64" in p.stdout and "2" in p.stdout, (p.stdout[-2000:], p.stderr)
