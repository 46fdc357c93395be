"""The SiFive test finisher and the Goldfish RTC, driven through their registers."""

from virtkit.devices.goldfish_rtc import (
    ALARM_HIGH,
    ALARM_LOW,
    ALARM_STATUS,
    CLEAR_INTERRUPT,
    IRQ_ENABLED,
    TIME_HIGH,
    TIME_LOW,
    GoldfishRtc,
)
from virtkit.devices.sifive_test import SifiveTest


def test_finisher_commands():
    events = []
    d = SifiveTest(lambda kind, code: events.append((kind, code)))
    d.write(0, 4, 0x5555)
    d.write(0, 4, 0x7777)
    d.write(0, 4, 0x3333 | (42 << 16))
    d.write(0, 4, 0x1234)  # unknown: ignored
    d.write(4, 4, 0x5555)  # other offsets: ignored
    assert events == [("poweroff", 0), ("reset", 0), ("fail", 42)]
    assert d.read(0, 4) == 0


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def test_rtc_time_latch_and_set():
    c = Clock(0x1_2345_6789_ABCD)
    r = GoldfishRtc(clock=c)
    lo = r.read(TIME_LOW, 4)
    c.t += 1 << 40  # time moves on: TIME_HIGH still returns the latched half
    assert (r.read(TIME_HIGH, 4) << 32 | lo) == 0x1_2345_6789_ABCD
    r.write(TIME_HIGH, 4, 0x10)
    r.write(TIME_LOW, 4, 0x20)
    lo = r.read(TIME_LOW, 4)
    assert (r.read(TIME_HIGH, 4) << 32 | lo) == 0x10_0000_0020


def test_rtc_alarm_fires_irq():
    c = Clock(1000)
    levels = []
    r = GoldfishRtc(irq=levels.append, clock=c)
    r.write(IRQ_ENABLED, 4, 1)
    r.write(ALARM_HIGH, 4, 0)
    r.write(ALARM_LOW, 4, 2000)
    assert r.read(ALARM_STATUS, 4) == 1
    r.poll()
    assert not any(levels)
    c.t = 2500
    r.poll()
    assert levels[-1] is True and r.read(ALARM_STATUS, 4) == 0
    r.write(CLEAR_INTERRUPT, 4, 1)
    assert levels[-1] is False
