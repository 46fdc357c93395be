"""``virtkit run`` for the riscv64-virt board: OpenSBI + Linux, console on the terminal.

Called by :mod:`virtkit.commands.run` (which also keeps the bare-metal ``--bios none`` path).
Interactive mode puts the terminal in raw mode (``Ctrl-A x`` quits, ``Ctrl-A h`` helps);
``--exec CMD`` boots, runs CMD in the guest (contract with the default initramfs: the command
travels base64-encoded as ``virtkit.exec=`` on the kernel command line), prints only its output
and exits with its status.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import termios
import tty
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from virtkit.errors import ConfigError

if TYPE_CHECKING:  # imported where used: `virtkit run --help` and --bios none need no board (~0.3 s of imports)
    from virtkit.boards.riscv_virt import BoardConfig, RiscvVirt

CTRL_A = 0x01
EXEC_BEGIN = "virtkit-exec-begin"
EXIT_MARK = "virtkit-exit-status:"
HELP = (b"\r\nvirtkit console escapes:\r\n  Ctrl-A x   quit (stop the VM)\r\n  Ctrl-A s   print statistics\r\n"
        b"  Ctrl-A h   this help\r\n  Ctrl-A a   send Ctrl-A to the guest\r\n")


def add_board_arguments(p: argparse.ArgumentParser) -> None:
    """The options only the board path has (the bare-metal parser already has --kernel, --mem...)."""
    p.add_argument("--disk", action="append", default=[], metavar="PATH[,ro]",
                   help="virtio-blk disk (raw or qcow2; repeatable; first is /dev/vda)")
    p.add_argument("--net", action="append", default=[], metavar="tap:NAME|switch:NAME[,vlan=N]",
                   help="virtio-net NIC on a TAP device or a port of a virtkit switch (repeatable)")
    p.add_argument("--exec", dest="exec_cmd", metavar="CMD",
                   help="run CMD in the guest, print its output, exit with its status")
    p.add_argument("--timeout", type=float, default=None, help="stop the guest after this many seconds")
    p.add_argument("--no-rng", action="store_true", help="no virtio-rng device")


class ExecFilter:
    """Console sink for ``--exec``: swallow the boot log, pass the command's lines, catch its status."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self.write = write
        self.buf = bytearray()
        self.started = False
        self.status: int | None = None
        self.log = bytearray()  # everything, for error reports

    def __call__(self, data: bytes) -> None:
        self.log += data
        if self.status is not None:
            return
        self.buf += data
        while b"\n" in self.buf:
            line, _, rest = self.buf.partition(b"\n")
            self.buf = bytearray(rest)
            text = line.decode(errors="replace").rstrip("\r")
            if not self.started:
                if text.strip() == EXEC_BEGIN:
                    self.started = True
                continue
            head, mark, tail = text.rpartition(EXIT_MARK)
            if mark and tail.strip().isdigit():  # output without a final newline ends up on the same line
                if head:
                    self.write(head.encode())
                self.status = int(tail.strip())
                return
            self.write(line.rstrip(b"\r") + b"\n")


def exec_command_line(cmd: str) -> str:
    """Wrap ``cmd`` so the guest prints a start marker first (the boot log stays out of the output)."""
    if not cmd.strip():
        raise ConfigError("--exec needs a non-empty command")
    from virtkit.images import exec_append

    quoted = "'" + cmd.replace("'", "'\\''") + "'"
    return exec_append(f"echo {EXEC_BEGIN}; eval {quoted}")


class TerminalConsole:
    """The host terminal as the guest console: raw mode, Ctrl-A escapes, input via the I/O loop."""

    def __init__(self, board: RiscvVirt, stats: Callable[[], None], fd: int | None = None) -> None:
        self.board = board
        self.stats = stats
        self.fd = sys.stdin.fileno() if fd is None else fd
        self.saved = None
        self.escape = False
        self.is_tty = os.isatty(self.fd)

    def __enter__(self) -> TerminalConsole:
        if self.is_tty:
            self.saved = termios.tcgetattr(self.fd)
            tty.setraw(self.fd)
        attach_input(self.board, self.fd, self.on_input)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
            self.saved = None

    def on_input(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        if not data:  # EOF on a pipe: no more input
            self.board.vm.io.remove_reader(self.fd)
            return
        out = bytearray()
        for b in data:
            if self.escape:
                self.escape = False
                if b in (ord("x"), ord("X")):
                    self.board.vm.stop("stopped")
                    return
                if b in (ord("h"), ord("H"), ord("?")):
                    os.write(1, HELP)
                elif b in (ord("s"), ord("S")):
                    self.stats()
                elif b in (ord("a"), CTRL_A):
                    out.append(CTRL_A)
                continue
            if b == CTRL_A and self.is_tty:
                self.escape = True
                continue
            out.append(b)
        if out:
            self.board.uart.feed(bytes(out))


def _stdout_write(data: bytes) -> None:
    try:
        os.write(1, data)
    except BlockingIOError:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


def board_config(args: argparse.Namespace, mem_bytes: int) -> BoardConfig:
    """Turn ``virtkit run`` arguments into a :class:`BoardConfig`, resolving the default guest images."""
    from virtkit.boards.riscv_virt import DEFAULT_APPEND, BoardConfig, DiskSpec, MiB, NetSpec

    kernel, initrd, firmware = args.kernel, args.initrd, args.bios
    if kernel is None:
        from virtkit.images import default_guest

        guest = default_guest(progress=sys.stderr.isatty())
        kernel = str(guest.kernel)
        initrd = initrd or str(guest.initrd)
        firmware = str(guest.firmware) if firmware in (None, "default") else firmware
    if firmware in (None, "default"):
        from virtkit.images import firmware_path

        firmware = str(firmware_path())
    append = args.append or DEFAULT_APPEND
    if args.exec_cmd is not None:
        append += " " + exec_command_line(args.exec_cmd)
    if mem_bytes % MiB:
        raise ConfigError(f"--mem must be a whole number of MiB for this board: {mem_bytes} bytes")
    return BoardConfig(kernel=kernel, initrd=initrd, firmware=firmware, append=append, cpus=args.cpus,
                       mem_mib=mem_bytes // MiB, disks=[DiskSpec.parse(d) for d in args.disk],
                       nets=[NetSpec.parse(n) for n in args.net], rng=not args.no_rng)


def run_board(args: argparse.Namespace, mem_bytes: int) -> int:
    """Boot the board; returns the process exit status (guest poweroff 0, ``--exec`` the command's)."""
    from virtkit.boards.riscv_virt import RiscvVirt

    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError(f"--timeout must be positive: {args.timeout}")
    cfg = board_config(args, mem_bytes)
    exec_filter = ExecFilter(_stdout_write) if args.exec_cmd is not None else None
    quiet = exec_filter is not None or args.json
    sink: Callable[[bytes], None]
    if exec_filter is not None:
        sink = exec_filter
    elif args.json:
        log = bytearray()
        sink = log.extend
    else:
        sink = _stdout_write
    board = RiscvVirt(cfg, console=sink)

    def show_stats() -> None:
        print_stats(board.stats(), to_terminal_raw=True)

    if quiet:
        if not os.isatty(0):  # piped input still reaches the guest's console
            attach_input(board, 0, _make_pipe_feeder(board))
        res = board.run(args.timeout)
    else:
        with TerminalConsole(board, show_stats):
            res = board.run(args.timeout)
    stats = board.stats()
    if res.reason == "error":
        print(f"virtkit: guest stopped: {res.message}", file=sys.stderr)
    elif res.reason == "timeout":
        print(f"virtkit: guest still running after {args.timeout} s: stopped", file=sys.stderr)
    rc = res.exit_status
    if exec_filter is not None:
        if exec_filter.status is None:
            if res.reason == "poweroff":
                print("virtkit: the guest powered off without reporting the command's exit status "
                      "(is the initramfs virtkit's?)", file=sys.stderr)
            rc = rc or 1
        else:
            rc = exec_filter.status
    if args.json:
        out: dict[str, Any] = {"reason": res.reason, "code": res.code, "exit_status": rc,
                               "seconds": round(res.seconds, 3), "stats": stats}
        if exec_filter is not None:
            out["command_exit_status"] = exec_filter.status
        print(json.dumps(out, default=str))
    elif args.stats:
        print_stats(stats)
    return rc


def attach_input(board: RiscvVirt, fd: int, callback: Callable[[], None]) -> None:
    """Watch ``fd`` in the I/O loop; a regular file (or /dev/null) cannot be polled: feed it whole."""
    try:
        board.vm.io.add_reader(fd, callback)
    except PermissionError:
        data = os.read(fd, 1 << 20)
        if data:
            board.uart.feed(data)


def _make_pipe_feeder(board: RiscvVirt) -> Callable[[], None]:
    fd = sys.stdin.fileno()

    def feed() -> None:
        data = os.read(fd, 4096)
        if not data:
            board.vm.io.remove_reader(fd)
        else:
            board.uart.feed(data)
    return feed


def print_stats(stats: dict[str, Any], to_terminal_raw: bool = False) -> None:
    """A rich table of engine and device counters on stderr."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title="virtkit run: riscv64-virt")
    t.add_column("counter")
    t.add_column("value", justify="right")
    from virtkit.engines.riscv.engine import selected_core

    t.add_row("core", selected_core())
    insns, secs = stats.get("instructions", 0), stats.get("run_seconds", 0.0)
    t.add_row("instructions", f"{insns:,}")
    t.add_row("run seconds", f"{secs:.3f}")
    if secs > 0:
        t.add_row("MIPS", f"{insns / secs / 1e6:.1f}")
    if insns and stats.get("jit_instructions"):
        t.add_row("run by JIT code", f"{stats['jit_instructions'] / insns:.0%}")
    for h, n in enumerate(stats.get("per_hart", [])):
        t.add_row(f"hart {h} instructions", f"{n:,}")
    t.add_row("traps", f"{stats.get('traps', 0):,}")
    for reason, n in stats.get("exits", {}).items():
        t.add_row(f"exits: {reason}", f"{n:,}")
    for dev, n in sorted(stats.get("mmio", {}).items()):
        t.add_row(f"MMIO: {dev}", f"{n:,}")
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

