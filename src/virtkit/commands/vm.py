"""``virtkit ps | pause | resume | stop | kill | console``: running VMs, from any terminal.

Each VM started by ``virtkit run`` has a name and a control socket; these commands talk to it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from typing import Any

#: the command words this module registers (cli.py maps them to this module)
COMMANDS = ("ps", "pause", "resume", "stop", "kill", "console")


def _sub(subparsers: argparse._SubParsersAction, name: str, help: str, example: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                                 epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the VM control commands."""
    p = _sub(subparsers, "ps", "list running VMs (name, pid, state, harts, memory, uptime, MIPS)",
             "virtkit ps --json")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_ps)

    p = _sub(subparsers, "pause", "pause a VM: every vCPU stops, guest time stands still", "virtkit pause web1")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_simple, op="pause")

    p = _sub(subparsers, "resume", "resume a paused VM", "virtkit resume web1")
    p.add_argument("name")
    p.add_argument("--catch-up", action="store_true", help="guest time jumps by the time spent paused")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_simple, op="resume")

    p = _sub(subparsers, "stop", "ask a VM's guest to power off (then kill it after --timeout)",
             "virtkit stop web1 --timeout 10")
    p.add_argument("name")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before the VM is killed (default 30)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_simple, op="stop")

    p = _sub(subparsers, "kill", "stop a VM at once", "virtkit kill web1")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_simple, op="kill")

    p = _sub(subparsers, "console", "attach this terminal to a VM's serial console (Ctrl-A d detaches)",
             "virtkit console web1")
    p.add_argument("name")
    p.add_argument("--read-only", action="store_true", help="watch only (another viewer may be typing)")
    p.add_argument("--force", action="store_true", help="take the keyboard from the viewer that has it")
    p.set_defaults(func=cmd_console)


def _fmt_uptime(s: float) -> str:
    s = int(s)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def cmd_ps(args: argparse.Namespace) -> int:
    """List the running VMs."""
    from virtkit.daemon.client import call, remote
    from virtkit.machine.control import list_vms
    from virtkit.units import format_size

    if remote() is not None:  # the daemon's view: its running VMs, as their control sockets tell them
        vms = [v["live"] or {"name": v["name"], "state": v["state"], "pid": v["pid"]}
               for v in call("GET", "/vms?limit=1000")["items"] if v["state"] != "stopped"]
    else:
        vms = list_vms()
    if args.json:
        print(json.dumps(vms, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="virtkit VMs")
    for col in ("NAME", "PID", "STATE", "HARTS", "MEMORY", "UPTIME", "MIPS", "BOARD"):
        t.add_column(col, justify="right" if col in ("PID", "HARTS", "MEMORY", "MIPS") else "left")
    for v in vms:
        state = v.get("state", "?") + (f" ({v['reason']})" if v.get("reason") and v.get("state") != "running" else "")
        t.add_row(v.get("name", "?"), str(v.get("pid", "")), state, str(v.get("cpus", "")),
                  format_size(v["memory"]) if isinstance(v.get("memory"), int) else "",
                  _fmt_uptime(v.get("uptime", 0)), f"{v.get('mips', 0):.1f}", v.get("board", ""))
    Console().print(t if vms else "no VM is running")
    return 0


def cmd_simple(args: argparse.Namespace) -> int:
    """pause / resume / stop / kill."""
    from virtkit.machine.control import request

    extra: dict[str, Any] = {}
    wait = 10.0
    if args.op == "resume" and args.catch_up:
        extra["catch_up"] = True
    if args.op == "stop":
        extra["timeout"] = args.timeout
        wait = args.timeout + 40
    if args.op == "kill":
        wait = 40
    from virtkit.daemon.client import call, remote

    if remote() is not None:
        q = f"?timeout={args.timeout}" if args.op == "stop" else "?catch_up=true" if extra.get("catch_up") else ""
        vm = call("POST", f"/vms/{args.name}/{args.op}{q}", timeout=wait + 10)
        reply = {"state": vm["state"], "reason": vm["state"]}
    else:
        reply = request(args.name, args.op, wait=wait, **extra)
    if args.json:
        print(json.dumps({"name": args.name, **reply}))
    elif args.op in ("stop", "kill"):
        print(f"{args.name}: {reply.get('reason', 'stopped')}")
    else:
        print(f"{args.name}: {reply.get('state', 'ok')}")
    return 0


def _console_through_daemon(args: argparse.Namespace) -> int:
    """The console over the daemon's WebSocket (``--remote``, or a virtkitd on this host): the same terminal
    handling as on the control socket (Ctrl-A d detaches)."""
    import threading

    from websockets.exceptions import ConnectionClosed

    from virtkit.commands import _terminal as term
    from virtkit.daemon.client import RemoteError, open_console

    ws = open_console(args.name, write=not args.read_only, force=args.force)
    raw = term.RawTerminal(0)
    detach = threading.Event()
    why = ["detached"]

    def on_escape(key: str) -> None:
        if key == "d":
            detach.set()
        elif key in ("h", "?"):
            os.write(1, term.help_text(term.VIEWER_ESCAPES))

    def pump() -> None:
        try:
            while True:
                data = ws.recv()
                term.stdout_write(data if isinstance(data, bytes) else data.encode())
        except ConnectionClosed as err:
            rcvd = err.rcvd
            if rcvd is not None and rcvd.code >= 4000:
                why[0] = f"refused: {rcvd.reason}"
            else:
                why[0] = "the VM stopped"
            detach.set()

    esc = term.EscapeReader(on_escape, enabled=raw.is_tty)
    print(f"virtkit: attached to {args.name} through virtkitd" + (" (Ctrl-A d detaches)" if raw.is_tty else ""),
          file=sys.stderr)
    reader = threading.Thread(target=pump, daemon=True)
    with term.StopSignals(lambda name: detach.set()), raw:
        reader.start()
        import selectors

        sel = selectors.DefaultSelector()
        eof_at = None
        try:
            sel.register(0, selectors.EVENT_READ)
        except PermissionError:  # (stdin is a regular file, e.g. /dev/null: nothing will be typed)
            eof_at = time.monotonic()
        while not detach.is_set():
            if eof_at is not None and time.monotonic() - eof_at > 1.0:
                break
            if eof_at is None and sel.select(0.2):
                data = os.read(0, 4096)
                if not data:
                    sel.unregister(0)
                    eof_at = time.monotonic()
                    continue
                data = esc.feed(data)
                if data and not args.read_only:
                    try:
                        ws.send(data)
                    except ConnectionClosed:
                        break
            elif eof_at is not None:
                time.sleep(0.1)
    ws.close()
    reader.join(2)
    print(f"\r\nvirtkit: {why[0]}", file=sys.stderr)
    if why[0].startswith("refused"):
        raise RemoteError(f"console of {args.name!r} {why[0]}")
    return 0


def cmd_console(args: argparse.Namespace) -> int:
    """Attach to a VM's console until Ctrl-A d (or the VM ends)."""
    from virtkit.commands import _terminal as term
    from virtkit.daemon.client import remote
    from virtkit.machine.control import ControlError, connect

    if remote() is not None:
        return _console_through_daemon(args)

    s = connect(args.name)
    s.sendall(json.dumps({"op": "console", "write": not args.read_only, "force": args.force}).encode() + b"\n")
    head = b""
    while b"\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise ControlError(f"VM {args.name!r} closed the connection")
        head += chunk
    line, _, rest = head.partition(b"\n")
    try:
        reply = json.loads(line)
    except ValueError:
        raise ControlError(f"VM {args.name!r} sent a malformed reply") from None
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "console refused")))
    s.settimeout(None)
    raw = term.RawTerminal(0)
    detach = [False]

    def on_escape(key: str) -> None:
        if key == "d":
            detach[0] = True
        elif key in ("h", "?"):
            os.write(1, term.help_text(term.VIEWER_ESCAPES))

    esc = term.EscapeReader(on_escape, enabled=raw.is_tty)
    if not raw.is_tty:
        print(f"virtkit: attached to {args.name} (end of input detaches)", file=sys.stderr)
    else:
        print(f"virtkit: attached to {args.name} (Ctrl-A d detaches, Ctrl-A h helps)", file=sys.stderr)
    ended = "detached"
    with term.StopSignals(lambda name: detach.__setitem__(0, True)), raw:
        if rest:
            term.stdout_write(rest)
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(s, selectors.EVENT_READ)
        eof_at = None
        try:
            sel.register(0, selectors.EVENT_READ)  # read-only viewers too: Ctrl-A d, end of input
        except PermissionError:  # (stdin is a regular file, e.g. /dev/null: nothing will be typed)
            eof_at = time.monotonic()
        while not detach[0]:
            if eof_at is not None and time.monotonic() - eof_at > 1.0:
                break  # end of input: detach once what it caused has had a moment to arrive
            for key, _ in sel.select(0.2):
                if key.fileobj is s:
                    try:
                        data = s.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        ended = "the VM stopped"
                        detach[0] = True
                        break
                    term.stdout_write(data)
                else:
                    data = os.read(0, 4096)
                    if not data:
                        sel.unregister(0)
                        eof_at = time.monotonic()
                        continue
                    data = esc.feed(data)
                    if data and not args.read_only:
                        s.sendall(data)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()
    term.stderr_line(f"virtkit: {ended} ({args.name})")
    return 0
