"""The SiFive test device (``sifive,test0``): how a guest on QEMU's ``virt`` board powers off.

A 32-bit write at offset 0 of ``0x5555`` means power off, ``0x7777`` reboot and
``0x3333 | code << 16`` a failure exit with ``code``. Linux reaches it through the
``syscon-poweroff`` / ``syscon-reboot`` nodes, OpenSBI through its own reset driver.
"""

from __future__ import annotations

from collections.abc import Callable

from virtkit.machine.state import StateError, fields, record

FINISHER_FAIL = 0x3333
FINISHER_PASS = 0x5555
FINISHER_RESET = 0x7777


class SifiveTest:
    """Calls ``on_event(kind, code)`` with kind ``"poweroff"``, ``"reset"`` or ``"fail"``."""

    STATE_KIND = "sifive-test"
    STATE_VERSION = 1

    def __init__(self, on_event: Callable[[str, int], None]) -> None:
        self.on_event = on_event
        self.last: tuple[str, int] | None = None

    def save(self) -> dict:
        """The device has no state beyond the last command seen (kept for ``--stats``)."""
        return record(self, last=list(self.last) if self.last else None)

    def restore(self, state: dict) -> None:
        """Take a saved state."""
        f = fields(self, state)
        last = f.state.get("last")
        if last is not None:
            last = f.list("last", 2)
            if last[0] not in ("poweroff", "reset", "fail") or not isinstance(last[1], int):
                raise StateError(f"sifive-test state: bad last event {last!r}")
        self.last = tuple(last) if last else None  # type: ignore[assignment]

    def read(self, offset: int, size: int) -> int:
        """Reads return zero (the register is write-only)."""
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        """Decode a finisher command; unknown values are ignored, as on QEMU."""
        if offset != 0:
            return
        status, code = value & 0xFFFF, (value >> 16) & 0xFFFF
        if status == FINISHER_PASS:
            self.last = ("poweroff", 0)
        elif status == FINISHER_RESET:
            self.last = ("reset", 0)
        elif status == FINISHER_FAIL:
            self.last = ("fail", code)
        else:
            return
        self.on_event(*self.last)
