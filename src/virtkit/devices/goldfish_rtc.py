"""The Goldfish real-time clock (``google,goldfish-rtc``) of QEMU's ``virt`` board.

The guest reads nanoseconds since the Unix epoch (TIME_LOW latches TIME_HIGH), may set the
clock (kept as an offset from the host clock) and arm an alarm that raises the interrupt line
when :meth:`poll` finds it due (the run loop polls it).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from virtkit.machine.state import fields, record

TIME_LOW, TIME_HIGH = 0x00, 0x04
ALARM_LOW, ALARM_HIGH = 0x08, 0x0C
IRQ_ENABLED = 0x10
CLEAR_ALARM = 0x14
ALARM_STATUS = 0x18
CLEAR_INTERRUPT = 0x1C


class GoldfishRtc:
    """A Goldfish RTC; ``clock()`` returns host nanoseconds since the epoch (replaceable in tests)."""

    STATE_KIND = "goldfish-rtc"
    STATE_VERSION = 1

    def __init__(self, irq: Callable[[bool], None] | None = None, clock: Callable[[], int] = time.time_ns) -> None:
        self.irq = irq or (lambda level: None)
        self.clock = clock
        self.offset = 0
        self.time_high = 0
        self.alarm_high = 0
        self.alarm: int | None = None
        self.irq_enabled = 0
        self.irq_pending = False

    def save(self) -> dict:
        """The guest's clock offset from the host's, the latched high words, the alarm and the interrupt."""
        return record(self, offset=self.offset, time_high=self.time_high, alarm_high=self.alarm_high,
                      alarm=self.alarm, irq_enabled=self.irq_enabled, irq_pending=self.irq_pending)

    def restore(self, state: dict) -> None:
        """Take a saved state: the guest's wall clock keeps its offset from the host's (as after a migration)."""
        f = fields(self, state)
        offset = f.int("offset", -(1 << 64), 1 << 64)
        th, ah = f.int("time_high", 0, 0xFFFFFFFF), f.int("alarm_high", 0, 0xFFFFFFFF)
        alarm = f.opt_int("alarm")
        en, pend = f.int("irq_enabled", 0, 1), f.bool("irq_pending")
        self.offset, self.time_high, self.alarm_high, self.alarm = offset, th, ah, alarm
        self.irq_enabled, self.irq_pending = en, pend
        self.irq(bool(en and pend))

    def now(self) -> int:
        """Guest time in nanoseconds."""
        return (self.clock() + self.offset) & 0xFFFFFFFFFFFFFFFF

    def poll(self) -> None:
        """Fire the alarm if it is due."""
        if self.alarm is not None and self.now() >= self.alarm:
            self.alarm = None
            self.irq_pending = True
            self.irq(bool(self.irq_enabled))

    def read(self, offset: int, size: int) -> int:
        """Guest register read."""
        if offset == TIME_LOW:
            t = self.now()
            self.time_high = t >> 32
            return t & 0xFFFFFFFF
        if offset == TIME_HIGH:
            return self.time_high
        if offset == ALARM_LOW:
            return (self.alarm or 0) & 0xFFFFFFFF
        if offset == ALARM_HIGH:
            return (self.alarm or 0) >> 32
        if offset == IRQ_ENABLED:
            return self.irq_enabled
        if offset == ALARM_STATUS:
            return int(self.alarm is not None)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        """Guest register write (TIME_HIGH then TIME_LOW sets the clock; ALARM_LOW arms the alarm)."""
        value &= 0xFFFFFFFF
        if offset == TIME_HIGH:
            self.time_high = value
        elif offset == TIME_LOW:
            self.offset = ((self.time_high << 32) | value) - self.clock()
        elif offset == ALARM_HIGH:
            self.alarm_high = value
        elif offset == ALARM_LOW:
            self.alarm = (self.alarm_high << 32) | value
            self.poll()
        elif offset == IRQ_ENABLED:
            self.irq_enabled = value & 1
            self.irq(bool(self.irq_enabled and self.irq_pending))
        elif offset == CLEAR_ALARM:
            self.alarm = None
        elif offset == CLEAR_INTERRUPT:
            self.irq_pending = False
            self.irq(False)
