"""The host terminal as a VM console: raw mode, Ctrl-A escapes, piped input, signals, ``--exec`` output.

Used by ``virtkit run`` (the console of a VM in this process) and ``virtkit console NAME`` (the console of
a VM in another process, over its control socket). Signals never leave the terminal in raw mode: SIGTERM,
SIGHUP and SIGINT stop the VM (or detach the viewer) cleanly and the terminal is restored.
"""

from __future__ import annotations

import os
import signal
import sys
import termios
import tty
from collections.abc import Callable
from typing import Any

CTRL_A = 0x01
ESCAPES = {
    "x": "quit (stop the VM)",
    "s": "print statistics",
    "p": "pause / resume the VM",
    "b": "send a break (then a key: Linux SysRq)",
    "h": "this help",
    "a": "send Ctrl-A to the guest",
}
VIEWER_ESCAPES = {"d": "detach (the VM keeps running)", "h": "this help", "a": "send Ctrl-A to the guest"}


def help_text(escapes: dict[str, str]) -> bytes:
    """The Ctrl-A help as terminal bytes."""
    lines = ["", "virtkit console escapes:"] + [f"  Ctrl-A {k}   {v}" for k, v in escapes.items()]
    return ("\r\n".join(lines) + "\r\n").encode()


def stdout_write(data: bytes) -> None:
    """Write all of ``data`` to fd 1 (also when stdout is non-blocking)."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(1, view)
        except BlockingIOError:
            import select

            select.select([], [1], [], 1.0)
            continue
        view = view[n:]


class ExecFilter:
    """Console sink for ``--exec``: swallow the boot log, pass the command's lines, catch its status."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        from virtkit.images.initramfs import EXEC_BEGIN, EXIT_MARK

        self.begin, self.mark = EXEC_BEGIN, EXIT_MARK
        self.write = write
        self.buf = bytearray()
        self.started = False
        self.status: int | None = None
        self.output = bytearray()  # what the command printed

    def __call__(self, data: bytes) -> None:
        if self.status is not None:
            return
        self.buf += data
        while b"\n" in self.buf:
            line, _, rest = self.buf.partition(b"\n")
            self.buf = bytearray(rest)
            text = line.decode(errors="replace").rstrip("\r")
            if not self.started:
                if text.strip() == self.begin:
                    self.started = True
                continue
            head, mark, tail = text.rpartition(self.mark)
            if mark and tail.strip().isdigit():  # output without a final newline ends up on the same line
                if head:
                    self._out(head.encode())
                self.status = int(tail.strip())
                return
            self._out(line.rstrip(b"\r") + b"\n")

    def _out(self, data: bytes) -> None:
        self.output += data
        self.write(data)


class StopSignals:
    """While active, SIGTERM, SIGHUP and SIGINT call ``on_signal(name)`` instead of killing the process."""

    SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

    def __init__(self, on_signal: Callable[[str], None]) -> None:
        self.on_signal = on_signal
        self.saved: dict[int, Any] = {}
        self.received: str | None = None

    def __enter__(self) -> StopSignals:
        for s in self.SIGNALS:
            try:
                self.saved[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signal.Signals(signum).name
        self.on_signal(self.received)

    def __exit__(self, *exc: object) -> None:
        for s, h in self.saved.items():
            signal.signal(s, h)
        self.saved.clear()


class RawTerminal:
    """Raw mode on ``fd`` while active (when it is a terminal); restored on exit whatever happens."""

    def __init__(self, fd: int = 0) -> None:
        self.fd = fd
        self.is_tty = os.isatty(fd)
        self.saved: list | None = None

    def __enter__(self) -> RawTerminal:
        if self.is_tty:
            self.saved = termios.tcgetattr(self.fd)
            tty.setraw(self.fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
            self.saved = None


class EscapeReader:
    """Splits terminal input into guest bytes and Ctrl-A commands (``on_escape(key)``)."""

    def __init__(self, on_escape: Callable[[str], None], enabled: bool = True) -> None:
        self.on_escape = on_escape
        self.enabled = enabled
        self.escape = False

    def feed(self, data: bytes) -> bytes:
        """The bytes for the guest; escapes are handled on the way."""
        out = bytearray()
        for b in data:
            if self.escape:
                self.escape = False
                key = chr(b).lower()
                if b == CTRL_A or key == "a":
                    out.append(CTRL_A)
                else:
                    self.on_escape(key)
                continue
            if b == CTRL_A and self.enabled:
                self.escape = True
                continue
            out.append(b)
        return bytes(out)


def print_stats(stats: dict[str, Any], title: str = "virtkit run", to_terminal_raw: bool = False) -> None:
    """A rich table of engine and device counters on stderr."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    t.add_column("counter")
    t.add_column("value", justify="right")
    if stats.get("core"):
        t.add_row("core", stats["core"])
    insns, secs = stats.get("instructions", 0), stats.get("run_seconds", 0.0)
    if stats.get("host"):  # the KVM engine: the host's kind of KVM; guest instructions are not counted
        t.add_row("engine", f"KVM on {stats['host']} ({stats.get('kvm_module')})"
                  + (", compiled run loop" if stats.get("compiled_loop") else ""))
    else:
        t.add_row("instructions", f"{insns:,}")
    t.add_row("run seconds", f"{secs:.3f}")
    if not stats.get("host"):
        t.add_row("MIPS", f"{insns / secs / 1e6:.1f}" if secs > 0 else "-")  # a run too short to time: no rate
    if insns and stats.get("jit_instructions"):
        t.add_row("run by JIT code", f"{stats['jit_instructions'] / insns:.0%}")
    for h, n in enumerate(stats.get("per_hart", [])):
        t.add_row(f"hart {h} instructions", f"{n:,}")
    t.add_row("traps", f"{stats.get('traps', 0):,}")
    for cause, n in stats.get("traps_by_cause", {}).items():
        t.add_row(f"  {cause}", f"{n:,}")
    for reason, n in stats.get("exits", {}).items():
        if n:
            t.add_row(f"exits: {reason}", f"{n:,}")
    inside = stats.get("sbi_in_core", {})
    for ext, n in stats.get("sbi_calls", {}).items():  # the builtin SBI: calls by extension
        if n:
            t.add_row(f"SBI calls: {ext}", f"{n:,} ({inside.get(ext, 0):,} in the core)")
    for what, n in stats.get("monitor", {}).items():  # trap and emulate: what the monitor did
        t.add_row(f"monitor: {what.replace('_', ' ')}", f"{n:,}")
    for dev, n in sorted(stats.get("mmio", {}).items()):
        t.add_row(f"MMIO: {dev}", f"{n:,}")
    for dev, n in sorted(stats.get("pio", {}).items()):
        t.add_row(f"port I/O: {dev}", f"{n:,}")
    if stats.get("fast_mmio_reads") or stats.get("fast_mmio_writes"):
        t.add_row("MMIO served without exit", f"{stats.get('fast_mmio_reads', 0):,} reads, "
                  f"{stats.get('fast_mmio_writes', 0):,} writes")
    t.add_row("WFI sleeps", f"{stats.get('wfi_sleeps', 0):,} ({stats.get('wfi_seconds', 0.0):.3f} s)")
    t.add_row("interrupt line changes", f"{stats.get('irq_changes', 0):,}")
    for dev, counters in stats.get("devices", {}).items():
        for k, v in counters.items():
            if v:
                t.add_row(f"{dev}: {k}", f"{v:,}")
    console = Console(stderr=True)
    if to_terminal_raw:
        with console.capture() as cap:
            console.print(t)
        os.write(2, cap.get().replace("\n", "\r\n").encode())
    else:
        console.print(t)


def stdin_reader(fd: int, deliver: Callable[[bytes], None], on_eof: Callable[[], None]) -> Callable[[], None]:
    """An I/O-loop callback that reads ``fd`` and hands the bytes on (``on_eof`` at end of input)."""

    def read() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            on_eof()
        else:
            deliver(data)
    return read


def is_regular_or_null(fd: int) -> bool:
    """Whether ``fd`` cannot be polled (a regular file, /dev/null): read it whole instead."""
    import stat

    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return True
    return stat.S_ISREG(mode) or stat.S_ISCHR(mode) and not os.isatty(fd)


def read_all(fd: int, limit: int = 16 << 20) -> bytes:
    """The whole of a non-pollable input (up to ``limit`` bytes)."""
    out = bytearray()
    while len(out) < limit:
        try:
            chunk = os.read(fd, 1 << 20)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return bytes(out)


def stderr_line(text: str, raw: bool = False) -> None:
    """A message on stderr (``\\r\\n`` line ends while the terminal is raw)."""
    end = "\r\n" if raw else "\n"
    sys.stderr.write(text.replace("\n", end) + end)
    sys.stderr.flush()
