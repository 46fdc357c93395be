"""``--mode trap``: full virtualization by trap and emulate. The unmodified kernel runs deprivileged in U-mode;
its privileged instructions trap to the monitor beside the core, which emulates them; its page tables are
shadowed. The same kernel and initramfs as every other mode boot to the command with 2 harts and compute
``md5sum /bin/busybox`` right; bad configurations are refused with a message."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.helpers import run_guest_exec, virtkit


@pytest.mark.slow
def test_linux_boots_deprivileged_with_two_harts_and_computes_right(guest_images):
    import gzip

    from virtkit.images.cpio import read_cpio

    p = run_guest_exec(guest_images, "nproc; md5sum /bin/busybox; dmesg | grep -c 'SBI implementation ID=0x766b'",
                       "--mode", "trap", "--bios", "builtin", "--cpus", "2", "--json")
    out = json.loads(p.stdout)
    assert out["exit_status"] == 0 and out["command_exit_status"] == 0, out["console"][-2000:]
    busybox = next(m.data for m in read_cpio(gzip.decompress(guest_images.initrd.read_bytes()))
                   if m.name == "bin/busybox")
    assert out["output"].splitlines() == ["2", f"{hashlib.md5(busybox).hexdigest()}  /bin/busybox", "1"]
    mon = out["stats"]["monitor"]
    assert mon["privileged_instructions"] > 10_000  # sstatus, sie, satp, sret, wfi, sfence.vma: each one a trap
    assert mon["shadow_fills"] > 1_000 and mon["guest_page_faults"] > 100 and mon["sbi_calls"] > 100
    assert out["stats"]["per_hart"][1] > 0


def test_trap_mode_refuses_what_it_cannot_be(tmp_path):
    fw = tmp_path / "fw.bin"
    fw.write_bytes(b"\x13" * 64)
    for args, msg in ((["--bios", str(fw)], "trap and emulate has no firmware in the guest"),
                      (["--cpu", "rv64,h=on"], "runs the guest without the H extension"),
                      (["--board", "riscv64-spike"], "builtin SBI needs an S-mode kernel on riscv64-virt")):
        p = virtkit("run", "--mode", "trap", *args, "--kernel", str(fw), "--exec", "true")
        assert p.returncode != 0 and msg in p.stderr, (args, p.stderr)
    p = virtkit("run", "--mode", "warp")
    assert p.returncode != 0 and "invalid choice: 'warp'" in p.stderr


@pytest.mark.slow
def test_a_deprivileged_guest_gives_its_shell(tmp_path, guest_images):
    """Detached, the deprivileged guest boots to its interactive shell, which runs what is typed on either
    hart (the busybox shell of the default initramfs), then powers off when told."""
    from tests.helpers.vmcli import console_log, guest, linux_env, shell, vk, wait_for

    envs = linux_env(tmp_path, guest_images)
    env = next(envs)
    try:
        args = [a if a != str(guest_images.firmware) else "builtin" for a in guest(env)]
        vk(env, "run", "-d", "--name", "tr", "--mode", "trap", "--cpus", "2", *args)
        wait_for(lambda: "virtkit:/#" in console_log(env, "tr"), 300, "the shell")
        out = shell(env, "tr", "md5sum /bin/busybox; nproc", "sums")
        assert "  /bin/busybox" in out and "\n2" in out.replace("\r", ""), out
        vk(env, "kill", "tr")
    finally:
        envs.close()
