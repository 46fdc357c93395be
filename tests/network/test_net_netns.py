"""Interop with the Linux network stack: namespaces as hosts on the switch's ports (needs root)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from tests.helpers import require_root, require_tool
from virtkit.network import control
from virtkit.network.netns import Netns, NetnsError, sh

TAG = f"{os.getpid() % 100000}"

SERVER = r"""
import socket, sys
socks = []
for port in map(int, sys.argv[1:]):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(8); socks.append(s)
print("ready", flush=True)
import select
while True:
    r, _, _ = select.select(socks, [], [])
    for s in r:
        c, _ = s.accept(); c.sendall(b"hello %d\n" % s.getsockname()[1]); c.close()
"""

# A VLAN-aware host without the kernel's 8021q: tagged ARP over AF_PACKET (VLAN tags come back in auxdata).
VLAN_ARP = r"""
import socket, struct, sys, time
ifname, vid, pcp, my_ip, target = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((ifname, 3))
s.setsockopt(263, 8, 1)  # PACKET_AUXDATA
mac = s.getsockname()[4]
arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, socket.inet_aton(my_ip), bytes(6),
                  socket.inet_aton(target))
tci = (pcp << 13) | vid
s.send(b"\xff" * 6 + mac + struct.pack("!HHH", 0x8100, tci, 0x0806) + arp)
s.settimeout(0.5)
deadline = time.time() + 5
while time.time() < deadline:
    try:
        data, anc, _, addr = s.recvmsg(2000, socket.CMSG_SPACE(20))
    except socket.timeout:
        continue
    got_vid = None
    for lvl, typ, c in anc:
        if lvl == 263 and typ == 8:
            st, _, _, _, _, t, _ = struct.unpack_from("IIIHHHH", c)
            if st & 0x10:
                got_vid, frame = t & 0xFFF, data
    if got_vid is None and data[12:14] == b"\x81\x00":
        got_vid, frame = struct.unpack_from("!H", data, 14)[0] & 0xFFF, data[:12] + data[16:]
    if got_vid == vid and frame[12:14] == b"\x08\x06" and frame[20:22] == b"\x00\x02" \
            and frame[28:32] == socket.inet_aton(target):
        print("reply", vid, frame[22:28].hex())
        sys.exit(0)
print("no reply")
sys.exit(1)
"""

# Send N bytes, expect the server's SHA-256 of what it received back.
BULK_SERVER = r"""
import hashlib, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5001)); s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
h = hashlib.sha256()
while True:
    d = c.recv(1 << 16)
    if not d:
        break
    h.update(d)
c.sendall(h.hexdigest().encode())
c.close()
"""

BULK_CLIENT = r"""
import hashlib, os, socket, sys
data = os.urandom(int(sys.argv[2]))
c = socket.create_connection((sys.argv[1], 5001), timeout=30)
c.sendall(data)
c.shutdown(socket.SHUT_WR)
got = c.recv(100).decode()
print("ok" if got == hashlib.sha256(data).hexdigest() else "mismatch " + got)
"""

CLIENT = r"""
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    print(c.recv(100).decode().strip())
except OSError as e:
    print("failed", e); sys.exit(1)
"""


@pytest.fixture
def env(monkeypatch):
    require_root()
    require_tool("ip", "ping")
    d = tempfile.mkdtemp(prefix="vkn")
    monkeypatch.setenv("VIRTKIT_NET_DIR", d)
    made: list[Netns] = []

    def ns(suffix: str) -> Netns:
        n = Netns(f"vk{TAG}{suffix}")
        made.append(n)
        return n

    yield ns
    for row in control.list_switches():
        if row["running"]:
            control.stop(row["name"])
    for n in made:
        n.close()
    shutil.rmtree(d, ignore_errors=True)


def host_port(sw: str, ns: Netns, suffix: str, addr: str, **port) -> str:
    """A namespace wired to a host:IF port of switch ``sw`` through a veth pair."""
    outside = ns.veth("eth0", f"vk{TAG}{suffix}", addr)
    control.request(sw, "port_add", spec=f"host:{outside}", **port)
    return outside


def test_access_vlans_ping_and_isolation(env):
    control.create("s")
    a, b, c = env("a"), env("b"), env("c")
    host_port("s", a, "a", "10.7.0.1/24", access=7)
    host_port("s", b, "b", "10.7.0.2/24", access=7)
    host_port("s", c, "c", "10.7.0.3/24", access=8)  # same subnet, other VLAN
    assert a.ping("10.7.0.2")
    assert b.ping("10.7.0.1", count=1)
    assert not c.ping("10.7.0.1", count=2)
    assert not a.ping("10.7.0.3", count=2)
    info = control.request("s", "show")
    assert {m["vlan"] for m in info["macs"]} <= {7, 8}
    assert any(m["vlan"] == 7 and m["port"] == f"vk{TAG}a" for m in info["macs"])


def test_tap_ports_moved_into_namespaces(env):
    control.create("s")
    a, b = env("ta"), env("tb")
    for ns, addr in ((a, "10.9.0.1/24"), (b, "10.9.0.2/24")):
        tap = f"vk{TAG}t{ns.name[-1]}"
        control.request("s", "port_add", spec=f"tap:{tap}", access=9)
        ns.adopt(tap, addr)
    assert a.ping("10.9.0.2")
    # a TCP stream between TAP ports crosses the switch as TSO super-frames with partial checksums
    c = env("tc")
    host_port("s", c, "tc", "10.9.0.3/24", access=9)  # a veth host: needs real frames, cut by the switch
    for ns, dst in ((b, "10.9.0.2"), (c, "10.9.0.3")):
        server = ns.popen(sys.executable, "-c", BULK_SERVER, stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout.readline().strip() == "ready"
            p = a.exec(sys.executable, "-c", BULK_CLIENT, dst, str(4 << 20), check=False, timeout=120)
            assert p.stdout.strip() == "ok", p.stdout + p.stderr
        finally:
            server.kill()
            server.wait()


def test_linux_vlan_subinterface_on_trunk_and_capture(env, tmp_path):
    require_tool("tshark")
    control.create("s")
    trunk_ns, acc = env("tr"), env("ac")
    host_port("s", trunk_ns, "tr", None, trunk="7,8")
    # skb priority 0 → PCP 5 on everything the sub-interface sends
    try:
        trunk_ns.vlan("eth0", 7, "10.70.0.1/24", egress_qos="0:5")
    except NetnsError as err:
        pytest.skip(f"the kernel has no 802.1Q VLAN devices (8021q): {err}")
    host_port("s", acc, "ac", "10.70.0.2/24", access=7)
    pcap = str(tmp_path / "trunk.pcapng")
    cid = control.request("s", "capture_start", port=f"vk{TAG}tr", path=pcap)["id"]
    assert trunk_ns.ping("10.70.0.2")
    assert acc.ping("10.70.0.1", count=1)
    frames = control.request("s", "capture_stop", id=cid)["frames"]
    assert frames > 0
    out = subprocess.run(["tshark", "-r", pcap, "-Y", "icmp", "-T", "fields", "-e", "eth.type", "-e", "vlan.id",
                          "-e", "vlan.priority", "-e", "icmp.type"],
                         capture_output=True, text=True, timeout=60, check=True).stdout.split("\n")
    rows = [line.split("\t") for line in out if line]
    assert rows, "no ICMP in the trunk capture"
    for etype, vid, _pcp, _ in rows:
        assert etype.split(",")[0] == "0x8100" and vid == "7"
    # echo requests sent by the sub-interface carry PCP 5 (egress-qos-map), kept through the capture
    assert any(r[2] == "5" and r[3] == "8" for r in rows)


def test_security_group_denies_port_80_allows_22(env):
    control.create("s")
    control.request("s", "group_create", group="web", vlan=20, default="deny")
    control.request("s", "rule_add", group="web", action="deny", proto="tcp", ports="80")
    control.request("s", "rule_add", group="web", action="allow", proto="tcp", ports="22")
    control.request("s", "rule_add", group="web", action="allow", proto="icmp")
    srv, cli = env("sv"), env("cl")
    host_port("s", srv, "sv", "10.20.0.1/24", group="web")
    host_port("s", cli, "cl", "10.20.0.2/24", access=20)
    server = srv.popen(sys.executable, "-c", SERVER, "22", "80", stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        ok = cli.exec(sys.executable, "-c", CLIENT, "10.20.0.1", "22", "5", check=False)
        assert ok.stdout.strip() == "hello 22", ok.stdout + ok.stderr
        denied = cli.exec(sys.executable, "-c", CLIENT, "10.20.0.1", "80", "2", check=False)
        assert denied.returncode == 1 and "failed" in denied.stdout
    finally:
        server.kill()
        server.wait()
    info = control.request("s", "show")
    port = next(p for p in info["ports"] if p["name"] == f"vk{TAG}sv")
    assert port["stats"]["drops"]["security_group"] > 0
    assert port["group"] == "web" and port["vlan"] == 20


def test_two_switches_over_udp_carry_vlan7(env):
    control.create("left")
    control.create("right")
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    p1, p2 = (s.getsockname()[1] for s in socks)
    for s in socks:
        s.close()
    control.request("left", "port_add", spec=f"udp:{p1}:127.0.0.1:{p2}")
    control.request("right", "port_add", spec=f"udp:{p2}:127.0.0.1:{p1}")
    a, b, c = env("ua"), env("ub"), env("uc")
    host_port("left", a, "ua", "10.77.0.1/24", access=7)
    host_port("right", b, "ub", "10.77.0.2/24", access=7)
    host_port("right", c, "uc", "10.77.0.3/24", access=8)
    assert a.ping("10.77.0.2")
    assert not a.ping("10.77.0.3", count=2)
    time.sleep(0.1)
    link = next(p for p in control.request("left", "show")["ports"] if p["kind"] == "udp")
    assert link["stats"]["tx_frames"] > 0 and link["stats"]["rx_frames"] > 0


def test_tagged_host_on_trunk_reaches_access_port_and_capture_keeps_tags(env, tmp_path):
    """A host sending 802.1Q-tagged frames (VID 7, PCP 5) on a trunk gets ARP answers from a VLAN 7 access port."""
    require_tool("tshark")
    control.create("s")
    trunk_ns, acc, other = env("tg"), env("ag"), env("og")
    host_port("s", trunk_ns, "tg", None, trunk="7,8")
    host_port("s", acc, "ag", "10.71.0.2/24", access=7)
    host_port("s", other, "og", "10.71.0.2/24", access=8)  # same address on VLAN 8: must not answer
    pcap = str(tmp_path / "trunk.pcapng")
    cid = control.request("s", "capture_start", port=f"vk{TAG}tg", path=pcap)["id"]
    p = trunk_ns.exec(sys.executable, "-c", VLAN_ARP, "eth0", "7", "5", "10.71.0.1", "10.71.0.2", check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    acc_mac = acc.exec("cat", "/sys/class/net/eth0/address").stdout.strip().replace(":", "")
    assert p.stdout.split()[2] == acc_mac  # the VLAN 7 host answered, not the VLAN 8 one
    control.request("s", "capture_stop", id=cid)
    out = subprocess.run(["tshark", "-r", pcap, "-Y", "arp", "-T", "fields", "-e", "eth.type", "-e", "vlan.id",
                          "-e", "vlan.priority", "-e", "arp.opcode"],
                         capture_output=True, text=True, timeout=60, check=True).stdout.split("\n")
    rows = [line.split("\t") for line in out if line]
    assert ["0x8100", "7", "5", "1"] in [[r[0].split(",")[0], *r[1:]] for r in rows]  # request: PCP 5 kept
    assert any(r[0].split(",")[0] == "0x8100" and r[1] == "7" and r[3] == "2" for r in rows)  # tagged reply


def test_deleted_host_interface_goes_down_and_comes_back(env):
    """Deleting a port's interface under the switch: the port is marked down, nothing spins, it returns."""
    control.create("s")
    ifname = f"vk{TAG}d0"
    sh("ip", "link", "add", ifname, "type", "veth", "peer", "name", f"vk{TAG}d1")
    try:
        sh("ip", "link", "set", ifname, "up")
        control.request("s", "port_add", spec=f"host:{ifname}")
        sh("ip", "link", "del", ifname)

        def down() -> bool:
            return next(p for p in control.request("s", "show")["ports"] if p["name"] == ifname)["down"]

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not down():
            time.sleep(0.1)
        assert down()
        sh("ip", "link", "add", ifname, "type", "veth", "peer", "name", f"vk{TAG}d1")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and down():
            time.sleep(0.2)
        assert not down()
        # restart while the interface is missing: the port is kept (not open) and opens once it exists
        sh("ip", "link", "del", ifname)
        control.stop("s")
        control.start("s")
        assert [p["name"] for p in control.request("s", "show")["failed"]] == [ifname]
        sh("ip", "link", "add", ifname, "type", "veth", "peer", "name", f"vk{TAG}d1")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and control.request("s", "show")["failed"]:
            time.sleep(0.2)
        assert ifname in [p["name"] for p in control.request("s", "show")["ports"]]
    finally:
        sh("ip", "link", "del", ifname, check=False)


def test_tap_datapath_forwards_counts_and_yields_to_captures(env, tmp_path):
    """Between TAP ports known unicast goes through the compiled datapath; counters stay exact and a capture
    (which needs the slow path) still sees every frame."""
    control.create("s")
    a, b = env("da"), env("db")
    taps = []
    for ns, addr in ((a, "10.11.0.1/24"), (b, "10.11.0.2/24")):
        tap = f"vk{TAG}d{ns.name[-1]}"
        control.request("s", "port_add", spec=f"tap:{tap}", access=1)
        ns.adopt(tap, addr)
        taps.append(tap)
    assert a.ping("10.11.0.2", count=2)
    p = a.exec("ping", "-c", "50", "-i", "0.01", "-W", "1", "10.11.0.2", check=False, timeout=60)
    assert p.returncode == 0, p.stdout
    info = control.request("s", "show")
    assert info["switch"]["datapath"]["fast_frames"] > 50
    ports = {q["name"]: q["stats"] for q in info["ports"]}
    pa, pb = ports[taps[0]], ports[taps[1]]
    assert pa["rx_frames"] == pb["tx_frames"] and pa["rx_bytes"] == pb["tx_bytes"]  # nothing dropped, all counted
    assert pb["rx_frames"] == pa["tx_frames"] and pb["rx_bytes"] == pa["tx_bytes"]
    pcap = str(tmp_path / "b.pcapng")
    cid = control.request("s", "capture_start", port=taps[1], path=pcap)["id"]
    p = a.exec("ping", "-c", "20", "-i", "0.01", "-W", "1", "10.11.0.2", check=False, timeout=60)
    assert p.returncode == 0, p.stdout
    frames = control.request("s", "capture_stop", id=cid)["frames"]
    assert frames >= 40  # 20 requests out of b's port, 20 replies into it
