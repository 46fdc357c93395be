"""Nested virtualization on the H extension: the default Linux guest, booted with ``--cpu rv64,h=on``, finds
the hypervisor extension, starts its own KVM, and ``kvm-hello`` (a small VMM on the KVM API,
``virtkit/images/nested/``) runs a guest of its own in VS-mode, which prints its marker through SBI calls the
guest's KVM hands to kvm-hello and shuts down. Under OpenSBI and under the builtin SBI; the engine counts
what the nested guest cost: its ecalls from VS-mode and the G-stage faults of the pages KVM maps on demand."""

from __future__ import annotations

import json

import pytest

from tests.helpers import require_tool, run_guest_exec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nested_guest(guest_images, tmp_path_factory):
    """The default guest with the nested kit appended to its initramfs."""
    from dataclasses import replace
    from pathlib import Path

    from virtkit.images.nested import initrd_with_kit

    require_tool("riscv64-linux-gnu-gcc")
    initrd = initrd_with_kit(Path(guest_images.initrd), tmp_path_factory.mktemp("nested") / "initrd.gz")
    return replace(guest_images, initrd=initrd)


@pytest.mark.parametrize("bios", ["opensbi", "builtin"])
def test_a_kvm_guest_inside_the_guest_prints_its_marker(nested_guest, bios):
    from virtkit.images.nested import MARKER

    extra = ["--bios", "builtin", "--cpus", "2"] if bios == "builtin" else []
    p = run_guest_exec(nested_guest, "dmesg | grep -c 'kvm \\[1\\]: hypervisor extension available'; "
                       "kvm-hello /lib/nested/payload.bin", "--cpu", "rv64,h=on", *extra, "--json")
    out = json.loads(p.stdout)
    assert out["exit_status"] == 0, out["console"][-3000:]
    lines = out["output"].splitlines()
    assert lines[0] == "1" and MARKER in lines, out["output"]
    assert any(line.startswith("kvm-hello: the guest shut down after") for line in lines), out["output"]
    traps = out["stats"]["traps_by_cause"]
    assert traps["ecall from VS"] >= len(MARKER)  # a putchar each, then the shutdown
    assert traps["store/AMO guest-page fault"] >= 64  # the payload's 64 pages, each mapped by KVM on its fault


def test_without_the_extension_the_guest_has_no_kvm(nested_guest):
    p = run_guest_exec(nested_guest, "grep isa /proc/cpuinfo; kvm-hello /lib/nested/payload.bin; echo rc=$?",
                       "--json")
    out = json.loads(p.stdout)
    assert [line.split(":")[1].strip() for line in out["output"].splitlines() if line.startswith("isa")] == [
        "rv64imafdc"], out["output"]
    assert "kvm-hello: /dev/kvm: No such file or directory" in out["output"] and "rc=1" in out["output"]


def test_virtkit_modes_runs_the_command_in_a_guest_of_the_guest(guest_images):
    """The nested row of ``virtkit modes``: the same kernel and initramfs boot as a KVM guest inside the
    guest and run the command; its output equals the paravirtual guest's, and the counters show what the
    inner guest cost (its SBI calls are ecalls from VS-mode, its memory arrives by guest-page faults)."""
    from tests.helpers import virtkit

    p = virtkit("modes", "--mode", "paravirt", "--mode", "nested", "--exec", "md5sum /bin/busybox", "--json",
                "--kernel", str(guest_images.kernel), "--initrd", str(guest_images.initrd), timeout=900)
    assert p.returncode == 0, p.stderr
    rows = {r["mode"]: r for r in json.loads(p.stdout)["modes"]}
    para, nested = rows["paravirt"], rows["nested"]
    assert nested["output"] == para["output"] and para["output"].endswith("  /bin/busybox\n"), rows
    traps = nested["traps_by_cause"]
    assert traps["ecall from VS"] > 100 and traps["store/AMO guest-page fault"] > 100
    assert traps["virtual instruction"] > 0
    assert "ecall from VS" not in para["traps_by_cause"]
    assert nested["instructions"] > para["instructions"]


def test_a_failing_command_in_the_inner_guest_fails_the_mode(guest_images):
    from tests.helpers import virtkit

    p = virtkit("modes", "--mode", "nested", "--exec", "exit 3", "--kernel", str(guest_images.kernel),
                "--initrd", str(guest_images.initrd), timeout=900)
    assert p.returncode != 0 and "ended with status 3 in the inner guest" in p.stderr, p.stderr
