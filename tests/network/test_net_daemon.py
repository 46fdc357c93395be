"""The switch process end to end without root: VM ports (SwitchPort), UDP links, capture, persistence, CLI."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import private_switches
from virtkit.cli import main
from virtkit.errors import ConfigError, VirtkitError
from virtkit.network import control
from virtkit.network import ethernet as eth
from virtkit.network.pcapng import read
from virtkit.network.switchport import SwitchPort


def mac(n: int) -> bytes:
    return bytes((2, 0, 0, 0, 0, n))


def frame(dst: bytes, src: bytes, tag: int = 0, vid: int | None = None, pcp: int = 0) -> bytes:
    return eth.build(dst, src, 0x88B5, tag.to_bytes(4, "big") + bytes(42), vid, pcp)


def recv_all(port, want: int = 1, wait: float = 5.0) -> list[bytes]:
    """Frames that reach ``port`` (stops once ``want`` arrived, or after ``wait`` seconds)."""
    out: list[bytes] = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and len(out) < want:
        f = port.recv()
        if f is None:
            time.sleep(0.005)
            continue
        out.append(f)
    return out


def quiet(port, wait: float = 0.5) -> list[bytes]:
    """Frames arriving at ``port`` in ``wait`` seconds (for checking that nothing leaks)."""
    return recv_all(port, want=10**9, wait=wait)


def free_udp_ports(n: int) -> list[int]:
    """Port numbers free right now on 127.0.0.1 (so parallel test runs do not collide)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_connected(switch: str, *ports: str) -> None:
    """Wait until the switch has accepted the VMs on these vm: ports."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        info = {p["name"]: p for p in control.request(switch, "show")["ports"]}
        if all(info[p].get("connected") for p in ports):
            return
        time.sleep(0.05)
    raise AssertionError(f"VMs not connected to {ports}")


@pytest.fixture
def netdir(monkeypatch):
    with private_switches(monkeypatch) as d:
        yield d


def test_vm_ports_vlans_and_learning(netdir):
    control.create("lab")
    a = SwitchPort("lab", vlan=7)
    b = SwitchPort("lab", vlan=7)
    c = SwitchPort("lab", vlan=8)
    a.send(frame(eth.BROADCAST, mac(1), 1))
    assert [f[14:18] for f in recv_all(b)] == [b"\0\0\0\1"]
    b.send(frame(mac(1), mac(2), 2))
    assert recv_all(a)[0][14:18] == b"\0\0\0\2"
    assert quiet(c) == []  # VLAN 8 never sees VLAN 7
    info = control.request("lab", "show")
    assert {(m["vlan"], m["mac"]) for m in info["macs"]} == {(7, "02:00:00:00:00:01"), (7, "02:00:00:00:00:02")}
    names = {p["name"] for p in info["ports"]}
    a.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and a.port_name in names:
        names = {p["name"] for p in control.request("lab", "show")["ports"]}
        time.sleep(0.05)
    assert a.port_name not in names  # an attached port leaves with its VM
    for p in (b, c):
        p.close()


def test_persistent_vm_port_and_restart_restores_config(netdir):
    control.create("lab", ageing=60)
    control.request("lab", "port_add", spec="vm:web", access=7)
    control.request("lab", "port_add", spec="vm:up", trunk="7,9", native=9, name="uplink")
    control.request("lab", "group_create", group="g1", vlan=20, default="deny")
    control.request("lab", "rule_add", group="g1", action="allow", proto="tcp", ports="22", source="10.0.0.0/8")
    before = json.loads((control.statedir("lab") / "config.json").read_text())
    control.stop("lab")
    control.start("lab")
    after = json.loads((control.statedir("lab") / "config.json").read_text())
    assert after == before
    assert after["ageing"] == 60
    web = SwitchPort("lab", port="web")
    up = SwitchPort("lab", port="up")
    wait_connected("lab", "vm-web", "uplink")
    web.send(frame(eth.BROADCAST, mac(1), 5, pcp=0))
    got = recv_all(up)
    assert got and eth.parse(got[0]).vid == 7
    up.send(frame(eth.BROADCAST, mac(2), 6))  # untagged on the trunk: native VLAN 9, not 7
    assert quiet(web) == []
    web.close()
    up.close()


def test_priority_queues_when_a_vm_does_not_read(netdir):
    """A VM that stops reading congests its port: queued high-PCP frames go out before older low-PCP ones."""
    control.create("lab", storm_pps=0)
    rx = SwitchPort("lab", vlan=1)
    tx = SwitchPort("lab", vlan=1)
    rx.send(frame(eth.BROADCAST, mac(2), 0))
    tx.send(frame(eth.BROADCAST, mac(1), 0))
    recv_all(tx)
    recv_all(rx)
    n_low = 3000

    def send(f: bytes) -> None:  # a sender that waits for room instead of dropping
        while True:
            try:
                tx.sock.send(f)
                return
            except BlockingIOError:
                select.select([], [tx.sock], [], 1.0)

    for i in range(n_low):
        send(frame(mac(2), mac(1), i, vid=0, pcp=1))
    time.sleep(0.5)
    for i in range(20):
        send(frame(mac(2), mac(1), 100000 + i, vid=0, pcp=7))
    time.sleep(0.5)
    got = recv_all(rx, want=n_low + 20, wait=10)
    tags = [int.from_bytes(f[14:18], "big") for f in got]
    high_pos = [i for i, t in enumerate(tags) if t >= 100000]
    assert len(high_pos) == 20
    first_high = high_pos[0]
    later_low = [t for t in tags[first_high:] if t < 100000]
    assert later_low, "high-PCP frames should overtake low-PCP frames queued before them"
    info = {p["name"]: p for p in control.request("lab", "show")["ports"]}
    assert info[rx.port_name]["stats"]["tx_frames"] + info[rx.port_name]["stats"]["drops"]["queue_full"] >= len(got)
    rx.close()
    tx.close()


def test_two_switches_linked_over_udp(netdir):
    control.create("left")
    control.create("right")
    p1, p2 = free_udp_ports(2)
    control.request("left", "port_add", spec=f"udp:{p1}:127.0.0.1:{p2}")
    control.request("right", "port_add", spec=f"udp:{p2}:127.0.0.1:{p1}")
    a = SwitchPort("left", vlan=7)
    b = SwitchPort("right", vlan=7)
    c = SwitchPort("right", vlan=8)
    a.send(frame(eth.BROADCAST, mac(1), 1))
    assert recv_all(b)[0][14:18] == b"\0\0\0\1"
    b.send(frame(mac(1), mac(2), 2))
    assert recv_all(a)[0][14:18] == b"\0\0\0\2"
    assert quiet(c) == []
    for p in (a, b, c):
        p.close()


def test_udp_loop_storm_control_keeps_switch_responsive(netdir):
    """Two UDP ports of one switch wired to each other: a broadcast loops; the loop guard cuts it, show answers."""
    control.create("loop", storm_pps=200)
    p1, p2 = free_udp_ports(2)
    control.request("loop", "port_add", spec=f"udp:{p1}:127.0.0.1:{p2}")
    control.request("loop", "port_add", spec=f"udp:{p2}:127.0.0.1:{p1}")
    a = SwitchPort("loop", vlan=1)
    b = SwitchPort("loop", vlan=1)
    a.send(frame(eth.BROADCAST, mac(1), 1))
    cut = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not cut:
        time.sleep(0.2)
        info = control.request("loop", "show")
        cut = sum(p["stats"]["drops"]["storm"] + p["stats"]["drops"]["loop"] for p in info["ports"])
    assert cut > 0
    while b.recv() is not None:
        pass
    b.send(frame(mac(1), mac(2), 2))  # a known unicast still gets through
    assert any(f[14:18] == b"\0\0\0\2" for f in recv_all(a, want=10**6, wait=1.0))
    a.close()
    b.close()


def test_capture_port_and_vlan(netdir):
    control.create("cap")
    control.request("cap", "port_add", spec="vm:t", trunk="all")
    t = SwitchPort("cap", port="t")
    a = SwitchPort("cap", vlan=7)
    wait_connected("cap", "vm-t")
    pcap_t = f"{netdir}/t.pcapng"
    pcap_v = f"{netdir}/v.pcapng"
    c1 = control.request("cap", "capture_start", port="vm-t", path=pcap_t)["id"]
    c2 = control.request("cap", "capture_start", vlan=7, path=pcap_v)["id"]
    a.send(frame(eth.BROADCAST, mac(1), 1, vid=0, pcp=5))
    recv_all(t)
    assert control.request("cap", "capture_stop", id=c1)["frames"] == 1
    assert control.request("cap", "capture_stop", id=c2)["frames"] == 1
    for path in (pcap_t, pcap_v):
        (_, f), = read(path)
        p = eth.parse(f)
        assert (p.vid, p.pcp) == (7, 5)
    with pytest.raises(VirtkitError, match="exactly one"):
        control.request("cap", "capture_start", path=pcap_t)
    with pytest.raises(VirtkitError, match="no port"):
        control.request("cap", "capture_start", port="nope", path=pcap_t)
    t.close()
    a.close()


def test_control_rejects_malformed_requests(netdir):
    control.create("bad")
    for op, args, msg in [
        ("frobnicate", {}, "unknown control request"),
        ("port_add", {"spec": "tap"}, "bad port spec"),
        ("port_add", {"spec": "ftp:x"}, "unknown port kind"),
        ("port_add", {"spec": "udp:1:x"}, "bad UDP link"),
        ("port_add", {"spec": "udp:99999:127.0.0.1:1"}, "out of range"),
        ("port_add", {"spec": "vm:a", "access": 4095}, "1-4094"),
        ("port_add", {"spec": "vm:a", "trunk": "1-x"}, "bad VLAN list"),
        ("port_add", {"spec": "vm:a", "access": 3, "trunk": "4"}, "not both"),
        ("port_add", {"spec": "vm:a", "group": "nope"}, "no security group"),
        ("port_add", {"spec": "host:doesnotexist0"}, "no host interface"),
        ("port_set", {"name": "nope", "access": 3}, "no port"),
        ("group_create", {"group": "g", "vlan": 0}, "1-4094"),
        ("rule_add", {"group": "nope", "action": "allow"}, "no security group"),
        ("set", {"ageing": -1}, "out of range"),
    ]:
        with pytest.raises(VirtkitError, match=msg):
            control.request("bad", op, **args)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(control.statedir("bad") / "control.sock"))
    s.sendall(b"{not json\n")
    reply = json.loads(s.makefile().readline())
    s.close()
    assert reply["ok"] is False and "malformed" in reply["error"]
    assert control.is_running("bad")
    assert control.request("bad", "show")["ports"] == []  # nothing half-added


def test_broken_config_file_is_a_clear_error(netdir):
    control.create("cfg", start_daemon=False)
    path = control.statedir("cfg") / "config.json"
    for text, msg in [("{", "not valid JSON"), ("[]", "JSON object"),
                      ('{"name": "cfg", "ports": [{"name": "p", "spec": "vm:x", "mode": "trunk", "trunk": "0"}]}',
                       "bad VLAN list"),
                      ('{"name": "cfg", "ageing": "long"}', "must be a number"),
                      ('{"name": "cfg", "ports": [{"name": "p", "spec": "vm:x", "group": "g"}]}', "unknown group")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=msg):
            control.start("cfg")
    assert not control.is_running("cfg")


def test_netspec_parsing(netdir):
    from virtkit.machine.config import NicConfig  # --net is parsed once, into structured fields

    for bad in ("switch:lab,vlan", "switch:lab,vlan=0", "switch:lab,speed=10"):
        with pytest.raises(ConfigError):
            NicConfig.parse(bad)
    ghost = NicConfig.parse("switch:ghost,vlan=3")
    with pytest.raises(VirtkitError, match="no switch"):
        SwitchPort(ghost.name, vlan=ghost.vlan)
    control.create("lab")
    nic = NicConfig.parse("switch:lab,vlan=3")
    p = SwitchPort(nic.name, vlan=nic.vlan, port=nic.port, group=nic.group)
    assert p.port_name.startswith("vm-auto")
    p.close()


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "virtkit.cli", *argv], capture_output=True, text=True, timeout=60)


def test_cli_end_to_end_and_errors(netdir, capsys):
    assert main(["net", "create", "sw1", "--max-macs", "100"]) == 0
    assert main(["net", "port", "add", "sw1", "vm:a", "--trunk", "1,7,10-20", "--native", "1"]) == 0
    assert main(["net", "group", "create", "sw1", "web", "--vlan", "30"]) == 0
    assert main(["net", "group", "rule", "add", "sw1", "web", "deny", "--proto", "tcp", "--port", "80"]) == 0
    assert main(["net", "port", "add", "sw1", "vm:b", "--group", "web"]) == 0
    capsys.readouterr()
    assert main(["net", "show", "sw1", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    ports = {p["name"]: p for p in info["ports"]}
    assert ports["vm-a"]["trunk"] == "1,7,10-20" and ports["vm-b"]["vlan"] == 30
    assert main(["net", "show", "sw1"]) == 0
    assert "MAC table" in capsys.readouterr().out
    assert main(["net", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["running"] is True
    for argv, msg in [
        (["net", "port", "add", "sw1", "vm:c", "--trunk", "1-4095"], "1-4094"),
        (["net", "port", "add", "sw1", "vm:c", "--access", "seven"], "bad VLAN"),
        (["net", "port", "add", "sw1", "bogus"], "bad port spec"),
        (["net", "port", "set", "sw1", "vm-a"], "nothing to set"),
        (["net", "port", "set", "sw1", "vm-a", "--priority", "9"], "0-7"),
        (["net", "group", "rule", "add", "sw1", "web", "allow", "--source", "10.0.0.0/33"], "bad CIDR"),
        (["net", "group", "rule", "add", "sw1", "web", "allow", "--port", "80-70"], "bad port range"),
        (["net", "group", "rule", "remove", "sw1", "web", "5"], "no rule"),
        (["net", "group", "delete", "sw1", "web"], "used by"),
        (["net", "create", "sw1"], "already exists"),
        (["net", "create", "bad/name"], "bad switch name"),
        (["net", "create", "sw2", "--ageing", "soon"], "not a number"),
        (["net", "show", "ghost"], "no switch"),
        (["net", "capture", "sw1", "-w", "/tmp/x.pcapng"], "exactly one"),
    ]:
        p = run_cli(*argv)
        assert p.returncode == 1, (argv, p.stderr)
        assert msg in p.stderr and "Traceback" not in p.stderr, (argv, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1
    pcap = f"{netdir}/cli.pcapng"
    assert main(["net", "capture", "sw1", "--vlan", "30", "-w", pcap, "--duration", "0.3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == 0 and read(pcap) == []
    assert main(["net", "port", "set", "sw1", "vm-b", "--group", ""]) == 0
    assert main(["net", "group", "delete", "sw1", "web"]) == 0
    assert main(["net", "stop", "sw1"]) == 0
    p = run_cli("net", "show", "sw1")
    assert p.returncode == 1 and "not running" in p.stderr
    assert main(["net", "delete", "sw1"]) == 0


def test_switchport_survives_the_switch_stopping(netdir):
    """A VM's port whose switch stops sees a dead link (no frames, no exception, same fd), like a pulled cable."""
    control.create("gone")
    p = SwitchPort("gone", vlan=3)
    fd = p.fileno()
    control.stop("gone")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and p.connected:
        assert p.recv() is None
        time.sleep(0.05)
    assert not p.connected and p.fileno() == fd
    p.send(frame(eth.BROADCAST, mac(1)))
    assert p.recv() is None and p.dropped >= 1
    r, _, _ = select.select([p], [], [], 0.2)
    assert r == []  # not readable: an event loop polling it does not spin
    p.close()
