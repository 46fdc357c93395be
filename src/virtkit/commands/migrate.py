"""``virtkit migrate NAME tcp:HOST:PORT --token T``: move a running VM to another virtkit process, live.

The target waits with ``virtkit run --incoming tcp:HOST:PORT`` (it prints the token to give here). The
guest keeps running during the copy and pauses only for the last pages and its device state; a failed
or cancelled migration leaves it running where it was.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from virtkit.errors import ConfigError, VirtkitError

#: the command words this module registers (cli.py maps them to this module)
COMMANDS = ("migrate",)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``migrate``."""
    p = subparsers.add_parser("migrate", help="move a running VM to another virtkit process, live",
                              description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
                              epilog="examples:\n  virtkit run --incoming tcp:0.0.0.0:4444 -d --name web1b   "
                              "(on the target: prints the token)\n  virtkit migrate web1 tcp:10.0.0.2:4444 "
                              "--token 3f2a...\n  virtkit migrate web1 tcp:127.0.0.1:4444 --token T "
                              "--bandwidth 128M --json\n  virtkit migrate web1 --status\n  virtkit migrate "
                              "web1 --cancel   (Ctrl-C during a migrate does the same)",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="the VM to move (virtkit ps)")
    p.add_argument("uri", nargs="?", help="the target: tcp:HOST:PORT")
    p.add_argument("--token", help="the token the target printed (required with URI)")
    p.add_argument("--cancel", action="store_true", help="cancel the VM's migration (it goes on running here)")
    p.add_argument("--status", action="store_true", help="show the VM's current or last migration")
    p.add_argument("--bandwidth", help="cap the stream while the guest runs, e.g. 128M (MiB/s; default: "
                   "unlimited); the stop-and-copy runs uncapped, as QEMU's completion does")
    p.add_argument("--downtime", default="50ms", help="the first downtime goal (default 50ms; it grows, up to "
                   "--max-downtime, when the guest dirties memory fast)")
    p.add_argument("--max-downtime", default="1s", help="the ceiling of the downtime goal (default 1s)")
    p.add_argument("--no-auto-converge", action="store_true", help="never throttle the guest's vCPUs")
    p.add_argument("--postcopy", action="store_true", help="after the first pass, run the guest on the target "
                   "at once and fetch the pages it has not got on demand (userfaultfd): a guest that dirties "
                   "memory faster than the link still moves, each page once")
    p.add_argument("--copy-storage", action="store_true", help="copy the disks too, while the guest runs (for "
                   "hosts that share no storage; the target creates them in its --disk-dir)")
    p.add_argument("--json", action="store_true", help="print the final status as JSON (nothing else on stdout)")
    p.set_defaults(func=cmd_migrate)


def cmd_migrate(args: argparse.Namespace) -> int:
    """Start the migration in the VM's process, show its progress, report the end."""
    from virtkit.machine.control import request
    from virtkit.machine.migration import default_bandwidth, parse_uri
    from virtkit.units import parse_duration

    if args.cancel or args.status:
        if args.uri or (args.cancel and args.status):
            raise ConfigError("--cancel and --status take only the VM's name")
        st = request(args.name, "migrate-cancel" if args.cancel else "migration")
        st = {k: v for k, v in st.items() if k != "ok"}
        if args.json:
            print(json.dumps(st))
        elif args.cancel:
            print(f"{args.name}: migration cancelled (the VM goes on running here)")
        else:
            _print_status(args.name, st)
        return 0
    if not args.uri or not args.token:
        raise ConfigError("migrate needs the target URI and --token (or --status / --cancel)")
    parse_uri(args.uri)
    down = parse_duration(args.downtime, what="--downtime")
    ceiling = parse_duration(args.max_downtime, what="--max-downtime")
    if not 0 < down <= ceiling <= 60:
        raise ConfigError("--downtime must be positive and at most --max-downtime (at most 60 s)")
    bw = default_bandwidth(args.bandwidth)
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C cancels, even if started with it ignored
    from virtkit.daemon.client import call, remote, wait_task

    if remote() is not None:  # through virtkitd: a task (its audit log has it)
        task = call("POST", f"/vms/{args.name}/migrate", {
            "uri": args.uri, "token": args.token, "bandwidth": bw, "downtime": down, "max_downtime": ceiling,
            "auto_converge": not args.no_auto_converge, "postcopy": args.postcopy,
            "copy_storage": args.copy_storage})
        st = wait_task(task)  # (a failed migration is the task's error)
    else:
        request(args.name, "migrate", wait=30, uri=args.uri, token=args.token, bandwidth=bw, downtime=down,
                max_downtime=ceiling, auto_converge=not args.no_auto_converge, postcopy=args.postcopy,
                copy_storage=args.copy_storage)
        st = _follow(args.name, show=not args.json and sys.stderr.isatty())
    if args.json:
        print(json.dumps(st))
    elif st["state"] == "completed":
        print(f"{args.name}: migrated to {args.uri} in {st['total_seconds']:.2f} s "
              f"(downtime {st['downtime'] * 1000:.0f} ms, {st['round']} rounds, "
              f"{st['bytes_sent'] / 2**20:.1f} MiB sent"
              + (f", post-copy: {st['postcopy_requests']} pages fetched on demand" if st.get("postcopy") else "")
              + ")")
    if st["state"] != "completed":
        raise VirtkitError(f"{args.name}: migration {st['state']}: {st['error']} (the VM keeps running here)")
    return 0


def _follow(name: str, show: bool) -> dict[str, Any]:
    """Poll the VM's migration status until it ends (a progress line on a terminal)."""
    from virtkit.machine.control import ControlError, request

    last: dict[str, Any] = {}
    progress = None
    if show:
        from rich.progress import BarColumn, Progress, TextColumn

        progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"))
        progress.start()
        task = progress.add_task(f"migrating {name}", total=1, info="")
    try:
        while True:
            try:
                last = request(name, "migration", wait=15, until_end=True, timeout=0.25)
            except KeyboardInterrupt:  # Ctrl-C: cancel, then report how it ended
                try:
                    request(name, "migrate-cancel")
                except (ControlError, ValueError):
                    pass
                if progress is not None:
                    progress.update(task, info="cancelling...")
                continue
            except ControlError:
                if last.get("state") in ("active", "setup", "postcopy-active"):
                    last["state"] = "completed" if last.get("downtime") else last["state"]
                break  # the VM has gone: it stopped after a completed migration
            if progress is not None:
                total = max(last.get("ram_pages", 1), 1)
                progress.update(task, total=total, completed=min(last.get("pages_sent", 0), total),
                                info=f"round {last.get('round', 0)}, {last.get('dirty_pages', 0)} dirty, "
                                     f"{last.get('bandwidth', 0) / 2**20:.0f} MiB/s, throttle "
                                     f"{last.get('throttle', 0):.0%}, expected downtime "
                                     f"{last.get('expected_downtime', 0) * 1000:.0f} ms")
            if last.get("state") in ("completed", "failed", "cancelled"):
                break
    finally:
        if progress is not None:
            progress.stop()
    return {k: v for k, v in last.items() if k != "ok"}


def _print_status(name: str, st: dict[str, Any]) -> None:
    """The migration status as a table."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{name}: migration", show_header=False)
    t.add_column("field")
    t.add_column("value")
    for k in ("state", "error", "round", "pages_sent", "ram_pages", "dirty_pages", "bytes_sent", "bandwidth",
              "throttle", "expected_downtime", "downtime_goal", "downtime", "total_seconds"):
        if k in st and st[k] not in (None, ""):
            v = st[k]
            if k == "bandwidth":
                v = f"{v / 2**20:.1f} MiB/s"
            elif k in ("expected_downtime", "downtime_goal", "downtime"):
                v = f"{v * 1000:.0f} ms"
            elif k == "throttle":
                v = f"{v:.0%}"
            elif k == "total_seconds":
                v = f"{v:.2f} s"
            t.add_row(k.replace("_", " "), str(v))
    Console().print(t)
