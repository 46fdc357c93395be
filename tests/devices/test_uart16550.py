"""NS16550A register behaviour, driven through its register interface like a guest driver."""

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
    assert u.read(IIR, 1) == 0xC4
    u.read(RBR, 1)
    assert u.read(IIR, 1) == 0xC2


def test_fcr_clears_receiver():
    u, _ = make()
    u.feed(b"garbage")
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
