"""``virtkit backup NAME --to FILE|POOL/VOL [--incremental]``: copy a VM's disk as of one instant while it runs.

The VM pauses for milliseconds (the instant); then the copy runs while the guest keeps writing: what it
overwrites is saved first (copy-before-write), so the backup is the disk exactly as it was at the instant.
``--incremental`` copies only what changed since the last backup (a dirty bitmap kept in the qcow2 disk)
into a qcow2 overlay on that backup. NAME may also be a disk image or POOL/VOL no VM is using (offline).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from virtkit.errors import ConfigError, VirtkitError

#: the command words this module registers (cli.py maps them to this module)
COMMANDS = ("backup",)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``backup``."""
    doc = __doc__.split("\n\n")
    p = subparsers.add_parser("backup", help="copy a running VM's disk as of one instant (full or incremental)",
                              description=doc[0] + "\n\n" + doc[1],
                              epilog="examples:\n  virtkit backup web1 --to /backup/web1-mon.qcow2\n"
                              "  virtkit backup web1 --to /backup/web1-tue.qcow2 --incremental\n"
                              "  virtkit backup web1 --to vault/web1-full --disk 1     (a pool volume)\n"
                              "  virtkit backup vm0.qcow2 --to copy.qcow2              (offline)\n"
                              "  virtkit backup web1 --to /backup/web1-mon/             (every disk, one instant)\n"
                              "  virtkit backup web1 --status | --cancel\n"
                              "  pull mode: virtkit nbd serve --vm web1 --bitmap virtkit-backup",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", metavar="NAME", help="a running VM (virtkit ps), or a disk image / POOL/VOL")
    p.add_argument("--to", metavar="TARGET", help="new file (qcow2 unless .raw/.img) or POOL/VOLUME to create, or "
                   "DIR/: every disk of the VM as of one instant, with its config (vm.json)")
    p.add_argument("--incremental", action="store_true",
                   help="copy only what changed since the last backup (a qcow2 overlay on it)")
    p.add_argument("--base", metavar="BACKUP", help="the previous backup to build on (default: the last one "
                   "taken with this bitmap)")
    p.add_argument("--bitmap", default="virtkit-backup", help="the dirty bitmap that counts the changes "
                   "(default virtkit-backup)")
    p.add_argument("--disk", type=int, metavar="N", help="which disk (default: the only one)")
    p.add_argument("--speed", metavar="RATE", help="copy at most RATE bytes per second, e.g. 64M (default: "
                   "as fast as the disks go)")
    p.add_argument("-O", dest="fmt", choices=["qcow2", "raw"], help="target format (default from the name)")
    p.add_argument("--status", action="store_true", help="show the VM's current or last backup")
    p.add_argument("--cancel", action="store_true", help="cancel the VM's backup (the target is removed)")
    p.add_argument("--json", action="store_true", help="print the final status as JSON (nothing else on stdout)")
    p.set_defaults(func=cmd_backup)


def _abs_target(spec: str) -> str:
    from virtkit.machine.backup import _volume_target

    vol = _volume_target(spec)
    return f"{vol[0]}/{vol[1]}" if vol else os.path.abspath(spec)


def cmd_backup(args: argparse.Namespace) -> int:
    """Start the backup in the VM's process (or here, offline), follow it, report how it ended."""
    from virtkit.machine.control import list_vms, request

    running = any(v["name"] == args.name for v in list_vms())
    if args.status or args.cancel:
        if args.to or (args.status and args.cancel):
            raise ConfigError("--status and --cancel take only the VM's name")
        if not running:
            raise ConfigError(f"no running VM named {args.name!r}")
        st = request(args.name, "backup-cancel" if args.cancel else "backup-status")
        if args.json:
            print(json.dumps(st))
        elif args.cancel:
            print(f"{args.name}: backup cancelled (its target is removed; the VM goes on running)")
        else:
            _print_status(args.name, st)
        return 0
    if not args.to:
        raise ConfigError("backup needs --to FILE or --to POOL/VOLUME (or --status / --cancel)")
    into_dir = args.to.endswith("/") or os.path.isdir(args.to)
    to = os.path.abspath(args.to) if into_dir else _abs_target(args.to)
    base = _abs_target(args.base) if args.base else None
    if args.base and not args.incremental:
        raise ConfigError("--base is for --incremental backups")
    show = not args.json and sys.stderr.isatty()
    speed = None
    if args.speed:
        from virtkit.units import parse_size

        speed = parse_size(args.speed, what="--speed")
        if speed <= 0:
            raise ConfigError("--speed must be positive")
    if running:
        request(args.name, "backup", wait=30, to=to, disk=args.disk, incremental=args.incremental, base=base,
                bitmap=args.bitmap, format=args.fmt, speed=speed, into_dir=into_dir)
        st = _follow(args.name, show)
    else:
        if into_dir:  # an image is one disk: a file of its name in the directory
            from virtkit.machine.backup import dir_target

            os.makedirs(to, exist_ok=True)
            to = dir_target(to, args.name, args.fmt)
        st = _offline(args, to, base, show, speed)
    if args.json:
        print(json.dumps(st))
    elif st.get("state") == "completed":
        what = "every disk" if st["disk"] == "all" else st["disk"]
        print(f"{args.name}: {st['kind']} backup of {what} to {args.to}: {_mib(st['done'])} read, "
              f"{_mib(st['written'])} written in {st['seconds']:.2f} s"
              + (f" ({_mib(st['saved_by_cbw'])} saved before guest writes)" if st.get("saved_by_cbw") else ""))
    if st.get("state") != "completed":
        raise VirtkitError(f"{args.name}: backup {st.get('state')}: {st.get('error')} (nothing was changed; the "
                           "VM goes on running)")
    return 0


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _offline(args: argparse.Namespace, to: str, base: str | None, show: bool,
             speed: float | None) -> dict[str, Any]:
    """Back up a disk no VM uses: the same job, no guest in front of it."""
    from virtkit.machine.backup import LiveBackup
    from virtkit.storage import open_disk
    from virtkit.storage.pool import is_volume_spec

    if not os.path.exists(args.name) and not is_volume_spec(args.name):
        raise ConfigError(f"no running VM and no disk named {args.name!r}")
    if args.disk not in (None, 0):
        raise ConfigError("--disk is for VMs: an image is one disk")
    disk = open_disk(args.name)  # writable: it keeps the bitmap (refused while a VM uses it)
    try:
        b = LiveBackup(disk, to, incremental=args.incremental, base=base, bitmap=args.bitmap, fmt=args.fmt,
                       label=args.name, speed=speed)
        job = b.start()
        progress = _progress(show, f"backing up {args.name}")
        try:
            while not job.wait(0.2):
                if progress is not None:
                    progress[0].update(progress[1], total=max(job.total, 1), completed=job.done)
        except KeyboardInterrupt:
            job.cancel()
            job.wait()
        finally:
            if progress is not None:
                progress[0].stop()
        return b.status()
    finally:
        disk.close()


def _progress(show: bool, title: str):
    if not show:
        return None
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    p = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    p.start()
    return p, p.add_task(title, total=1)


def _follow(name: str, show: bool) -> dict[str, Any]:
    """Poll the VM's backup until it ends (a progress bar on a terminal); Ctrl-C cancels it."""
    from virtkit.machine.control import ControlError, request

    last: dict[str, Any] = {}
    progress = _progress(show, f"backing up {name}")
    try:
        while True:
            try:
                last = request(name, "backup-status", wait=15, until_end=True, timeout=0.25)
            except KeyboardInterrupt:
                try:
                    request(name, "backup-cancel")
                except (ControlError, ValueError):
                    pass
                continue
            except ControlError as err:
                last = {**last, "state": "failed", "error": f"the VM went away ({err})"}
                break
            if progress is not None:
                progress[0].update(progress[1], total=max(last.get("total", 1), 1), completed=last.get("done", 0))
            if last.get("state") in ("completed", "failed", "cancelled"):
                break
    finally:
        if progress is not None:
            progress[0].stop()
    return last


def _print_status(name: str, st: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{name}: backup", show_header=False)
    t.add_column("field")
    t.add_column("value")
    for k in ("state", "error", "kind", "disk", "target", "format", "base", "bitmap", "total", "done", "written",
              "saved_by_cbw", "rate", "seconds"):
        v = st.get(k)
        if v in (None, ""):
            continue
        if k in ("total", "done", "written", "saved_by_cbw"):
            v = _mib(v)
        elif k == "rate":
            v = f"{_mib(v)}/s"
        t.add_row(k.replace("_", " "), str(v))
    Console().print(t)
