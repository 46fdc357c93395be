"""NS16550A register behaviour, driven through its register interface like a guest driver."""

import pytest

from virtkit.devices.uart16550 import (
    DLL,
    DLM,
    FCR,
    IER,
    IIR,
    LCR,
    LSR,
    MCR,
    MSR,
    RBR,
    SCR,
    THR,
    Uart16550,
)


class Wire:
    def __init__(self):
        self.out = bytearray()
        self.levels = []

    def sink(self, data):
        self.out += data

    def irq(self, level):
        self.levels.append(level)

    @property
    def level(self):
        return bool(self.levels and self.levels[-1])


def make():
    w = Wire()
    return Uart16550(w.sink, w.irq), w


def test_transmit_goes_to_sink_and_lsr_says_empty():
    u, w = make()
    for b in b"hi\n":
        assert u.read(LSR, 1) & 0x60 == 0x60
        u.write(THR, 1, b)
    assert bytes(w.out) == b"hi\n" and u.tx_bytes == 3


def test_receive_queue_dr_and_nothing_lost():
    u, w = make()
    data = bytes(range(256)) * 4  # more than any FIFO: the host queue keeps it all
    u.feed(data)
    u.pump()
    assert not u.read(LSR, 1) & 1  # receive interrupts off: the bytes wait on the host side
    u.write(IER, 1, 0x01)  # the driver is ready
    got = bytearray()
    while u.read(LSR, 1) & 1:
        got.append(u.read(RBR, 1))
    assert bytes(got) == data
    assert u.read(RBR, 1) == 0  # empty read is harmless


def test_divisor_latch_and_scratch():
    u, _ = make()
    u.write(LCR, 1, 0x83)
    u.write(DLL, 1, 0x01)
    u.write(DLM, 1, 0x02)
    assert (u.read(DLL, 1), u.read(DLM, 1)) == (0x01, 0x02)
    u.write(LCR, 1, 0x03)
    assert u.read(IER, 1) == 0 and u.read(LCR, 1) == 0x03
    u.write(SCR, 1, 0x5A)
    assert u.read(SCR, 1) == 0x5A


def test_rx_interrupt_raised_and_cleared():
    u, w = make()
    assert u.read(IIR, 1) & 1  # no interrupt pending
    u.write(IER, 1, 0x01)
    u.feed(b"ab")
    u.pump()
    assert w.level and u.read(IIR, 1) & 0x0F == 0x04
    u.read(RBR, 1)
    assert w.level
    u.read(RBR, 1)
    assert not w.level and u.read(IIR, 1) & 1


def test_thre_interrupt_on_enable_and_after_write_acked_by_iir_read():
    u, w = make()
    u.write(IER, 1, 0x02)
    assert w.level  # enabling THRI with an empty THR interrupts at once (Linux relies on it)
    assert u.read(IIR, 1) & 0x0F == 0x02
    assert not w.level  # IIR read acknowledged it
    u.write(THR, 1, ord("x"))
    assert w.level
    u.write(IER, 1, 0x00)
    assert not w.level


def test_rx_has_priority_over_thre_and_fifo_bits():
    u, w = make()
    u.write(FCR, 1, 0x07)
    u.write(IER, 1, 0x03)
    u.feed(b"z")
    u.pump()
    assert u.read(IIR, 1) == 0xC4
    u.read(RBR, 1)
    assert u.read(IIR, 1) == 0xC2


def test_fcr_clears_receiver():
    u, _ = make()
    u.write(IER, 1, 0x01)
    u.feed(b"garbage")
    u.pump()
    assert u.read(LSR, 1) & 1
    u.write(FCR, 1, 0x03)
    assert not u.read(LSR, 1) & 1


def test_loopback_msr_and_data():
    u, w = make()
    u.write(MCR, 1, 0x10 | 0x0A)  # loop + RTS + OUT2: the 8250 autoconfig probe
    assert u.read(MSR, 1) & 0xF0 == 0x90
    u.write(THR, 1, 0x42)
    assert u.read(RBR, 1) == 0x42 and not w.out
    u.write(MCR, 1, 0x08)
    assert u.read(MSR, 1) & 0xF0 == 0xB0


def test_modem_status_interrupt():
    u, w = make()
    u.write(MCR, 1, 0x10)
    u.write(IER, 1, 0x08)
    u.write(MCR, 1, 0x10 | 0x01)  # DTR -> DSR change in loopback
    assert w.level and u.read(IIR, 1) & 0x0F == 0x00
    assert u.read(MSR, 1) & 0x02
    assert not w.level


def test_garbage_offsets_and_values_do_not_crash():
    u, _ = make()
    for off in range(0, 64):
        u.write(off, 4, 0xFFFFFFFF)
        u.read(off, 8)


class Calls:
    """A console sink that keeps each call separately."""

    def __init__(self):
        self.calls = []

    def __call__(self, data):
        self.calls.append(bytes(data))

    @property
    def out(self):
        return b"".join(self.calls)


def test_buffered_output_waits_for_flush_then_arrives_whole_and_in_order():
    sink = Calls()
    u = Uart16550(sink, buffered=True)
    for b in b"no newline yet":
        assert u.read(LSR, 1) & 0x60 == 0x60  # THR always empty: the guest never waits
        u.write(THR, 1, b)
    assert sink.calls == [] and u.tx_bytes == 14
    u.flush()
    assert sink.calls == [b"no newline yet"]
    u.flush()  # nothing new: no empty call
    assert sink.calls == [b"no newline yet"]


def test_buffered_output_large_volume_every_byte_in_order_in_bounded_calls():
    from virtkit.devices.uart16550 import TX_BATCH

    sink = Calls()
    u = Uart16550(sink, buffered=True)
    data = bytes(i * 7 % 251 for i in range(3 * TX_BATCH + 123))
    for i, b in enumerate(data):
        u.write(THR, 1, b)
        if i % 1000 == 999:
            u.flush()  # the run loop flushes at arbitrary points
    u.flush()
    assert sink.out == data and u.tx_bytes == len(data)
    assert max(len(c) for c in sink.calls) <= TX_BATCH


def test_buffered_thre_interrupt_still_raised_and_acknowledged():
    w = Wire()
    u = Uart16550(w.sink, w.irq, buffered=True)
    u.write(IER, 1, 0x02)
    assert u.read(IIR, 1) & 0x0F == 0x02 and not w.level
    u.write(THR, 1, ord("a"))
    assert w.level  # THRE again after the byte left
    u.write(THR, 1, ord("b"))  # already pending: stays raised
    assert w.level and u.read(IIR, 1) & 0x0F == 0x02 and not w.level
    u.flush()
    assert bytes(w.out) == b"ab"


def test_unbuffered_is_one_sink_call_per_byte():
    sink = Calls()
    u = Uart16550(sink)
    for b in b"abc":
        u.write(THR, 1, b)
    assert sink.calls == [b"a", b"b", b"c"]


@pytest.mark.parametrize("size", [2, 3, 4, 8])
def test_wide_and_odd_accesses_act_on_the_byte_register(size):
    """Documented: any access size reads the register at its offset zero-extended, writes its low byte."""
    sink = Calls()
    u = Uart16550(sink, buffered=True)
    u.write(IER, 1, 0x01)
    u.feed(b"q")
    u.pump()
    assert u.read(LSR, size) == 0x61  # THRE | TEMT | DR, nothing in the upper bytes
    assert u.read(LSR + 8, size) == 0x61  # registers repeat every 8 bytes
    u.write(THR, size, 0x1234_5678_9ABC_DE41)
    u.write(SCR, size, 0xFFFF_FF5A)
    assert u.read(SCR, size) == 0x5A
    assert u.read(RBR, size) == ord("q") and u.read(LSR, size) == 0x60
    u.flush()
    assert sink.out == b"A"


def test_fast_hook_says_when_thr_writes_only_transmit_and_what_lsr_reads():
    """The coalesced-MMIO contract (boards/riscv_virt wires it to the engine): THR writes may be buffered while
    neither DLAB nor loopback is on (a buffered run re-asserts THRE); the LSR shadow carries DR; error bits
    switch it off."""
    from virtkit.devices.uart16550 import LCR, LSR_DR, LSR_IDLE, MCR, MCR_LOOP, Uart16550

    seen = []
    u = Uart16550(lambda b: None)
    msrs = []
    u.fast_hook = lambda plain, lsr, msr: (seen.append((plain, lsr)), msrs.append(msr))
    u.publish()
    assert seen[-1] == (True, LSR_IDLE)
    levels = []
    u.irq = levels.append
    u.write(IER, 1, 0x02)  # THRE interrupt on: pending at once
    u.read(2, 1)  # IIR acknowledges it
    assert not u.thr_ipending and levels[-1] is False
    u.transmit_run(b"xyz")  # a buffered run: out, and THRE pending again with its interrupt
    assert u.thr_ipending and levels[-1] is True and u.tx_bytes == 3
    u.write(IER, 1, 0)
    u.write(0, 1, ord("x"))
    assert seen[-1] == (True, LSR_IDLE)
    u.write(LCR, 1, 0x83)  # DLAB: offset 0 is the divisor latch
    assert seen[-1][0] is False
    u.write(LCR, 1, 0x03)
    assert seen[-1][0] is True
    u.write(MCR, 1, MCR_LOOP)
    assert seen[-1][0] is False
    u.write(MCR, 1, 0)
    u.write(IER, 1, 0x01)
    u.feed(b"k")
    u.pump()
    assert seen[-1] == (True, LSR_IDLE | LSR_DR)
    assert u.read(0, 1) == ord("k")
    assert seen[-1] == (True, LSR_IDLE)
    u.lsr_errors = 0x02  # an overrun: reading LSR has a side effect now
    u.publish()
    assert seen[-1][1] is None
    assert msrs[-1] is None  # the loopback above changed the modem lines: deltas wait for an MSR read
    u.read(6, 1)
    assert msrs[-1] == 0xB0  # DCD, DSR, CTS: what an MSR read returns, with no delta to clear
    u.msr_delta = 0x01  # a CTS change to report: a read has a side effect again
    u.publish()
    assert msrs[-1] is None
    assert u.read(6, 1) & 0x01 and msrs[-1] == 0xB0  # the read took the delta: a shadow again


def test_polling_reader_gets_input_and_nothing_arrives_before_the_driver_is_ready():
    """A reader that polls LSR with interrupts off (firmware, a bare-metal program) still gets the input;
    input typed before any driver is ready survives the driver's FIFO reset."""
    u, _ = make()
    u.feed(b"early")
    u.pump()
    u.write(FCR, 1, 0x07)  # the driver's start-up resets the FIFOs: nothing was on the line yet
    u.write(IER, 1, 0x01)
    assert bytes(u.read(RBR, 1) for _ in range(5)) == b"early"
    v, _ = make()
    v.feed(b"p")
    polls = 0
    while not v.read(LSR, 1) & 1:
        polls += 1
        assert polls < 1000
    assert v.read(RBR, 1) == ord("p")
