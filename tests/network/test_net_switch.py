"""The frame parser and the forwarding core, frame by frame: VLANs, learning, flooding, drops, queues."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtkit.errors import ConfigError
from virtkit.network import ethernet as eth
from virtkit.network.switch import ALL_VLANS, Port, Switch, format_vlans, parse_vlan_list


class WirePort(Port):
    """A port whose wire is a list; ``busy`` makes the wire refuse frames (a congested link)."""

    kind = "wire"

    def __init__(self, name: str, **kw) -> None:
        super().__init__(name, **kw)
        self.wire: list[bytes] = []
        self.busy = False

    def transmit(self, frame: bytes) -> bool:
        if self.busy:
            return False
        self.wire.append(frame)
        return True


def mac(n: int) -> bytes:
    return bytes((2, 0, 0, 0, 0, n))


def ipv4(payload_len: int = 28) -> bytes:
    return bytes(payload_len)


def frame(dst: bytes, src: bytes, vid: int | None = None, pcp: int = 0, dei: int = 0, tpid: int = 0x8100,
          size: int = 60) -> bytes:
    f = eth.build(dst, src, 0x0800, bytes(size - 14), vid, pcp, dei, tpid)
    return f


def make(*ports: WirePort, **kw) -> Switch:
    sw = Switch("t", **kw)
    for p in ports:
        sw.add_port(p)
    return sw


# -- parser ---------------------------------------------------------------------------------------

def test_parse_untagged_and_tagged():
    f = frame(eth.BROADCAST, mac(1))
    p = eth.parse(f)
    assert not p.tagged and p.ethertype == 0x0800 and p.untagged == f
    t = frame(mac(2), mac(1), vid=7, pcp=5, dei=1)
    p = eth.parse(t)
    assert p.tagged and (p.vid, p.pcp, p.dei, p.tpid) == (7, 5, 1, 0x8100)
    assert p.untagged == frame(mac(2), mac(1))
    assert eth.push_tag(p.untagged, 7, 5, 1) == t
    assert eth.pop_tag(t) == p.untagged


@pytest.mark.parametrize("data,reason", [
    (b"", "runt"), (b"\x01" * 13, "runt"),
    (bytes(12) + b"\x81\x00\x00", "bad_tag"),
    (bytes(12) + b"\x81\x00" + b"\x0f\xff" + b"\x08\x00" + bytes(40), "reserved_vid"),
    (bytes(12) + b"\x08\x00" + bytes(1501), "oversize"),
    (bytes(12) + b"\x81\x00\x00\x07\x08\x00" + bytes(1501), "oversize"),
])
def test_parse_rejects_malformed(data, reason):
    with pytest.raises(eth.FrameError) as e:
        eth.parse(data)
    assert e.value.reason == reason
    assert str(e.value)


def test_parse_random_bytes_never_crashes():
    rnd = random.Random(1)
    for _ in range(3000):
        data = os.urandom(rnd.randrange(0, 1600))
        try:
            eth.parse(data)
        except eth.FrameError:
            pass


def test_mac_parsing():
    from virtkit.errors import ConfigError
    from virtkit.machine.config import parse_mac  # the one MAC parser

    assert parse_mac("02:00:00:00:00:01") == mac(1)
    assert eth.mac_str(mac(1)) == "02:00:00:00:00:01"
    for bad in ("", "02:00", "zz:00:00:00:00:01", "020000000001"):
        with pytest.raises(ConfigError):
            parse_mac(bad)


# -- VLAN lists -----------------------------------------------------------------------------------

def test_vlan_lists():
    assert parse_vlan_list("1,7,10-12") == {1, 7, 10, 11, 12}
    assert parse_vlan_list("all") == ALL_VLANS
    assert format_vlans({1, 7, 10, 11, 12}) == "1,7,10-12"
    for bad in ("", "0", "4095", "1-4095", "a", "5-3", "1,,2", "1-2-3", "7,x"):
        with pytest.raises(ConfigError):
            parse_vlan_list(bad)


# -- forwarding -----------------------------------------------------------------------------------

def test_learning_and_unicast():
    a, b, c = WirePort("a"), WirePort("b"), WirePort("c")
    sw = make(a, b, c)
    sw.receive(a, [frame(mac(2), mac(1))], now=1.0)  # unknown: flooded
    assert len(b.wire) == 1 and len(c.wire) == 1
    sw.receive(b, [frame(mac(1), mac(2))], now=1.1)  # known: only to a
    assert len(a.wire) == 1 and len(c.wire) == 1
    assert sw.lookup(1, mac(1), now=1.2) is a and sw.lookup(1, mac(2), now=1.2) is b
    assert a.stats.tx_frames == 1 and a.stats.rx_frames == 1


def test_ageing_forgets_hosts():
    a, b, c = WirePort("a"), WirePort("b"), WirePort("c")
    sw = make(a, b, c, ageing=10)
    sw.receive(a, [frame(mac(2), mac(1))], now=0.0)
    sw.receive(b, [frame(mac(1), mac(2))], now=20.0)  # mac(1) aged out: flooded again
    assert len(a.wire) == 1 and len(c.wire) == 2
    assert sw.sweep(40.0) == 2 and sw.mac_count == 0


def test_vlans_are_isolated():
    a7, b7, c8 = WirePort("a7", vlan=7), WirePort("b7", vlan=7), WirePort("c8", vlan=8)
    sw = make(a7, b7, c8)
    sw.receive(a7, [frame(eth.BROADCAST, mac(1))], now=1.0)
    sw.receive(c8, [frame(eth.BROADCAST, mac(3)), frame(mac(1), mac(3))], now=1.0)
    assert len(b7.wire) == 1 and c8.wire == [] and a7.wire == []


def test_access_port_drops_tagged_but_takes_priority_tagged():
    a, b, t = WirePort("a", vlan=7), WirePort("b", vlan=7), WirePort("t", mode="trunk", trunk={7})
    sw = make(a, b, t)
    sw.receive(a, [frame(eth.BROADCAST, mac(1), vid=7)], now=1.0)
    assert a.stats.drops["vlan_not_allowed"] == 1 and b.wire == []
    sw.receive(a, [frame(eth.BROADCAST, mac(1), vid=0, pcp=6, dei=1)], now=1.0)
    assert b.wire == [frame(eth.BROADCAST, mac(1))]
    # the trunk gets it tagged with VLAN 7 and the PCP/DEI kept
    p = eth.parse(t.wire[0])
    assert (p.vid, p.pcp, p.dei) == (7, 6, 1)


def test_trunk_tagging_native_and_allowed_list():
    acc = WirePort("acc", vlan=7)
    t = WirePort("t", mode="trunk", trunk={7, 10}, native=10)
    nat = WirePort("nat", vlan=10)
    sw = make(acc, t, nat)
    sw.receive(t, [frame(eth.BROADCAST, mac(9), vid=7, pcp=3)], now=1.0)
    assert acc.wire == [frame(eth.BROADCAST, mac(9))]
    sw.receive(t, [frame(eth.BROADCAST, mac(9))], now=1.0)  # untagged on trunk: native VLAN 10
    assert len(nat.wire) == 1 and len(acc.wire) == 1
    sw.receive(t, [frame(eth.BROADCAST, mac(9), vid=8)], now=1.0)  # not allowed
    assert t.stats.drops["vlan_not_allowed"] == 1
    sw.receive(nat, [frame(eth.BROADCAST, mac(5))], now=1.0)  # native goes out untagged
    assert t.wire[-1] == frame(eth.BROADCAST, mac(5))
    sw.receive(acc, [frame(eth.BROADCAST, mac(6))], now=1.0)
    assert eth.parse(t.wire[-1]).vid == 7
    trunk_no_native = WirePort("t2", mode="trunk", trunk={7})
    sw.add_port(trunk_no_native)
    sw.receive(trunk_no_native, [frame(eth.BROADCAST, mac(4))], now=1.0)
    assert trunk_no_native.stats.drops["vlan_not_allowed"] == 1


def test_trunk_to_trunk_keeps_pcp_dei_and_reuses_tag():
    t1, t2 = WirePort("t1", mode="trunk"), WirePort("t2", mode="trunk")
    sw = make(t1, t2)
    f = frame(eth.BROADCAST, mac(1), vid=100, pcp=7, dei=1)
    sw.receive(t1, [f], now=1.0)
    assert t2.wire == [f]


def test_malformed_frames_counted_and_switch_survives():
    a, b = WirePort("a", mode="trunk", native=1), WirePort("b")
    sw = make(a, b)
    bad = [b"", b"\xff" * 10, bytes(12) + b"\x81\x00\x00", frame(eth.BROADCAST, mac(1), vid=4095),
           frame(eth.BROADCAST, mac(1), size=1515)]
    sw.receive(a, bad, now=1.0)
    d = a.stats.drops
    assert (d["runt"], d["bad_tag"], d["reserved_vid"], d["oversize"]) == (2, 1, 1, 1)
    assert b.wire == []
    sw.receive(a, [frame(eth.BROADCAST, mac(1))], now=1.0)
    assert len(b.wire) == 1
    rnd = random.Random(2)
    sw.receive(a, [os.urandom(rnd.randrange(0, 1600)) for _ in range(2000)], now=2.0)
    assert a.stats.rx_frames == 2006


def test_qinq_trunk_pushes_s_tag_over_c_tag():
    acc = WirePort("acc", vlan=100)
    q = WirePort("q", mode="trunk", trunk={100}, tpid=eth.TPID_8021AD)
    sw = make(acc, q)
    sw.receive(acc, [frame(eth.BROADCAST, mac(1), vid=0)], now=1.0)  # priority tagged
    customer = eth.build(eth.BROADCAST, mac(2), 0x0800, bytes(40), vid=0)  # keep acc happy: untagged
    sw.receive(q, [eth.push_tag(frame(eth.BROADCAST, mac(3), vid=5), 100, 2, tpid=eth.TPID_8021AD)], now=1.0)
    outer = eth.parse(q.wire[0], tpid=eth.TPID_8021AD)
    assert outer.tpid == eth.TPID_8021AD and outer.vid == 100
    # the S-tag is popped towards the access port, the customer's C-tag (VID 5) stays inside
    assert eth.parse(acc.wire[0]).vid == 5
    assert customer


def test_mac_flood_keeps_table_bounded_and_known_hosts_working():
    a, b, flood = WirePort("a"), WirePort("b"), WirePort("flood")
    sw = make(a, b, flood, max_macs=64, storm_pps=0)
    sw.receive(a, [frame(mac(2), mac(1))], now=1.0)
    sw.receive(b, [frame(mac(1), mac(2))], now=1.0)
    rnd = random.Random(3)
    frames = [frame(mac(1), bytes((2, rnd.randrange(256), rnd.randrange(256), rnd.randrange(256), 1, 1)))
              for _ in range(5000)]
    sw.receive(flood, frames, now=2.0)
    assert sw.mac_count <= 64
    assert sw.counters["mac_table_full"] > 4000
    before = len(b.wire)
    sw.receive(a, [frame(mac(2), mac(1))], now=3.0)
    assert len(b.wire) == before + 1  # known host still unicast, not lost


def test_loop_guard_stops_a_loop():
    """Two trunk ports wired to each other: a broadcast would circulate forever; the loop guard cuts it."""
    host = WirePort("host")
    x, y = WirePort("x", mode="trunk", native=1), WirePort("y", mode="trunk", native=1)
    sw = make(host, x, y, storm_pps=100)
    sw.receive(host, [frame(eth.BROADCAST, mac(1))], now=0.0)
    now = 0.0
    for _ in range(2000):  # the loop: what x sends arrives on y and vice versa
        now += 0.0001
        fx, fy = x.wire[:], y.wire[:]
        x.wire.clear()
        y.wire.clear()
        sw.receive(y, fx, now=now)
        sw.receive(x, fy, now=now)
        if not x.wire and not y.wire:
            break
    assert x.stats.drops["loop"] + y.stats.drops["loop"] > 0
    assert not x.wire and not y.wire  # the loop died out
    assert sw.lookup(1, mac(1), now=now) is host  # the host was not "moved" into the loop
    other = WirePort("other")
    sw.add_port(other)
    sw.receive(other, [frame(eth.BROADCAST, mac(7))], now=now + 5)  # a new host still floods fine
    assert host.wire[-1] == frame(eth.BROADCAST, mac(7))


def test_strict_priority_queues_on_a_congested_port():
    src, dst = WirePort("src"), WirePort("dst")
    sw = make(src, dst)
    sw.receive(dst, [frame(mac(1), mac(2))], now=1.0)  # learn dst
    dst.busy = True
    low = [frame(mac(2), mac(1), vid=0, pcp=0) + bytes([i]) for i in range(50)]
    high = [frame(mac(2), mac(1), vid=0, pcp=6) + bytes([100 + i]) for i in range(5)]
    sw.receive(src, low + high, now=1.1)
    assert dst.queued == 55 and dst.wire == []
    dst.busy = False
    assert dst.flush()
    order = [f[-1] for f in dst.wire]
    assert order[:5] == [100, 101, 102, 103, 104]  # high PCP overtook the earlier low ones
    assert order[5:] == list(range(50))


def test_queue_limit_counts_drops():
    src, dst = WirePort("src"), WirePort("dst", queue_limit=10)
    sw = make(src, dst)
    sw.receive(dst, [frame(mac(1), mac(2))], now=1.0)
    dst.busy = True
    sw.receive(src, [frame(mac(2), mac(1))] * 30, now=1.0)
    assert dst.queued == 10 and dst.stats.drops["queue_full"] == 20


def test_port_config_errors():
    with pytest.raises(ConfigError):
        WirePort("x", vlan=0)
    with pytest.raises(ConfigError):
        WirePort("x", vlan=4095)
    with pytest.raises(ConfigError):
        WirePort("x", mode="hybrid")
    with pytest.raises(ConfigError):
        WirePort("x", mode="trunk", trunk={0})
    with pytest.raises(ConfigError):
        Switch(ageing=0)
    sw = make(WirePort("a"))
    with pytest.raises(ConfigError):
        sw.add_port(WirePort("a"))
    with pytest.raises(ConfigError):
        sw.remove_port("zz")


def test_storm_control_limits_flooding_per_port():
    a, b = WirePort("a"), WirePort("b")
    sw = make(a, b, storm_pps=100)
    frames = [frame(eth.BROADCAST, mac(1))] * 1000
    sw.receive(a, frames, now=10.0)  # 1000 broadcasts in one instant: one second's worth (100) pass
    assert len(b.wire) == 100 and a.stats.drops["storm"] == 900
    sw.receive(a, frames[:50], now=10.25)  # 0.25 s later: 25 more tokens
    assert len(b.wire) == 125
    sw.receive(b, [frame(mac(1), mac(2))] * 500, now=10.3)  # known unicast is never storm-limited
    assert len(a.wire) == 500


def test_exact_match_cache_follows_mac_moves_within_a_batch():
    a, b = WirePort("a"), WirePort("b")
    sw = make(a, b)
    sw.receive(b, [frame(mac(1), mac(2))], now=0.0)  # mac(2) lives on b
    ab = frame(mac(2), mac(1))
    moved = frame(eth.BROADCAST, mac(2))  # mac(2) now shows up on a (moved, after the loop guard time)
    sw.receive(a, [ab, ab, moved, ab], now=5.0)
    assert b.wire.count(ab) == 2  # the third copy would go back out of a: filtered
    assert sw.lookup(1, mac(2), now=5.0) is a


def test_exact_match_cache_keeps_checks():
    a, b = WirePort("a", mode="trunk", trunk={7}), WirePort("b", vlan=7)
    sw = make(a, b)
    sw.receive(b, [frame(mac(1), mac(2))], now=0.0)
    good = frame(mac(2), mac(1), vid=7, pcp=3)
    other_vid = frame(mac(2), mac(1), vid=8)
    big = frame(mac(2), mac(1), vid=7, size=1600)
    sw.receive(a, [good, good, other_vid, big, good[:17], good], now=1.0)
    assert len(b.wire) == 3
    assert b.stats.tx_frames == 3 and b.stats.tx_bytes == sum(map(len, b.wire))  # counted on the cached path too
    d = a.stats.drops
    assert (d["vlan_not_allowed"], d["oversize"], d["bad_tag"]) == (1, 1, 1)


def test_qinq_customer_port_tunnels_c_tagged_frames():
    """An access port with the 802.1ad TPID takes a customer's C-tagged frames into its S-VLAN."""
    cust = WirePort("cust", vlan=100, tpid=eth.TPID_8021AD)
    q = WirePort("q", mode="trunk", trunk={100}, tpid=eth.TPID_8021AD)
    sw = make(cust, q)
    c_tagged = frame(eth.BROADCAST, mac(1), vid=5, pcp=2)
    sw.receive(cust, [c_tagged], now=1.0)
    assert q.wire == [eth.push_tag(c_tagged, 100, 0, tpid=eth.TPID_8021AD)]
    sw.receive(q, [eth.push_tag(frame(mac(1), mac(2), vid=5), 100, tpid=eth.TPID_8021AD)], now=1.0)
    assert cust.wire == [frame(mac(1), mac(2), vid=5)]


# -- properties -----------------------------------------------------------------------------------

@given(st.sets(st.integers(1, 4094), min_size=1, max_size=60))
def test_vlan_list_roundtrip(vlans):
    assert parse_vlan_list(format_vlans(vlans)) == vlans


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=80), max_size=20),
       st.lists(st.tuples(st.integers(0, 7), st.integers(0, 4095), st.integers(0, 3)), max_size=20))
def test_random_frames_never_cross_vlans(junk, tagged):
    """Any bytes on a trunk: nothing crashes, and each access port only ever sees its own VLAN."""
    t = WirePort("t", mode="trunk", trunk={7, 8}, native=7)
    a7, a8 = WirePort("a7", vlan=7), WirePort("a8", vlan=8)
    sw = make(t, a7, a8, storm_pps=0)
    frames = list(junk)
    for i, (pcp, vid, src) in enumerate(tagged):
        frames.append(eth.build(eth.BROADCAST, mac(src + 10), 0x88B5, bytes([vid & 0xFF, vid >> 8, i]) + bytes(40),
                                vid, pcp))
    sw.receive(t, frames, now=1.0)
    for f in a8.wire:  # VLAN 8 only gets frames that were tagged 8 on the trunk
        assert f[14] | f[15] << 8 == 8
    for f in a7.wire:
        assert len(f) < 16 or f[12:14] != b"\x88\xb5" or (f[14] | f[15] << 8) in (0, 7)
    assert t.stats.rx_frames == len(frames)
    assert sum(t.stats.drops.values()) + len(a7.wire) + len(a8.wire) >= len(frames) - len(junk)
