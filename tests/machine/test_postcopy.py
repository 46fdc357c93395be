"""Post-copy migration: the guest runs on the target while its memory still arrives (userfaultfd). A busy
guest on a slow link moves with milliseconds of downtime and every page once; RAM read from the target
(faulting from a thread that holds the GIL) equals the source's at the switch-over; the page server
refuses a corrupt page, a page outside RAM and a source that goes away, each with a clear error."""

from __future__ import annotations

import socket
import struct
import time

import numpy as np
import pytest
from crc32c import crc32c

from tests.helpers.guests import BUSY, COUNTING, counter
from tests.helpers.migration import Receiver, machine, wait
from virtkit.machine import postcopy as pc
from virtkit.machine.migration import Source

PAGE = 4096


@pytest.fixture(autouse=True)
def _uffd():
    why = pc.available()
    if why is not None:
        pytest.skip(why)


def test_busy_guest_on_a_slow_link_moves_by_postcopy(tmp_path):
    src = machine(tmp_path, BUSY)
    src.vm.start()
    time.sleep(0.3)
    rx = Receiver()
    mig = Source(src, rx.uri, "t0k3n", bandwidth=16 << 20, postcopy=True, downtime=0.001, downtime_ceiling=0.001)
    mig.start()
    rx.join()
    assert rx.error is None, rx.error
    dst = rx.machine
    try:
        # read all of the target's RAM from this thread (it holds the GIL) while pages still arrive: every
        # missing page faults, is fetched and installed by the page server, which needs no GIL
        ram = dst.mem.array[: dst.mem.size].copy()
        st = mig.wait(120)
        assert st.state == "completed", st
        assert st.postcopy and st.downtime < 0.5 and st.throttle == 0.0
        assert st.postcopy_requests > 0  # some pages came because the reader faulted on them
        assert dst.postcopy.wait(30) and dst.postcopy.status()["missing"] == 0
        assert src.vm.wait(30).reason == "migrated"
        assert np.array_equal(src.mem.array[: src.mem.size], ram)
        assert st.pages_sent < 3 * src.mem.size // PAGE  # a page crosses once per pass, not once per dirtying
        dst.vm.start()  # the busy loop goes on rewriting its pages on the target
        assert wait(lambda: not np.array_equal(dst.mem.array[: dst.mem.size], ram))
        assert dst.vm.state == "running"
    finally:
        dst.vm.close()
        src.vm.close()


def test_counting_guest_goes_on_while_its_pages_arrive(tmp_path):
    src = machine(tmp_path, COUNTING)
    src.vm.start()
    assert wait(lambda: counter(src) > 100_000)
    rx = Receiver()
    mig = Source(src, rx.uri, "t0k3n", bandwidth=8 << 20, postcopy=True, downtime=0.001, downtime_ceiling=0.001)
    mig.start()
    rx.join()
    dst = rx.machine
    try:
        assert rx.error is None, rx.error
        dst.vm.start()  # at once: the guest runs before all of its memory is here
        st = mig.wait(120)
        assert st.state == "completed", st
        at = counter(src)
        assert wait(lambda: counter(dst) > at + 50_000)
        assert dst.vm.state == "running"
    finally:
        dst.vm.close()
        src.vm.close()


class Mem:
    """A small anonymous RAM for the page server alone."""

    def __init__(self, pages):
        import mmap

        self.size = pages * PAGE
        self._m = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.array = np.frombuffer(self._m, dtype=np.uint8)


def record(p, data, flip=False):
    head = struct.pack("<Q", p)
    crc = crc32c(data, crc32c(head))
    out = bytearray(head + data + struct.pack("<I", crc))
    if flip:
        out[100] ^= 1
    return bytes(out)


@pytest.mark.parametrize("send, msg", [
    (lambda s: s.sendall(record(1, b"\x01" * PAGE, flip=True)), "bad checksum"),
    (lambda s: s.sendall(record(99, b"\x01" * PAGE)), "outside guest RAM"),
    (lambda s: s.sendall(record(1, b"\x01" * PAGE)[:2000]), "closed the connection"),
])
def test_page_server_refuses_bad_pages_and_a_lost_source(send, msg):
    mem = Mem(4)
    mem.array[:] = 7  # stale content of pages 1 and 2 (to be dropped)
    a, b = socket.socketpair()
    errors = []
    missing = np.array([0, 1, 1, 0], dtype=bool)
    inc = pc.Incoming(mem, b, missing, errors.append)
    assert mem._m[0] == 7 and mem._m[3 * PAGE] == 7  # pages that are not missing keep their content
    inc.start()
    send(a)
    a.close()
    assert inc.wait(10)
    assert errors and msg in errors[0] and "cannot go on" in errors[0]
    inc.close()


def test_page_server_installs_pages_and_zero_fills_the_rest():
    mem = Mem(8)
    a, b = socket.socketpair()
    missing = np.zeros(8, dtype=bool)
    missing[[2, 5]] = True
    mem.array[2 * PAGE:3 * PAGE] = 9  # stale: dropped, then replaced by what the source sends
    inc = pc.Incoming(mem, b, missing, lambda m: None)
    inc.start()
    a.sendall(record(5, b"\x05" * PAGE) + record(2, b"\x02" * PAGE))
    assert inc.wait(10), inc.status()
    assert a.recv(8) == struct.pack("<Q", pc.ALL_HERE)
    assert bytes(mem._m[2 * PAGE:2 * PAGE + 4]) == b"\x02" * 4 and bytes(mem._m[5 * PAGE:5 * PAGE + 4]) == b"\x05" * 4
    assert mem._m[7 * PAGE] == 0
    inc.close()


def test_a_stream_cut_after_the_switch_stops_both_sides_with_a_clear_error(tmp_path):
    import threading

    from tests.helpers.migration import Proxy

    src = machine(tmp_path, BUSY)
    src.vm.start()
    time.sleep(0.3)
    rx = Receiver()
    cut = threading.Event()
    px = Proxy(rx.target.port, lambda off, data: (data, cut.is_set()))
    mig = Source(src, f"tcp:127.0.0.1:{px.port}", "t0k3n", bandwidth=4 << 20, postcopy=True, downtime=0.001,
                 downtime_ceiling=0.001)
    mig.start()
    rx.join()
    dst = rx.machine
    try:
        assert rx.error is None, rx.error
        dst.vm.start()
        cut.set()  # the link breaks while pages are still missing on the target
        st = mig.wait(60)
        assert st.state == "failed" and "after the switch-over" in st.error, st
        res = dst.vm.wait(30)
        assert res is not None and res.reason == "failed" and "source closed the connection" in res.message
        assert src.vm.wait(30).reason == "failed"  # neither side pretends to have the guest
    finally:
        dst.vm.close()
        src.vm.close()



WARM_SCAN = """
import socket, numpy as np
from virtkit.machine.memory import GuestMemory
from virtkit.machine import postcopy as pc
from virtkit.engines.riscv.engine import RiscvEngine
mem = GuestMemory(8 << 20, 0x8000_0000)
mem.array[:mem.size] = 1
a, b = socket.socketpair()  # a source that is there and sends nothing
missing = np.zeros(mem.size // 4096, dtype=bool)
missing[::2] = True
inc = pc.Incoming(mem, b, missing, print)
inc.start()
eng = RiscvEngine(mem, 1, jit=1)
print("pages", len(eng.jit._loaded_pages()))
"""


def test_the_jit_warm_start_does_not_read_a_post_copy_targets_missing_pages():
    """The JIT's warm start scans RAM filled before the engine existed for loaded pages. On a post-copy target
    it must look at touched pages only: reading a missing one waits for the source (forever if the link broke,
    and with the GIL held, so the page server's Python side could not even notice: it hung CI once)."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", WARM_SCAN], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "pages 1024" in p.stdout, (p.stdout, p.stderr)  # the 1024 pages that are there
