"""``virtkit run`` on the riscv64-virt board: bad input gets a one-line error, a guest poweroff exits 0."""

import json
import subprocess
import sys

import pytest

from tests.helpers.opensbi import FAIL_7, FW_JUMP, POWEROFF, payload_image
from virtkit.commands._terminal import ExecFilter
from virtkit.errors import ConfigError
from virtkit.images.initramfs import EXEC_BEGIN, exec_command_line


def virtkit(*args, stdin=subprocess.DEVNULL, timeout=900):
    return subprocess.run([sys.executable, "-m", "virtkit.cli", "run", *args], capture_output=True, text=True,
                          stdin=stdin, timeout=timeout)


@pytest.fixture
def kernel(tmp_path):
    return payload_image(tmp_path / "Image", POWEROFF)


def bad(args, match):
    p = virtkit(*args)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    assert match in p.stderr, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("virtkit: error:")]
    assert len(errors) == 1, p.stderr


@pytest.mark.parametrize("args,match", [
    (["--kernel", "/nonexistent/Image"], "kernel: file '/nonexistent/Image' does not exist"),
    (["--initrd", "/nonexistent/initrd"], "initrd: file '/nonexistent/initrd' does not exist"),
    (["--bios", "/nonexistent/fw.bin"], "firmware: file '/nonexistent/fw.bin' does not exist"),
    (["--initrd", "/etc/passwd"], "not an initramfs: it is a text file"),
    (["--bios", "/etc/passwd"], "is a text file, not firmware"),
    (["--disk", "/nonexistent/disk.img"], "is neither a file nor POOL/VOLUME"),
    (["--disk", "x.img,rx"], "unknown option 'rx'"),
    (["--net", "eth0"], "--net 'eth0': expected tap:NAME"),
    (["--net", "tap:this-name-is-far-too-long"], "bad TAP interface name"),
    (["--cpus", "0"], "cpus: 0 is out of range 1..64"),
    (["--cpus", "9"], "cpus: 9 is out of range 1..8 for board riscv64-virt"),
    (["--mem", "lots"], "bad --mem 'lots'"),
    (["--mem", "8"], "memory: 8M is out of range: board riscv64-virt takes 16M to 16G"),
    (["--mem", "16M"], "RAM too small"),
    (["--mem", "1000K"], "in whole MiB"),
    (["--exec", "  "], "exec: empty command"),
    (["--timeout", "-1"], "bad --timeout '-1'"),
    (["--max-insns", "10"], "only apply to bare-metal runs"),
    (["--name", "bad/name"], "bad VM name 'bad/name'"),
    (["--board", "pc"], "board: unknown board 'pc' (known: riscv64-spike, riscv64-virt, x86_64-microvm)"),
    (["--engine", "qemu"], "engine: unknown engine 'qemu'"),
    (["--config", "/nonexistent/vm.toml"], "config file '/nonexistent/vm.toml' does not exist"),
])
def test_bad_arguments_are_one_line_errors(kernel, args, match):
    if not FW_JUMP.exists():
        pytest.skip("needs Debian package opensbi")
    if "--kernel" not in args:
        args = ["--kernel", kernel, *args]
    bad(args, match)


def test_corrupt_kernel_and_firmware(tmp_path, kernel):
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00" * 4096)
    bad(["--kernel", str(junk)], "neither a RISC-V Linux Image")
    bad(["--kernel", "/etc/passwd"], "is a text file: neither a RISC-V Linux Image")
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(3 << 20))
    bad(["--kernel", kernel, "--bios", str(big)], "larger than the 2 MiB")


def test_disk_locked_by_another_process(tmp_path, kernel):
    """Another process holds the image with QEMU's locks (as a VM or qemu-nbd would): refused before the boot."""
    import os

    from virtkit.storage import lock

    img = tmp_path / "d.img"
    img.write_bytes(bytes(1 << 20))
    fd = os.open(img, os.O_RDWR)
    try:
        lock.acquire(fd, *lock.WRITER)
        bad(["--kernel", kernel, "--disk", f"{img},format=raw"], "locked by another VM or process")
    finally:
        os.close(fd)


@pytest.mark.slow
def test_poweroff_exit_0_and_json(kernel):
    if not FW_JUMP.exists():
        pytest.skip("needs Debian package opensbi")
    p = virtkit("--kernel", kernel, "--json", "--timeout", "600")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["reason"] == "poweroff" and out["exit_status"] == 0
    assert out["stats"]["mmio"]["sifive_test"] == 1


@pytest.mark.slow
def test_guest_failure_is_exit_status(tmp_path):
    if not FW_JUMP.exists():
        pytest.skip("needs Debian package opensbi")
    p = virtkit("--kernel", payload_image(tmp_path / "Image", FAIL_7), "--timeout", "600")
    assert p.returncode == 7
    assert "OpenSBI" in p.stdout


def test_exec_filter_separates_boot_log_from_output():
    out = bytearray()
    f = ExecFilter(out.extend)
    for chunk in [b"OpenSBI v1.1\r\n[    0.0] Linux", b" booting\r\n", EXEC_BEGIN.encode() + b"\r\nhel",
                  b"lo\r\nworld\r\nvirtkit-exit-status: 3\r\n[ 9.9] reboot: Power down\r\n"]:
        f(chunk)
    assert bytes(out) == b"hello\nworld\n" and f.status == 3
    out.clear()
    f = ExecFilter(out.extend)
    f(EXEC_BEGIN.encode() + b"\r\nno newline at the endvirtkit-exit-status: 0\r\n")
    assert bytes(out) == b"no newline at the end" and f.status == 0


def test_exec_command_line_quotes():
    import base64

    word = exec_command_line("echo 'a b'; exit 3")
    assert word.startswith("virtkit.exec=")
    cmd = base64.b64decode(word.split("=", 1)[1]).decode()
    assert cmd == f"echo {EXEC_BEGIN}; eval 'echo '\\''a b'\\''; exit 3'"
    # the wrapped command really runs the original through sh
    p = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True)
    assert p.stdout == f"{EXEC_BEGIN}\na b\n" and p.returncode == 3
    with pytest.raises(ConfigError):
        exec_command_line("")


def test_help_lists_options_escapes_ranges_and_examples():
    p = virtkit("--help")
    for opt in ("--disk", "--net", "--exec", "--cpus", "--mem", "--bios", "--stats", "--config", "--dump-config",
                "--detach", "--name"):
        assert opt in p.stdout
    assert "Ctrl-A x quit" in p.stdout and "--cpus 1..8" in p.stdout and "16M..16G" in p.stdout
    assert "examples:" in p.stdout and "--json prints one JSON document" in p.stdout


