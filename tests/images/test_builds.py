"""The real recipe outputs (built once per machine by the guest_images fixture): the kernel's final
.config has every fragment option, busybox is a static RISC-V executable, the initramfs holds it."""

from __future__ import annotations

import pytest

from virtkit import images
from virtkit.images.busybox import check_static_riscv
from virtkit.images.cpio import read_cpio
from virtkit.images.kernel import FRAGMENT, config_mismatches, parse_config

pytestmark = pytest.mark.slow


def test_kernel_config_has_every_fragment_option(guest_images):
    final = parse_config((guest_images.kernel.parent / "config").read_text())
    assert config_mismatches(parse_config(FRAGMENT.read_text()), final) == []
    assert final.get("CONFIG_MODULES", "n") == "n"


def test_kernel_image_header(guest_images):
    head = guest_images.kernel.read_bytes()[:64]
    assert head[48:56] == b"RISCV\0\0\0" and head[56:60] == b"RSC\x05"  # riscv Image magic and magic2


def test_busybox_static_and_initramfs_contents(guest_images):
    bb = images.image_path("busybox")
    check_static_riscv(bb)
    members = {m.name: m for m in read_cpio(guest_images.initrd.read_bytes())}
    assert members["bin/busybox"].data == bb.read_bytes()
    for applet in ("bin/sh", "bin/mount", "sbin/poweroff", "bin/base64", "bin/cttyhack"):
        assert members[applet].kind == "symlink", applet


def test_second_build_is_served_from_the_cache(guest_images):
    key = images.recipe_key("kernel")
    before = (guest_images.kernel.parent / "image.json").read_text()
    paths = images.build(["kernel", "initramfs"], progress=False)
    assert paths["kernel"] == guest_images.kernel and paths["initramfs"] == guest_images.initrd
    assert (guest_images.kernel.parent / "image.json").read_text() == before
    assert key in str(guest_images.kernel)
    built = {r.name: r.built for r in images.list_images()}
    assert {n: built[n] for n in ("kernel", "busybox", "initramfs", "firmware")} == {
        "kernel": True, "busybox": True, "initramfs": True, "firmware": True}
    assert {"kernel-x86_64", "initramfs-x86_64"} <= set(built)  # (built or not: the KVM tests build them)


def test_cli_build_json_and_path(guest_images, capsys):
    import json

    from virtkit.cli import main

    assert main(["images", "build", "--json", "kernel", "initramfs"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kernel"] == str(guest_images.kernel) and out["initramfs"] == str(guest_images.initrd)
    assert "busybox" in out  # dependencies are built (or found) too
    assert main(["images", "path", "firmware"]) == 0
    assert capsys.readouterr().out.strip() == str(guest_images.firmware)
