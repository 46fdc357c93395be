"""A real RISC-V Linux guest on virtkit's own storage and network: pool volumes, qcow2, the 802.1Q switch.

Slow: each test boots the default guest (OpenSBI + Linux + busybox) on the software engine.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests.helpers import require_root, require_tool, run_guest_exec

pytestmark = pytest.mark.slow
PATTERN = "virtkit-guest-wrote-this"


def vk(*args: str, env: dict) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "virtkit.cli", *args], capture_output=True, text=True, env=env)
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


# The guest writes a recognisable sector at 1 MiB and reads it back through the page cache bypass.
GUEST_WRITE = (f"printf '{PATTERN}' | dd of=/dev/vda bs=512 seek=2048 conv=sync,fsync 2>/dev/null && "
               "dd if=/dev/vda bs=512 skip=2048 count=1 iflag=direct 2>/dev/null | head -c 24; echo")


def test_guest_writes_a_mirrored_pool_volume(guest_images, tmp_path, monkeypatch):
    """`--disk POOL/VOL`: the guest's virtio-blk writes land on both mirror legs of a virtkit pool."""
    monkeypatch.setenv("VIRTKIT_POOLS_DIR", str(tmp_path / "pools"))
    env = dict(os.environ)
    devs = []
    for i in range(2):
        d = tmp_path / f"pv{i}.img"
        d.write_bytes(b"")
        os.truncate(d, 64 << 20)
        devs.append(str(d))
    vk("pool", "create", "tank", *devs, env=env)
    vk("volume", "create", "tank/vm0", "--size", "16M", "--layout", "mirror", env=env)
    p = run_guest_exec(guest_images, GUEST_WRITE, "--disk", "tank/vm0", env=env)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert PATTERN in p.stdout
    for d in devs:  # both legs hold the guest's sector
        assert PATTERN.encode() in open(d, "rb").read(), d
    from virtkit.storage import open_disk

    vol = open_disk("tank/vm0", read_only=True)
    buf = bytearray(512)
    vol.readinto(2048 * 512, buf)
    vol.close()
    assert bytes(buf[: len(PATTERN)]) == PATTERN.encode()


def test_guest_writes_a_qcow2_image_that_qemu_img_accepts(guest_images, tmp_path):
    """`--disk image.qcow2`: written by the guest through virtio-blk, checked and converted by qemu-img."""
    require_tool("qemu-img")
    img = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(img), "16M"], check=True)
    p = run_guest_exec(guest_images, GUEST_WRITE, "--disk", str(img))
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert PATTERN in p.stdout
    chk = subprocess.run(["qemu-img", "check", str(img)], capture_output=True, text=True)
    assert chk.returncode == 0, chk.stdout + chk.stderr
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(img), str(raw)], check=True)
    data = raw.read_bytes()
    assert data[2048 * 512: 2048 * 512 + len(PATTERN)] == PATTERN.encode()
    assert hashlib.sha256(data[: 2048 * 512]).digest() == hashlib.sha256(bytes(2048 * 512)).digest()


def test_guest_on_a_switch_access_port_pings_a_namespace(guest_images, monkeypatch):
    """`--net switch:NAME,vlan=7`: the guest and a network namespace on VLAN 7 reach each other; VLAN 8 is dark."""
    require_root()
    require_tool("ip", "ping")
    from virtkit.network import control
    from virtkit.network.netns import Netns

    tag = f"{os.getpid() % 10000}"
    d = tempfile.mkdtemp(prefix="vkg")
    monkeypatch.setenv("VIRTKIT_NET_DIR", d)
    made: list[Netns] = []
    try:
        control.create("gsw")
        for suffix, addr, vlan in (("h7", "10.77.0.1/24", 7), ("h8", "10.77.0.9/24", 8)):
            ns = Netns(f"vkg{tag}{suffix}")
            made.append(ns)
            outside = ns.veth("eth0", f"vkg{tag}{suffix}", addr)
            control.request("gsw", "port_add", spec=f"host:{outside}", access=vlan)
        env = dict(os.environ, VIRTKIT_CONTAINERS_DIR=os.path.join(d, "containers"))
        # a container on the same VLAN (virtkit container --net switch:...): VMs and containers share it
        with_container = shutil.which("busybox") is not None and "static" in subprocess.run(
            ["file", "-L", shutil.which("busybox")], capture_output=True, text=True).stdout
        check_ctr = ""
        if with_container:
            vk("image", "build", "-t", "busybox", "--busybox", env=env)
            vk("container", "run", "-d", "--name", "c7", "--net", "switch:gsw,vlan=7,ip=10.77.0.3/24", "busybox",
               "sleep", "600", env=env)
            check_ctr = " && ping -c 2 -W 10 10.77.0.3"
        p = run_guest_exec(guest_images, "ip addr add 10.77.0.2/24 dev eth0 && ip link set eth0 up && "
                                   f"ping -c 2 -W 10 10.77.0.1{check_ctr} && ! ping -c 1 -W 3 10.77.0.9",
                     "--net", "switch:gsw,vlan=7", env=env)
        assert p.returncode == 0, (p.stdout, p.stderr)
        assert " 0% packet loss" in p.stdout or "2 packets received" in p.stdout, p.stdout
        if with_container:  # and the container reaches the guest back
            ping = subprocess.run([sys.executable, "-m", "virtkit.cli", "container", "exec", "c7", "ping", "-c", "1",
                                   "-W", "2", "10.77.0.1"], capture_output=True, text=True, env=env)
            assert ping.returncode == 0, ping.stdout + ping.stderr
            assert "10.77.0.3: seq=" in p.stdout or p.stdout.count("packets received") >= 2, p.stdout
        info = control.request("gsw", "show")
        assert any(m["vlan"] == 7 for m in info["macs"]), info["macs"]  # the switch learned on VLAN 7
    finally:
        subprocess.run([sys.executable, "-m", "virtkit.cli", "container", "rm", "-f", "c7"], capture_output=True,
                       env=dict(os.environ, VIRTKIT_CONTAINERS_DIR=os.path.join(d, "containers")))
        for row in control.list_switches():
            if row["running"]:
                control.stop(row["name"])
        for ns in made:
            ns.close()
        shutil.rmtree(d, ignore_errors=True)


def test_guest_pings_a_namespace_through_an_emulated_ethoc_nic(guest_images, monkeypatch):
    """`--net switch:NAME,model=ethoc`: Linux's own ethoc driver on virtkit's emulated OpenCores MAC; its PHY
    brings the link up at 100 Mbit/s full duplex, frames cross the switch both ways."""
    require_root()
    require_tool("ip", "ping")
    from virtkit.network import control
    from virtkit.network.netns import Netns

    tag = f"{os.getpid() % 10000}"
    d = tempfile.mkdtemp(prefix="vke")
    monkeypatch.setenv("VIRTKIT_NET_DIR", d)
    ns = Netns(f"vke{tag}")
    try:
        control.create("esw")
        outside = ns.veth("eth0", f"vke{tag}h", "10.79.0.1/24")
        control.request("esw", "port_add", spec=f"host:{outside}", access=5)
        p = run_guest_exec(guest_images, "readlink /sys/class/net/eth0/device/driver; "
                           "cat /sys/class/net/eth0/address; ip addr add 10.79.0.2/24 "
                           "dev eth0 && ip link set eth0 up && sleep 1 && cat /sys/class/net/eth0/speed "
                           "/sys/class/net/eth0/duplex && ping -c 3 -W 10 10.79.0.1 | tail -2",
                           "--net", "switch:esw,vlan=5,model=ethoc,mac=52:54:00:e7:0c:01", "--json",
                           env=dict(os.environ))
        assert p.returncode == 0, p.stderr
        import json

        out = json.loads(p.stdout)
        lines = out["output"].splitlines()
        assert lines[0].endswith("/ethoc") and lines[1:4] == ["52:54:00:e7:0c:01", "100", "full"], out["output"]
        assert "3 packets received" in out["output"], out["output"]
        assert out["stats"]["mmio"].get("ethoc0", 0) > 0 and not any("virtio-net" in k for k in out["stats"]["mmio"])
    finally:
        for row in control.list_switches():
            if row["running"]:
                control.stop(row["name"])
        ns.close()
        shutil.rmtree(d, ignore_errors=True)
