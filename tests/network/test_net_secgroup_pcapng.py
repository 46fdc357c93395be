"""Security-group rules on real packet bytes, and pcapng files read back (by us and by tshark)."""

from __future__ import annotations

import ipaddress
import struct
import subprocess

import pytest

from tests.helpers import require_tool
from virtkit.errors import ConfigError
from virtkit.network import ethernet as eth
from virtkit.network.pcapng import PcapngError, PcapngWriter, read
from virtkit.network.secgroup import Group, Rule, ip_info, parse_cidr, parse_port_range

A = bytes.fromhex("020000000001")
B = bytes.fromhex("020000000002")


def ip4(src: str, dst: str, proto: int, sport: int = 0, dport: int = 0, flags: int = 0x02) -> bytes:
    l4 = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 0x50, flags, 1024, 0, 0) if proto == 6 else \
        struct.pack("!HHHH", sport, dport, 8, 0) if proto == 17 else bytes((8, 0, 0, 0, 0, 1, 0, 1))
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0,
                      ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return eth.build(B, A, 0x0800, hdr + l4)


def ip6(src: str, dst: str, proto: int, sport: int = 0, dport: int = 0) -> bytes:
    l4 = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 0x50, 2, 1024, 0, 0) if proto == 6 else \
        bytes((sport, dport, 0, 0)) + bytes(20)
    hdr = struct.pack("!IHBB16s16s", 0x60000000, len(l4), proto, 64,
                      ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed)
    return eth.build(B, A, 0x86DD, hdr + l4)


def test_ip_info():
    assert ip_info(ip4("10.0.0.1", "10.0.0.2", 6, 4000, 80))[:2] == (4, 6)
    assert ip_info(ip4("10.0.0.1", "10.0.0.2", 6, 4000, 80))[4:] == (4000, 80)
    assert ip_info(ip6("fd00::1", "fd00::2", 17, 1, 53))[0] == 6
    assert ip_info(b"\x00" * 20) is None
    assert ip_info(eth.build(B, A, 0x0806, bytes(28))) is None


def test_rules_first_match_default_deny():
    g = Group("web", 20, "deny", [Rule("deny", "tcp", 80, 80), Rule("allow", "tcp", 1, 1024, "10.0.0.0/8")])
    assert not g.admit(ip4("10.1.1.1", "10.0.0.2", 6, 5000, 80), 0)
    assert g.admit(ip4("10.1.1.1", "10.0.0.2", 6, 5000, 22), 0)
    assert not g.admit(ip4("192.168.1.1", "10.0.0.2", 6, 5000, 22), 0)  # source outside CIDR
    assert not g.admit(ip4("10.1.1.1", "10.0.0.2", 17, 5000, 53), 0)  # default deny
    assert g.admit(eth.build(eth.BROADCAST, A, 0x0806, bytes(28)), 0)  # ARP always
    assert g.admit(ip6("fe80::1", "ff02::1", 58, 135, 0), 0)  # NDP always
    assert not g.admit(ip6("fd00::1", "fd00::2", 58, 128, 0), 0)  # ICMPv6 echo: default deny
    assert g.denied == 4


def test_ipv6_cidr_and_icmp_rule():
    g = Group("v6", 30, "deny", [Rule("allow", "icmp"), Rule("allow", "tcp", 443, 443, "fd00::/16")])
    assert g.admit(ip6("fd00::1", "fd00::2", 58, 128, 0), 0)
    assert g.admit(ip6("fd00::1", "fd00::2", 6, 5555, 443), 0)
    assert not g.admit(ip6("2001:db8::1", "fd00::2", 6, 5555, 443), 0)
    assert not g.admit(ip4("10.0.0.1", "10.0.0.2", 6, 5555, 443), 0)  # a v6 rule never matches v4


def test_replies_to_own_connections_pass():
    g = Group("client", 20, "deny")
    assert not g.admit(ip4("10.0.0.9", "10.0.0.1", 6, 22, 40000), 0)
    g.outbound(ip4("10.0.0.1", "10.0.0.9", 6, 40000, 22), 0)
    assert g.admit(ip4("10.0.0.9", "10.0.0.1", 6, 22, 40000), 1)
    assert not g.admit(ip4("10.0.0.9", "10.0.0.1", 6, 23, 40000), 1)


@pytest.mark.parametrize("bad", [
    dict(action="maybe"), dict(action="allow", proto="sctp"), dict(action="allow", lo=5, hi=1),
    dict(action="allow", source="10.0.0.300/8"), dict(action="allow", source="fd00::/200"),
])
def test_bad_rules(bad):
    with pytest.raises(ConfigError):
        Rule(**bad)


def test_bad_inputs():
    for text in ("x", "1-", "70000", "5-1"):
        with pytest.raises(ConfigError):
            parse_port_range(text)
    assert parse_port_range("1000-2000") == (1000, 2000)
    assert parse_cidr("any") is None
    with pytest.raises(ConfigError):
        Group("a b", 5)
    with pytest.raises(ConfigError):
        Group("g", 4095)
    with pytest.raises(ConfigError):
        Group.from_dict({"name": "g", "vlan": "x"})
    with pytest.raises(ConfigError):
        Group.from_dict({"name": "g", "vlan": 5, "rules": [{"action": "allow", "ports": "1-x"}]})
    g = Group("g", 5, "allow", [Rule("deny", "udp", 53, 53, "fd00::/8")])
    assert Group.from_dict(g.as_dict()).as_dict() == g.as_dict()


def write_sample(path: str) -> list[bytes]:
    frames = [eth.build(eth.BROADCAST, A, 0x0806, bytes(28), vid=7, pcp=5),
              eth.build(B, A, 0x0800, bytes(47)),  # odd length: padding in the block
              eth.build(B, A, 0x0800, bytes(1500), vid=100, pcp=1, dei=1)]
    w = PcapngWriter(path, ifname="test")
    for i, f in enumerate(frames):
        w.write(f, outbound=bool(i % 2), ts=1700000000.25 + i)
    w.close()
    return frames


def test_pcapng_roundtrip(tmp_path):
    path = str(tmp_path / "c.pcapng")
    frames = write_sample(path)
    back = read(path)
    assert [f for _, f in back] == frames
    assert back[0][0] == 1700000000250000


def test_pcapng_reader_rejects_garbage(tmp_path):
    p = tmp_path / "bad.pcapng"
    p.write_bytes(b"\x0a\x0d\x0d\x0a\xff\xff")
    with pytest.raises(PcapngError):
        read(str(p))
    with pytest.raises(PcapngError):
        PcapngWriter(str(tmp_path / "nodir" / "x.pcapng"))


def test_tshark_reads_our_pcapng(tmp_path):
    require_tool("tshark")
    path = str(tmp_path / "c.pcapng")
    write_sample(path)
    out = subprocess.run(["tshark", "-r", path, "-T", "fields", "-e", "frame.len", "-e", "vlan.etype",
                          "-e", "vlan.id", "-e", "vlan.priority", "-e", "vlan.dei"],
                         capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    assert len(out) == 3
    f0 = out[0].split("\t")
    assert f0[0] == "46" and f0[2] == "7" and f0[3] == "5"
    f2 = out[2].split("\t")
    assert f2[2] == "100" and f2[3] == "1" and f2[4] in ("1", "True")
