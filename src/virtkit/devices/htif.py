"""HTIF, the Berkeley host-target interface of Spike and riscv-tests, as a device on the machine's bus.

The program stores a 64-bit command to its ``tohost`` symbol (a word in RAM); the engine exits with an
MMIO_WRITE of that word, the bus hands it to :meth:`Htif.write` and :meth:`Htif.handle` interprets it:

* ``device 0, cmd 0``, value & 1: the program ends with exit code ``value >> 1``
  (0 = pass; otherwise the number of the failing test);
* ``device 0, cmd 0``, even value: a pointer to a ``magic_mem`` syscall block
  ``[which, a0, a1, a2, ...]``; ``write`` (64) and ``exit`` (93) are supported;
* ``device 1, cmd 1``: console putchar of the low byte.

Requests are acknowledged by clearing ``tohost`` and writing ``fromhost`` as Spike does.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from virtkit.machine.memory import GuestMemory
from virtkit.machine.state import fields, record

SYS_WRITE = 64
SYS_EXIT = 93


class Htif:
    """Interprets tohost commands; ``exit_code`` is set once the program has finished."""

    STATE_KIND = "htif"
    STATE_VERSION = 1

    def __init__(self, mem: GuestMemory, tohost: int, fromhost: int | None = None,
                 console: Callable[[bytes], None] | None = None,
                 on_exit: Callable[[int], None] | None = None) -> None:
        self.mem = mem
        self.tohost = tohost
        self.fromhost = fromhost
        self.console = console or _stdout
        self.on_exit = on_exit
        self.exit_code: int | None = None
        self.output = bytearray()

    def save(self) -> dict:
        """The exit code once the program has finished (tohost and fromhost are words of guest RAM)."""
        return record(self, exit_code=self.exit_code)

    def restore(self, state: dict) -> None:
        """Take a saved state."""
        self.exit_code = fields(self, state).opt_int("exit_code")

    # -- the bus interface (the tohost word) ------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        """Reads of tohost come from RAM; the engine never exits for them."""
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        """A store to tohost (the whole 64-bit word, as the engine reports it)."""
        code = self.handle(value)
        if code is not None and self.on_exit is not None:
            self.on_exit(code)

    def _emit(self, data: bytes) -> None:
        self.output += data
        self.console(data)

    def _ack(self, value: int) -> None:
        self.mem.write_u64(self.tohost, 0)
        if self.fromhost is not None and self.mem.contains(self.fromhost, 8):
            self.mem.write_u64(self.fromhost, value)

    def handle(self, value: int) -> int | None:
        """Process one tohost value; return the exit code when the program has finished."""
        value &= (1 << 64) - 1
        if value == 0:
            return None
        device = value >> 56
        cmd = (value >> 48) & 0xFF
        payload = value & ((1 << 48) - 1)
        if device == 0 and cmd == 0:
            if payload & 1:
                self.exit_code = payload >> 1
                self.mem.write_u64(self.tohost, 0)
                return self.exit_code
            self._syscall(payload)
            self._ack(1)
        elif device == 1 and cmd == 1:
            self._emit(bytes([payload & 0xFF]))
            self._ack((1 << 56) | (1 << 48))
        else:
            self._ack((device << 56) | (cmd << 48))
        return self.exit_code

    def _syscall(self, addr: int) -> None:
        if not self.mem.contains(addr, 64):
            self._emit(f"[htif: bad syscall block {addr:#x}]\n".encode())
            return
        which, a0, a1, a2 = (self.mem.read_u64(addr + 8 * i) for i in range(4))
        ret = -38 & ((1 << 64) - 1)  # -ENOSYS
        if which == SYS_WRITE and a0 in (1, 2) and self.mem.contains(a1, a2):
            self._emit(self.mem.read(a1, a2))
            ret = a2
        elif which == SYS_EXIT:
            self.exit_code = a0
            ret = 0
        self.mem.write_u64(addr, ret)


def _stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
