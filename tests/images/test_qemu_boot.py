"""The images proven on QEMU (the reference peer): kernel + initramfs + OpenSBI boot on
`qemu-system-riscv64 -M virt`, run commands through the virtkit.exec contract, see SMP, a
virtio-blk ext4 disk (written in the guest, read on the host) and virtio-rng."""

from __future__ import annotations

import re

import pytest

from tests.helpers import require_tool
from virtkit.images import INIT_REACHED, exec_append, make_ext4, read_ext4_file
from virtkit.images.qemu import PROMPT, qemu_argv, run_console

pytestmark = pytest.mark.slow
TIMEOUT = 600  # a loaded shared machine; not a performance threshold


def lines(output: str) -> list[str]:
    """Console output as stripped lines (the serial console sends CR LF)."""
    return [t.strip() for t in output.replace("\r", "").splitlines()]


def boot(guest, command: str, **kw):
    require_tool("qemu-system-riscv64")
    argv = qemu_argv(guest.kernel, guest.initrd, f"console=ttyS0 {exec_append(command)}", guest.firmware, **kw)
    run = run_console(argv, timeout=TIMEOUT)
    assert not run.timed_out, run.output[-2000:]
    return run


def test_uname_riscv64(guest_images):
    run = boot(guest_images, "uname -m")
    assert "riscv64" in lines(run.output)  # a line of its own: the boot log mentions riscv64 too
    assert run.exit_status == 0, run.output[-2000:]
    assert run.returncode == 0  # the guest powered QEMU off


def test_exit_status_propagates(guest_images):
    run = boot(guest_images, "echo to-stderr >&2; exit 7")
    assert "to-stderr" in run.output and run.exit_status == 7


def test_smp_two_cpus(guest_images):
    run = boot(guest_images, 'echo "nproc=$(nproc) cpuinfo=$(grep -c ^processor /proc/cpuinfo)"', smp=2)
    assert run.exit_status == 0
    assert "nproc=2 cpuinfo=2" in lines(run.output)


def test_virtio_blk_ext4_written_in_guest_read_on_host(guest_images, tmp_path):
    require_tool("mke2fs", "debugfs")
    disk = make_ext4(tmp_path / "disk.img", "16M", {"from-host.txt": "written on the host\n"})
    run = boot(guest_images,
               "mount -t ext4 /dev/vda /mnt && cat /mnt/from-host.txt && "
               "echo written-in-the-guest > /mnt/from-guest.txt && umount /mnt",
               disks=[disk])
    assert run.exit_status == 0, run.output[-2000:]
    assert "written on the host" in run.output
    assert read_ext4_file(disk, "from-guest.txt") == b"written-in-the-guest\n"


def test_virtio_rng(guest_images):
    run = boot(guest_images,
               'echo "rng=$(cat /sys/class/misc/hw_random/rng_current)"; '
               'echo "bytes=$(head -c 16 /dev/hwrng | od -An -tx1 | tr -d \' \\n\')"',
               rng=True)
    assert run.exit_status == 0, run.output[-2000:]
    out = lines(run.output)
    assert "rng=virtio_rng.0" in out
    assert any(re.fullmatch(r"bytes=[0-9a-f]{32}", t) for t in out), out[-5:]


def test_bench_init_marker(guest_images):
    require_tool("qemu-system-riscv64")
    argv = qemu_argv(guest_images.kernel, guest_images.initrd, "console=ttyS0 virtkit.bench=init",
                     guest_images.firmware)
    run = run_console(argv, timeout=TIMEOUT)
    assert INIT_REACHED in run.output and run.returncode == 0


def test_interactive_shell_and_poweroff_on_exit(guest_images):
    require_tool("qemu-system-riscv64")
    argv = qemu_argv(guest_images.kernel, guest_images.initrd, "console=ttyS0", guest_images.firmware)
    run = run_console(argv, timeout=TIMEOUT, replies={PROMPT: "echo shell-$((6*7)); exit\n"},
                      marks=[PROMPT])
    assert not run.timed_out, run.output[-2000:]
    assert "shell-42" in run.output and run.returncode == 0


def test_boot_bench_runs_qemu_and_reports_virtkit_row(guest_images):
    """bench/boot.py measures QEMU and never crashes on virtkit: a time or a reason."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    require_tool("qemu-system-riscv64")
    bench = Path(__file__).resolve().parents[2] / "bench" / "boot.py"
    # --skip-virtkit keeps this bounded: a software-emulated boot is the devices tests' business
    p = subprocess.run([sys.executable, str(bench), "--json", "--skip-virtkit", "--warmup", "0", "--timeout", "900"],
                       capture_output=True, text=True, timeout=3600)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout)
    qemu, virtkit = out["peers"]
    assert qemu["error"] == "" and qemu["init"] > 0 and qemu["shell"] > 0
    assert virtkit["error"].startswith("not available") and virtkit["init"] is None
    p = subprocess.run([sys.executable, str(bench), "--runs", "0"], capture_output=True, text=True)
    assert p.returncode == 2 and "must be positive" in p.stderr
    p = subprocess.run([sys.executable, str(bench), "--warmup", "-1"], capture_output=True, text=True)
    assert p.returncode == 2 and "--warmup at least 0" in p.stderr
    p = subprocess.run([sys.executable, str(bench), "--jit-cache", "lukewarm"], capture_output=True, text=True)
    assert p.returncode == 2 and "invalid choice" in p.stderr
