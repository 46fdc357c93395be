"""The split virtqueue against a hostile driver: bad addresses, loops, bad indirect tables, fuzzing.

A protocol violation must leave the device in NEEDS_RESET (never an exception out of the
transport, never an access outside guest RAM), and a reset must bring it back.
"""

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.virtio_driver import RAM_BASE, Driver
from virtkit.devices.virtio.blk import VirtioBlk
from virtkit.devices.virtio.mmio import MmioTransport
from virtkit.devices.virtio.queue import Chain, Virtqueue, split_views
from virtkit.devices.virtio.rng import VirtioRng
from virtkit.machine.memory import GuestMemory
from virtkit.storage.backend import RawFile

RAM = 1 << 20
END = RAM_BASE + RAM


def rng_setup(event_idx=False):
    mem = GuestMemory(RAM, RAM_BASE)
    levels = []
    dev = VirtioRng(mem, queue_size=16)
    t = MmioTransport(dev, levels.append)
    d = Driver(mem, t)
    d.setup(1, event_idx=event_idx)
    return mem, dev, t, d, levels


def test_good_chain_direct_and_indirect():
    mem, dev, t, d, levels = rng_setup()
    head, ins = d.add(0, [], [32])
    head2, ins2 = d.add(0, [], [8, 8], indirect=True)
    d.kick(0)
    assert d.used(0) == [(head, 32), (head2, 16)]
    assert levels[-1] is True and d.ack_irq() == 1 and levels[-1] is False
    assert mem.read(ins[0], 32) != bytes(32)
    assert not d.needs_reset


def hostile(mutate):
    """Queue one chain, let ``mutate(d, q)`` corrupt it, kick: the device must need a reset."""
    mem, dev, t, d, levels = rng_setup()
    q = d.queues[0]
    mutate(d, q)
    d.kick(0)
    assert d.needs_reset, "protocol violation not detected"
    assert d.used(0) == []
    assert t.read(0x060, 4) & 2  # config-change interrupt announces NEEDS_RESET
    assert levels[-1] is True
    # ignored until reset, then usable again
    d.kick(0)
    d.setup(1)
    head, _ = d.add(0, [], [4])
    d.kick(0)
    assert d.used(0) == [(head, 4)] and not d.needs_reset
    return t


def test_out_of_ram_buffer():
    def m(d, q):
        d.write_desc(q["desc"], 0, END - 4, 8, 2, 0)  # crosses the end of RAM
        d.publish(0, 0)
    t = hostile(m)
    assert "outside RAM" in t.last_error


def test_buffer_address_wraps_64_bits():
    def m(d, q):
        d.write_desc(q["desc"], 0, 2**64 - 8, 16, 2, 0)
        d.publish(0, 0)
    hostile(m)


def test_huge_length():
    def m(d, q):
        d.write_desc(q["desc"], 0, RAM_BASE, 0xFFFFFFFF, 2, 0)
        d.publish(0, 0)
    hostile(m)


def test_chain_loop():
    def m(d, q):
        a = d.alloc(16)
        d.write_desc(q["desc"], 0, a, 4, 2 | 1, 1)
        d.write_desc(q["desc"], 1, a, 4, 2 | 1, 0)
        d.publish(0, 0)
    t = hostile(m)
    assert "loop" in t.last_error


def test_self_loop():
    def m(d, q):
        d.write_desc(q["desc"], 3, d.alloc(4), 4, 2 | 1, 3)
        d.publish(0, 3)
    hostile(m)


def test_next_index_out_of_table():
    def m(d, q):
        d.write_desc(q["desc"], 0, d.alloc(4), 4, 2 | 1, 999)
        d.publish(0, 0)
    hostile(m)


def test_head_out_of_table():
    hostile(lambda d, q: d.publish(0, 16))


def test_avail_index_runs_ahead():
    def m(d, q):
        d.mem.write_u16(q["avail"] + 2, 40)
    hostile(m)


def test_indirect_bad_sizes_and_nesting():
    for length in (0, 15, 17, 16 * 2000):
        def m(d, q, length=length):
            d.write_desc(q["desc"], 0, d.alloc(64), length, 4, 0)
            d.publish(0, 0)
        hostile(m)

    def nested(d, q):
        inner = d.alloc(16)
        d.write_desc(inner, 0, d.alloc(4), 4, 2, 0)
        outer = d.alloc(16)
        d.write_desc(outer, 0, inner, 16, 4, 0)
        d.write_desc(q["desc"], 0, outer, 16, 4, 0)
        d.publish(0, 0)
    t = hostile(nested)
    assert "nested" in t.last_error

    def outside(d, q):
        d.write_desc(q["desc"], 0, END - 16, 32, 4, 0)
        d.publish(0, 0)
    hostile(outside)

    def indirect_loop(d, q):
        table = d.alloc(32)
        a = d.alloc(4)
        d.write_desc(table, 0, a, 4, 2 | 1, 1)
        d.write_desc(table, 1, a, 4, 2 | 1, 0)
        d.write_desc(q["desc"], 0, table, 32, 4, 0)
        d.publish(0, 0)
    hostile(indirect_loop)


def test_readable_after_writable_is_rejected():
    def m(d, q):
        d.write_desc(q["desc"], 0, d.alloc(4), 4, 2 | 1, 1)
        d.write_desc(q["desc"], 1, d.alloc(4), 4, 0, 0)
        d.publish(0, 0)
    hostile(m)


def test_bad_queue_setup_needs_reset():
    mem = GuestMemory(RAM, RAM_BASE)
    t = MmioTransport(VirtioRng(mem, queue_size=16))
    d = Driver(mem, t)
    for kwargs in ({"num": 3}, {"num": 32}, {"desc": END - 8}, {"used": RAM_BASE + 2}, {"avail": 0}):
        d.setup(0, driver_ok=False)
        d.setup_queue(0, **kwargs)
        assert d.needs_reset, kwargs
        assert not t.read(0x044, 4)  # QueueReady stays 0


def test_event_idx_suppresses_and_requests_interrupts():
    mem, dev, t, d, levels = rng_setup(event_idx=True)
    q = d.queues[0]
    d.add(0, [], [4])
    d.kick(0)
    assert d.used(0) and d.ack_irq() == 1  # first completion always interrupts
    # avail_event published: driver should notify when the device passes index 1
    assert mem.read_u16(q["used"] + 4 + 8 * q["num"]) == 1
    mem.write_u16(q["avail"] + 4 + 2 * q["num"], 5)  # used_event: interrupt me after used idx 6
    for _ in range(3):
        d.add(0, [], [4])
        d.kick(0)
    assert len(d.used(0)) == 3 and t.read(0x060, 4) == 0  # suppressed
    for _ in range(3):
        d.add(0, [], [4])
        d.kick(0)
    assert t.read(0x060, 4) == 1


def test_no_interrupt_flag_without_event_idx():
    mem, dev, t, d, levels = rng_setup()
    mem.write_u16(d.queues[0]["avail"], 1)
    d.add(0, [], [4])
    d.kick(0)
    assert d.used(0) and t.read(0x060, 4) == 0


def test_chain_helpers():
    buf = bytearray(10)
    c = Chain(0, readable=[memoryview(b"abc"), memoryview(b"defg")], writable=[memoryview(buf)[:4],
                                                                                  memoryview(buf)[4:]])
    assert c.read_all() == b"abcdefg" and c.read_all(5) == b"abcde"
    assert c.write_all(b"XYZ", skip=3) == 3 and bytes(buf[3:6]) == b"XYZ"
    assert c.write_all(b"0123456789ABC") == 10
    assert [bytes(v) for v in split_views(c.readable, 2, 5)] == [b"c", b"de"]


def test_virtqueue_not_ready_pops_nothing():
    q = Virtqueue(GuestMemory(RAM, RAM_BASE), 8)
    assert q.pop() is None and not q.has_work()


# -- fuzz: random descriptor tables and rings against virtio-blk --------------------------------
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(descs=st.lists(st.tuples(st.integers(0, 2**64 - 1) | st.integers(RAM_BASE - 64, END + 64),
                                st.integers(0, 2**32 - 1) | st.integers(0, 600),
                                st.integers(0, 7), st.integers(0, 20)), min_size=1, max_size=16),
       heads=st.lists(st.integers(0, 20), min_size=1, max_size=8),
       hdr=st.tuples(st.integers(0, 15), st.integers(0, 2**64 - 1) | st.integers(0, 8)))
def test_fuzz_descriptor_tables(tmp_path, descs, heads, hdr):
    img = tmp_path / "fuzz.img"
    if not img.exists():
        img.write_bytes(bytes(8192))
    mem = GuestMemory(RAM, RAM_BASE)
    backend = RawFile(str(img))
    try:
        dev = VirtioBlk(mem, backend, queue_size=16)
        t = MmioTransport(dev)
        d = Driver(mem, t)
        d.setup(1)
        q = d.queues[0]
        # a plausible request header somewhere in RAM, which descriptors may or may not point at
        mem.write(RAM_BASE + 0x100, struct.pack("<IIQ", hdr[0], 0, hdr[1]))
        for i, (addr, length, flags, nxt) in enumerate(descs):
            d.write_desc(q["desc"], i, addr & (2**64 - 1), length, flags, nxt)
        for h in heads:
            d.publish(0, h)
        d.kick(0)  # must not raise
        used = d.used(0)
        assert len(used) <= len(heads)
        for head, written in used:
            assert head < 16 and written <= 2**32
        if len(used) < len(heads):
            assert d.needs_reset
    finally:
        backend.close()


def test_live_queue_addresses_cannot_be_changed():
    mem, dev, t, d, levels = rng_setup()
    q = d.queues[0]
    t.write(0x030, 4, 0)  # QueueSel
    t.write(0x0A0, 4, 0xFFFF_F000)  # QueueDeviceLow: outside RAM, must be ignored on a live queue
    t.write(0x038, 4, 2)  # QueueNum
    assert t.read(0x0A0, 4) == q["used"] & 0xFFFFFFFF and t.read(0x038, 4) == 16
    head, _ = d.add(0, [], [4])
    d.kick(0)
    assert d.used(0) == [(head, 4)]
