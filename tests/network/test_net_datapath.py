"""The compiled datapath makes the same decisions as the Python slow path.

Two switches with the same ports (datagram socket pairs carrying a virtio-net header, exactly how a
TAP behaves) get the same frame sequences: one forwards everything in Python, the other through the
datapath with upcalls. Every port's output, every counter and the MAC table must be identical.
No root needed.
"""

from __future__ import annotations

import random
import socket

import pytest

from virtkit.network import ethernet as eth
from virtkit.network.datapath import Datapath
from virtkit.network.offload import ZERO_HDR
from virtkit.network.ports import FdPort, VmPort
from virtkit.network.switch import Switch

PORTS = {
    "a": {"mode": "access", "vlan": 1},
    "b": {"mode": "access", "vlan": 1, "priority": 3},
    "c": {"mode": "access", "vlan": 7},
    "t": {"mode": "trunk", "trunk": {1, 7, 8}, "native": 1},
    "u": {"mode": "trunk", "trunk": {7, 8}},
    "q": {"mode": "trunk", "trunk": {1, 7}, "tpid": 0x88A8},
    "v": {"mode": "access", "vlan": 7},  # a VM port: SOCK_SEQPACKET, no vnet header
}


class Sink:
    """A capture that keeps what it is given (what the daemon's pcapng capture receives)."""

    def __init__(self) -> None:
        self.frames: list[tuple[bytes, bool]] = []

    def write(self, frame: bytes, outbound: bool = False) -> None:
        self.frames.append((bytes(frame), outbound))


class Rig:
    """A switch whose ports are FdPorts; ``host[name]`` is the other end of each port's socket pair."""

    def __init__(self, fast: bool, **kw) -> None:
        self.sw = Switch("t", ageing=kw.get("ageing", 5.0), storm_pps=kw.get("storm_pps", 0.0),
                         max_macs=kw.get("max_macs", 4096))
        self.host: dict[str, socket.socket] = {}
        self.socks: list[socket.socket] = []
        if fast:
            self.sw.attach_datapath(Datapath(self.sw))
        for name, cfg in PORTS.items():
            vm = name == "v"
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET if vm else socket.SOCK_DGRAM)
            for s in (mine, theirs):
                s.setblocking(False)
            self.socks += [mine, theirs]
            self.sw.add_port(VmPort(name, name, conn=mine, **cfg) if vm else FdPort(name, mine.fileno(), **cfg))
            self.host[name] = theirs
        self.fast = fast

    def inject(self, name: str, frames: list[bytes], now: float) -> None:
        for f in frames:
            self.host[name].send(f if name != "v" else f[len(ZERO_HDR):] or b"\0")  # a VM sends no vnet header
        port = self.sw.ports[name]
        if self.fast:
            self.sw.dp.receive(port, now, 256)
        else:
            got = port.receive_batch(256)
            if got:
                self.sw.receive(port, got, now)

    def drain(self, name: str) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.host[name].recv(70000))
            except BlockingIOError:
                return out

    def flush(self) -> None:
        for p in self.sw.ports.values():
            if p.queued:
                p.flush()

    def state(self) -> dict:
        sw = self.sw
        if sw.dp is not None:
            sw.dp.sync()
        macs = sorted((v, m, e[0].name, e[1]) for v, t in sw.macs.items() for m, e in t.items())
        return {"ports": {n: (p.stats.as_dict(), p.queued) for n, p in sw.ports.items()}, "macs": macs,
                "counters": dict(sw.counters)}

    def close(self) -> None:
        for s in self.socks:
            s.close()


def mac(n: int) -> bytes:
    return bytes((2, 0, 0, 0, 0, n))


def random_frame(rng: random.Random, port: str, macs: list[bytes]) -> bytes:
    """Mostly plausible frames for ``port``, with broadcast, unknown, bad tags, runts, oversize and GSO headers."""
    r = rng.random()
    if r < 0.02:
        return ZERO_HDR + bytes(rng.randrange(0, 14))  # runt
    dst = rng.choice(macs + [eth.BROADCAST, mac(99)]) if rng.random() < 0.3 else rng.choice(macs)
    home = macs[list(PORTS).index(port)]  # each host lives on one port; now and then one moves
    src = home if rng.random() < 0.99 else rng.choice(macs) if rng.random() < 0.8 else bytes((1, 0, 0, 0, 0, 5))
    size = rng.choice([60, 60, 60, 100, 1514, 1515, 1600]) if rng.random() < 0.2 else 60
    cfg = PORTS[port]
    vid = None
    if cfg["mode"] == "trunk" or rng.random() < 0.1:
        vid = rng.choice([1, 7, 7, 8, 0, 9, 4095]) if rng.random() < 0.9 else None
    tpid = cfg.get("tpid", 0x8100) if rng.random() < 0.95 else 0x8100
    body = bytes(rng.randrange(256) for _ in range(4)) + bytes(max(0, size - 18))
    f = eth.build(dst, src, 0x0800, body, vid, rng.randrange(8), rng.randrange(2), tpid)
    if rng.random() < 0.03:
        f = f[:16]  # truncated tag or short frame
    hdr = ZERO_HDR
    if rng.random() < 0.03:
        hdr = bytes((0, 0, 0, 0, 0, 0, 0, 0, 0, 0)) if rng.random() < 0.5 else bytes((0, 0)) + bytes(8)
    return hdr + f


def run_both(seed: int, steps: int = 250, captures: bool = False) -> tuple[dict, dict, Rig]:
    rng = random.Random(seed)
    ref, fast = Rig(False), Rig(True)
    outs_ref: dict[str, list[bytes]] = {n: [] for n in PORTS}
    outs_fast: dict[str, list[bytes]] = {n: [] for n in PORTS}
    macs = [mac(i) for i in range(1, len(PORTS) + 1)]
    now = 1000.0
    sinks: list[Sink] = []
    history: dict[str, list[bytes]] = {n: [] for n in PORTS}
    try:
        for step in range(steps):
            now += rng.choice([0.001, 0.01, 0.2, 0.5, 1.5]) if rng.random() < 0.97 else 6.0
            port = rng.choice(list(PORTS))
            frames = [random_frame(rng, port, macs) for _ in range(rng.randrange(1, 9))]
            if rng.random() < 0.5 and history[port]:  # frames seen before: the common case the cache is for
                frames = [rng.choice(history[port])] * 8
            history[port] += frames[:2]
            if captures and step % 50 == 10:
                for rig in (ref, fast):
                    s = Sink()
                    sinks.append(s)
                    rig.sw.ports["b"].captures.append(s)
                    rig.sw.invalidate()
            if captures and step % 50 == 30:
                for rig in (ref, fast):
                    rig.sw.ports["b"].captures.clear()
                    rig.sw.invalidate()
            if step % 40 == 20:  # a port changes VLAN, as `net port set` does
                for rig in (ref, fast):
                    p = rig.sw.ports["a"]
                    p.configure(mode="access", vlan=7 if p.vlan == 1 else 1)
                    rig.sw.changed()
            for rig in (ref, fast):
                rig.inject(port, frames, now)
            for rig, outs in ((ref, outs_ref), (fast, outs_fast)):
                for n in PORTS:
                    if n != "b" or step % 4 == 3:  # b's host reads slowly: its queues fill
                        outs[n] += rig.drain(n)
                rig.flush()
                if step % 25 == 0:
                    rig.sw.sweep(now)
            assert ref.state() == fast.state(), f"step {step}"
            assert outs_ref == outs_fast, f"step {step}"
        for i in range(0, len(sinks), 2):
            assert sinks[i].frames == sinks[i + 1].frames
        return outs_ref, ref.state(), fast
    finally:
        ref.close()
        fast.close()


@pytest.mark.parametrize("seed", range(6))
def test_datapath_matches_python_path(seed):
    outs, state, fast = run_both(seed)
    assert sum(map(len, outs.values())) > 100
    assert fast.sw.dp.stats["fast_frames"] > 10  # the fast path really carried traffic
    assert sum(s["rx_frames"] for s, _ in state["ports"].values()) > 500


def test_datapath_matches_with_captures():
    run_both(42, steps=200, captures=True)


def test_known_unicast_needs_no_upcall_and_counts_exactly():
    rig = Rig(True)
    try:
        a, b = mac(1), mac(2)
        rig.inject("a", [ZERO_HDR + eth.build(eth.BROADCAST, a, 0x0806, bytes(46))], 1.0)
        rig.inject("b", [ZERO_HDR + eth.build(a, b, 0x0806, bytes(46))], 1.0)
        f = ZERO_HDR + eth.build(b, a, 0x88B5, bytes(46))
        rig.drain("b")
        rig.inject("a", [f] * 5, 2.0)  # first one installs the flow
        before = rig.sw.dp.stats["upcalls"]
        rig.inject("a", [f] * 8, 2.5)
        assert rig.sw.dp.stats["upcalls"] == before
        got = rig.drain("b")
        assert got == [f] * 13
        pa, pb = rig.sw.ports["a"].stats, rig.sw.ports["b"].stats
        assert pa.rx_frames == 14 and pa.rx_bytes == 14 * 60
        assert pb.tx_frames == 14 and pb.tx_bytes == 14 * 60
        assert rig.sw.lookup(1, a, 2.5) is rig.sw.ports["a"]
        assert rig.sw.macs[1][a][1] == 2.5  # the fast path refreshed the source's age
        # trunk with a native VLAN: VLAN 7 frames get a tag pushed, tagged frames get it stripped
        c, t = mac(3), mac(4)
        rig.inject("c", [ZERO_HDR + eth.build(eth.BROADCAST, c, 0x0806, bytes(46))], 3.0)
        rig.inject("t", [ZERO_HDR + eth.build(c, t, 0x0800, bytes(46), 7, 5, 1)], 3.0)
        rig.drain("c")
        rig.drain("t")
        for _ in range(2):
            rig.inject("c", [ZERO_HDR + eth.build(t, c, 0x0800, bytes(46))] * 3, 3.1)
            rig.inject("t", [ZERO_HDR + eth.build(c, t, 0x0800, bytes(46), 7, 5, 1)] * 3, 3.1)
        assert rig.drain("t") == [ZERO_HDR + eth.build(t, c, 0x0800, bytes(46), 7, 0, 0)] * 6
        assert rig.drain("c") == [ZERO_HDR + eth.build(c, t, 0x0800, bytes(46))] * 6
        assert rig.sw.dp.stats["fast_frames"] >= 14
    finally:
        rig.close()


def test_closed_peer_is_reported_by_the_port():
    rig = Rig(True)
    try:
        rig.host["a"].close()
        rig.sw.dp.receive(rig.sw.ports["a"], 1.0, 256)  # EOF/ECONNREFUSED: no crash, port's own read decides
    finally:
        rig.close()


def test_mac_move_and_ageing_go_through_the_slow_path():
    rig = Rig(True, ageing=2.0)
    try:
        a, b = mac(1), mac(2)
        rig.inject("a", [ZERO_HDR + eth.build(eth.BROADCAST, a, 0x0806, bytes(46))], 1.0)
        rig.inject("b", [ZERO_HDR + eth.build(a, b, 0x0806, bytes(46))], 1.0)
        f = ZERO_HDR + eth.build(b, a, 0x88B5, bytes(46))
        for n in PORTS:
            rig.drain(n)
        rig.inject("a", [f] * 3, 1.5)
        assert len(rig.drain("b")) == 3
        rig.inject("a", [f], 4.0)  # b aged out: flooded by the slow path to every VLAN 1 port
        assert len(rig.drain("b")) == 1 and len(rig.drain("t")) == 1
        rig.inject("b", [ZERO_HDR + eth.build(a, b, 0x0806, bytes(46))], 6.0)
        rig.inject("t", [ZERO_HDR + eth.build(eth.BROADCAST, b, 0x0806, bytes(46))], 7.5)  # b moves to t
        rig.drain("t")
        rig.drain("b")
        rig.inject("a", [f] * 2, 7.6)
        assert rig.drain("b") == [] and len(rig.drain("t")) == 2
        assert rig.sw.counters["mac_moves"] == 1
    finally:
        rig.close()


def test_full_mac_slot_table_starts_over_and_keeps_forwarding():
    from virtkit.network.datapath import Datapath

    rig = Rig(True)
    try:
        rig.sw.dp = Datapath(rig.sw, slots=3)  # room for one flow's two MACs at a time
        rig.sw.dp.reload()
        hosts = {"a": mac(1), "b": mac(2), "t": mac(3)}
        for name, m in hosts.items():
            rig.inject(name, [ZERO_HDR + eth.build(eth.BROADCAST, m, 0x0806, bytes(46))], 1.0)
        for name in hosts:
            rig.drain(name)
        for _ in range(3):
            for src, dst in (("a", "b"), ("b", "t"), ("t", "a")):
                rig.inject(src, [ZERO_HDR + eth.build(hosts[dst], hosts[src], 0x88B5, bytes(46))] * 2, 1.5)
        for name in hosts:
            assert len(rig.drain(name)) == 6
        assert rig.sw.dp.stats["flushes"] >= 3
    finally:
        rig.close()


def test_vm_port_in_the_datapath_and_a_vm_that_leaves():
    rig = Rig(True)
    try:
        c, v = mac(3), mac(7)
        rig.inject("c", [ZERO_HDR + eth.build(eth.BROADCAST, c, 0x0806, bytes(46))], 1.0)
        rig.inject("v", [ZERO_HDR + eth.build(c, v, 0x0806, bytes(46))], 1.0)  # inject() strips it for the VM
        for n in PORTS:
            rig.drain(n)
        to_v, to_c = eth.build(v, c, 0x88B5, bytes(46)), eth.build(c, v, 0x88B5, bytes(46))
        for _ in range(2):
            rig.inject("c", [ZERO_HDR + to_v] * 4, 1.5)
            rig.inject("v", [ZERO_HDR + to_c] * 4, 1.5)
        assert rig.drain("v") == [to_v] * 8  # no vnet header towards the VM
        assert rig.drain("c") == [ZERO_HDR + to_c] * 8
        fast = rig.sw.dp.stats["fast_frames"]
        assert fast >= 8
        rig.host["v"].close()  # the VM goes away: its port's socket reads EOF
        rig.inject("v", [], 2.0)
        port = rig.sw.ports["v"]
        assert port.conn is None and port.closed_by_peer and rig.sw.dp.P[port.dp_index, 0] == -1
        rig.inject("c", [ZERO_HDR + to_v] * 3, 2.5)  # frames to the gone VM: lost, counted, no crash
        assert port.stats.tx_frames == 12  # broadcast + 8 + 3 lost on the pulled cable, as Python counts
    finally:
        rig.close()
