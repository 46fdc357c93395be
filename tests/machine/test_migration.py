"""Live migration between two machines (source and target in this process, a real TCP stream between them):
RAM and device state arrive identical and the guest goes on; a guest that dirties memory faster than a capped
link still finishes (auto-converge); a wrong token, a flipped byte, a stream cut anywhere: a clear error, and
the source keeps running as if nothing had happened."""

from __future__ import annotations

import socket
import struct
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import private_switches
from tests.helpers.guests import BUSY, COUNTING, Out, counter
from tests.helpers.migration import Proxy, Receiver, SlowLink, machine, wait
from virtkit.machine.migration import MAGIC, VERSION, MigrationError, Source


def test_migrated_guest_arrives_identical_and_goes_on(tmp_path):
    src = machine(tmp_path, COUNTING)
    src.vm.start()
    assert wait(lambda: counter(src) > 100_000)
    rx = Receiver()
    mig = Source(src, rx.uri, "t0k3n")
    mig.start()
    st = mig.wait(120)
    rx.join()
    assert st.state == "completed", st
    assert rx.error is None, rx.error
    dst = rx.machine
    try:
        assert src.vm.wait(30).reason == "migrated"
        # before the target runs: RAM and every record equal to the source's at the switch-over
        assert np.array_equal(src.mem.array[: src.mem.size], dst.mem.array[: dst.mem.size])
        a, b = dst.save_state(), src.save_state()
        for s_ in (a, b):  # guest time goes on with the host clock on both sides (a stopped VM's too)
            s_["engine"].pop("mtime"), s_["engine"].pop("mtime_frac")
        assert a == b
        c = counter(dst)
        dst.vm.start()
        assert wait(lambda: counter(dst) > c + 50_000)  # the guest counts on, on the target
        assert st.downtime < 5 and st.pages_sent >= 3
    finally:
        dst.vm.close()
        src.vm.close()


def test_busy_guest_on_a_slow_link_converges(tmp_path):
    src = machine(tmp_path, BUSY)
    src.vm.start()
    time.sleep(0.3)
    rx = Receiver()
    # a 16 MiB/s link: the guest dirties pages faster than that; without a throttle pre-copy would not converge
    link = SlowLink(rx.target.port, 16 << 20)
    mig = Source(src, f"tcp:127.0.0.1:{link.port}", "t0k3n", downtime=0.05, downtime_ceiling=0.2)
    mig.start()
    st = mig.wait(180)
    rx.join()
    try:
        assert st.state == "completed", st
        assert st.throttle > 0 and any("throttled" in line for line in st.log), st.log
        assert np.array_equal(src.mem.array[: src.mem.size], rx.machine.mem.array[: rx.machine.mem.size])
    finally:
        if rx.machine is not None:
            rx.machine.vm.close()
        src.vm.close()


def _still_running(src):
    c = counter(src) if src.cfg.name == "count" else None
    assert src.vm.state == "running", src.vm.state
    if c is not None:
        assert wait(lambda: counter(src) > c)
    assert src.vm.throttle == 0.0
    assert all(not getattr(d.backend, "closed", False) for d in src.virtio if hasattr(d, "backend"))


def test_wrong_token_is_refused_and_the_source_runs_on(tmp_path):
    src = machine(tmp_path, COUNTING, "count")
    src.vm.start()
    try:
        rx = Receiver(token="right")
        mig = Source(src, rx.uri, "wrong")
        mig.start()
        status = mig.wait(60)
        assert status.state == "failed" and "wrong migration token" in status.error
        _still_running(src)
        # the target turned that connection away and still waits: the right token goes through
        assert rx.t.is_alive() and rx.target.refused and "wrong migration token" in rx.target.refused[0]
        ok = Source(src, rx.uri, "right")
        ok.start()
        assert ok.wait(60).state == "completed", ok.status.error
        rx.join()
        assert rx.error is None and rx.machine is not None
        rx.machine.vm.close()
    finally:
        src.vm.close()


def _through_proxy(src, mangle):
    rx = Receiver()
    px = Proxy(rx.target.port, mangle)
    st = Source(src, f"tcp:127.0.0.1:{px.port}", "t0k3n")
    st.start()
    status = st.wait(120)
    rx.target.close()  # a stream cut in the handshake is turned away and the target would wait on
    rx.join()
    if rx.machine is not None:
        rx.machine.vm.close()
    return status, rx


@pytest.fixture(scope="module")
def running_src(tmp_path_factory):
    src = machine(tmp_path_factory.mktemp("mig"), COUNTING, "count")
    src.vm.start()
    yield src
    src.vm.close()


def test_a_flipped_byte_is_caught_and_the_source_runs_on(running_src):
    def flip(off, chunk):
        i = 5000 - off
        if 0 <= i < len(chunk):
            chunk = chunk[:i] + bytes([chunk[i] ^ 0x40]) + chunk[i + 1:]
        return chunk, False

    status, rx = _through_proxy(running_src, flip)
    assert status.state == "failed" and "CRC mismatch" in status.error + str(rx.error), (status, rx.error)
    _still_running(running_src)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=12_000))  # the stream is longer: 3 pages of RAM and more
def test_a_stream_cut_anywhere_leaves_the_source_running(running_src, cut):
    status, rx = _through_proxy(running_src, lambda off, chunk: (chunk[: max(cut - off, 0)], True)
                                if off + len(chunk) > cut else (chunk, False))
    assert status.state == "failed", status
    assert rx.machine is None and isinstance(rx.error, MigrationError)
    _still_running(running_src)


@pytest.mark.parametrize("data,msg", [
    (b"GET / HTTP/1.0\r\n\r\n", "not a virtkit migration stream"),
    (MAGIC + struct.pack("<I", 99), "stream version 99"),
    (MAGIC + struct.pack("<I", VERSION) + struct.pack("<BBHI", 77, 0, 0, 0) + b"\0\0\0\0", "unknown frame type 77"),
    (MAGIC + struct.pack("<I", VERSION) + struct.pack("<BBHI", 1, 0, 0, 1 << 30), "exceeds"),
])
def test_garbage_at_the_target_is_a_clear_error(data, msg):
    rx = Receiver()
    try:
        with socket.create_connection(("127.0.0.1", rx.target.port)) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(30)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert msg.encode() in answer  # the connector is told why (an ERROR frame)
        assert len(rx.target.refused) == 1 and msg in rx.target.refused[0]
        assert rx.t.is_alive()  # and the target goes on waiting for a real source
    finally:
        rx.target.close()
        rx.join()


@pytest.fixture
def lab(monkeypatch):
    """A running virtkit switch ``lab`` in a private directory."""
    from virtkit.network import control as netctl

    with private_switches(monkeypatch):
        netctl.create("lab")
        yield netctl


def _mac_port(netctl, mac, gone=None):
    """Where the switch forwards ``mac`` (waits until it is learned and port ``gone`` has left)."""
    deadline = time.monotonic() + 10
    where = {}
    while time.monotonic() < deadline:
        info = netctl.request("lab", "show")
        where = {m["mac"]: m for m in info["macs"]}
        if mac in where and gone not in {p["name"] for p in info["ports"]}:
            break
        time.sleep(0.05)
    assert mac in where, where
    return where[mac]


def _silent_nic_machine(tmp_path, mac):
    from virtkit.machine.config import NicConfig

    return machine(tmp_path, COUNTING, nics=[NicConfig("switch", "lab", mac=mac, vlan=7)])


def test_the_switch_learns_the_migrated_mac_at_once(tmp_path, lab):
    """The guest never sends a frame, yet right after the migration the switch forwards its MAC to the
    target's port: the target announces it (RARP, as QEMU's announce-self), and the source's port is gone."""
    mac = "52:54:00:12:34:56"
    src = _silent_nic_machine(tmp_path, mac)
    src.vm.start()
    src_port = src.virtio[0].backend.port_name
    try:
        rx = Receiver()
        st = Source(src, rx.uri, "t0k3n")
        st.start()
        assert st.wait(60).state == "completed", st.status.error
        rx.join()
        dst_port = rx.machine.virtio[0].backend.port_name
        assert dst_port != src_port
        where = _mac_port(lab, mac, gone=src_port)
        assert where["port"] == dst_port and where["vlan"] == 7, where
        assert rx.machine.virtio[0].counts["tx_frames"] >= 1
        rx.machine.vm.close()
    finally:
        src.vm.close()


def test_a_restored_snapshot_announces_its_mac(tmp_path, lab):
    from virtkit.machine import snapshot

    mac = "52:54:00:65:43:21"
    m = _silent_nic_machine(tmp_path, mac)
    m.vm.start()
    assert m.vm.pause()
    snapshot.save(m, tmp_path / "s")
    m.vm.close()
    b = snapshot.restore(tmp_path / "s", Out())
    try:
        assert _mac_port(lab, mac)["port"] == b.virtio[0].backend.port_name
    finally:
        b.vm.close()
