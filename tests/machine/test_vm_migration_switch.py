"""A TCP connection stays up while its guest migrates: a Linux guest streams a counter with busybox ``nc``
to a host, through the virtkit switch (a network namespace on a switch port) or a TAP device; the guest
moves to another virtkit process, its new port announces its MAC (RARP), the switch learns it at once (or
the TAP's queue is handed over) and the host receives every number, in order, over the one connection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from tests.helpers import private_switches, require_root, require_tool
from tests.helpers.vmcli import console_log, guest, linux_env, shell, vk, wait_for

pytestmark = pytest.mark.slow
TAG = f"{os.getpid() % 100000}"

SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5000)); s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
print("connected", flush=True)
while True:
    d = c.recv(65536)
    if not d:
        print("closed", flush=True)
        break
    sys.stdout.write(d.decode()); sys.stdout.flush()
"""


@pytest.fixture
def env(tmp_path, guest_images, monkeypatch):
    require_root()
    require_tool("ip")
    with private_switches(monkeypatch, "vkm"):
        yield from linux_env(tmp_path, guest_images)


def test_a_tcp_stream_through_the_switch_survives_migration(env):
    from virtkit.network import control
    from virtkit.network.netns import Netns

    control.create("msw")
    ns = Netns(f"vkm{TAG}")
    srv = None
    try:
        outside = ns.veth("eth0", f"vkm{TAG}h", "10.78.0.1/24")
        control.request("msw", "port_add", spec=f"host:{outside}")
        srv = ns.popen(sys.executable, "-c", SERVER, stdout=subprocess.PIPE, text=True)
        assert srv.stdout.readline().strip() == "ready"
        vk(env, "run", "-d", "--name", "src", "--mem", "128M", *guest(env), "--net", "switch:msw")
        wait_for(lambda: "virtkit:/#" in console_log(env, "src"), 300, "the shell")
        shell(env, "src", "ip addr add 10.78.0.2/24 dev eth0 && ip link set eth0 up", "up")
        shell(env, "src", "(i=0; while :; do i=$((i+1)); echo $i; sleep 0.05; done | nc 10.78.0.1 5000) &", "nc")
        assert srv.stdout.readline().strip() == "connected"
        got: list[str] = []

        def reader() -> None:
            for line in srv.stdout:
                got.append(line.strip())

        threading.Thread(target=reader, daemon=True).start()
        wait_for(lambda: len(got) >= 20, 60, "the stream")
        tgt = json.loads(vk(env, "run", "--incoming", "tcp:127.0.0.1:0", "-d", "--name", "dst", "--json").stdout)
        st = json.loads(vk(env, "migrate", "src", f"tcp:127.0.0.1:{tgt['port']}", "--token", tgt["token"],
                           "--json").stdout)
        assert st["state"] == "completed", st
        at_switch = len(got)
        wait_for(lambda: len(got) >= at_switch + 40, 120, "the stream after the migration")
        assert "closed" not in got  # one connection all along
        nums = [int(x) for x in got[:at_switch + 40]]
        assert nums == list(range(1, len(nums) + 1))  # nothing lost, nothing twice, in order
        ps = {v["name"]: v for v in json.loads(vk(env, "ps", "--json").stdout)}
        assert "src" not in ps and ps["dst"]["state"] == "running"
        show = control.request("msw", "show")  # the source had the switch drop its port before "completed"
        vm_ports = [p["name"] for p in show["ports"] if outside not in p["name"]]
        assert len(vm_ports) == 1, show["ports"]  # the source's port is gone, the target's is there
        assert any(m["port"] == vm_ports[0] for m in show["macs"]), show["macs"]  # the guest's MAC learned on it
    finally:
        if srv is not None:
            srv.kill()
        ns.close()


def _stream_through(env, srv, name: str) -> list[str]:
    """Start the guest's counter stream to the server; a list that fills with what the server receives."""
    shell(env, name, "(i=0; while :; do i=$((i+1)); echo $i; sleep 0.05; done | nc 10.79.0.1 5000) &", "nc")
    assert srv.stdout.readline().strip() == "connected"
    got: list[str] = []

    def reader() -> None:
        for line in srv.stdout:
            got.append(line.strip())

    threading.Thread(target=reader, daemon=True).start()
    wait_for(lambda: len(got) >= 20, 60, "the stream")
    return got


def test_a_tap_nic_is_handed_over_on_one_host(env):
    """``--net tap:NAME``: the target opens a second, detached queue of the same multi-queue TAP; at the
    switch-over the source detaches its queue and the target attaches its own. The host's address on the
    TAP and a TCP connection through it stay; a TAP made without multi_queue is refused up front."""
    tap = f"vkt{TAG}"
    plain = f"vkp{TAG}"
    srv = None
    try:
        vk(env, "run", "-d", "--name", "src", "--mem", "128M", *guest(env), "--net", f"tap:{tap}")
        subprocess.run(["ip", "addr", "add", "10.79.0.1/24", "dev", tap], check=True)
        subprocess.run(["ip", "link", "set", tap, "up"], check=True)
        assert "multi_queue" in subprocess.run(["ip", "-d", "link", "show", tap], capture_output=True,
                                               text=True).stdout
        srv = subprocess.Popen([sys.executable, "-c", SERVER.replace("0.0.0.0", "10.79.0.1")],
                               stdout=subprocess.PIPE, text=True)
        assert srv.stdout.readline().strip() == "ready"
        wait_for(lambda: "virtkit:/#" in console_log(env, "src"), 300, "the shell")
        shell(env, "src", "ip addr add 10.79.0.2/24 dev eth0 && ip link set eth0 up", "up")
        got = _stream_through(env, srv, "src")
        tgt = json.loads(vk(env, "run", "--incoming", "tcp:127.0.0.1:0", "-d", "--name", "dst", "--json").stdout)
        st = json.loads(vk(env, "migrate", "src", f"tcp:127.0.0.1:{tgt['port']}", "--token", tgt["token"],
                           "--json").stdout)
        assert st["state"] == "completed", st
        at_switch = len(got)
        wait_for(lambda: len(got) >= at_switch + 40, 120, "the stream after the migration")
        assert "closed" not in got
        nums = [int(x) for x in got[:at_switch + 40]]
        assert nums == list(range(1, len(nums) + 1))
        assert "10.79.0.1/24" in subprocess.run(["ip", "addr", "show", tap], capture_output=True, text=True).stdout
        vk(env, "kill", "dst")
        # a TAP the admin made without multi_queue: migrating it is refused, the VM runs on
        subprocess.run(["ip", "tuntap", "add", "dev", plain, "mode", "tap"], check=True)
        vk(env, "run", "-d", "--name", "p1", "--mem", "64M", *guest(env), "--net", f"tap:{plain}")
        tgt = json.loads(vk(env, "run", "--incoming", "tcp:127.0.0.1:0", "-d", "--name", "p2", "--json").stdout)
        p = vk(env, "migrate", "p1", f"tcp:127.0.0.1:{tgt['port']}", "--token", tgt["token"], "--json",
               check=False)
        assert p.returncode != 0 and "not multi-queue" in json.loads(p.stdout)["error"]
        assert any(v["name"] == "p1" and v["state"] == "running" for v in json.loads(vk(env, "ps", "--json").stdout))
    finally:
        if srv is not None:
            srv.kill()
        subprocess.run(["ip", "link", "del", plain], capture_output=True)
