"""``virtkit snapshot | clone | template``: a running VM's RAM, devices and disks, saved, restored, copied.

A snapshot is a directory (``docs/vm-state.md``); a bare name lives in ``$VIRTKIT_SNAPSHOTS``
(default ``~/.local/share/virtkit/snapshots``), a path anywhere. ``snapshot create`` asks the VM
through its control socket: it pauses, the bundle is written, it goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from virtkit.commands._help import add, group
from virtkit.errors import ConfigError, VirtkitError
from virtkit.machine.snapshot import template_root as snap_templates

#: the command words this module registers (cli.py maps them to this module)
COMMANDS = ("snapshot", "clone", "template")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``snapshot``, ``clone`` and ``template``."""
    _, sub = group(subparsers, "snapshot", "save a running VM (RAM, devices, disks) and restore it",
                   __doc__.split("\n\n")[0], "action")
    c = add(sub, "create", "snapshot a running VM: it pauses for the copy, then goes on",
            ["virtkit snapshot create web1 before-upgrade", "virtkit snapshot create web1 /backups/web1-mon --compress",
             "virtkit snapshot create web1 after --diff-from before-upgrade"])
    c.add_argument("vm", help="the VM's name (virtkit ps)")
    c.add_argument("snapshot", nargs="?", help="a name (in the snapshot directory) or a path (default: the time)")
    c.add_argument("--compress", action="store_true", help="RAM compressed with zstd (smaller, slower to restore)")
    c.add_argument("--diff-from", metavar="SNAPSHOT", help="store only the RAM pages that differ from SNAPSHOT")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.set_defaults(func=cmd_create)

    ls = add(sub, "list", "the snapshots in the snapshot directory", ["virtkit snapshot list --json"])
    ls.add_argument("--dir", help="another directory of snapshots")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_list)

    i = add(sub, "info", "what a snapshot holds: machine, RAM, disks, checksums", ["virtkit snapshot info "
            "before-upgrade --verify"])
    i.add_argument("snapshot")
    i.add_argument("--verify", action="store_true", help="check every file against its checksum")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=cmd_info)

    r = add(sub, "restore", "start the VM again as it was at the snapshot (its disks rolled back)",
            ["virtkit snapshot restore before-upgrade", "virtkit snapshot restore before-upgrade -d --name web1"])
    r.add_argument("snapshot")
    _start_flags(r)
    r.set_defaults(func=cmd_restore, clone=False)

    d = add(sub, "delete", "remove a snapshot (its volume snapshots in pools too)",
            ["virtkit snapshot delete before-upgrade"])
    d.add_argument("snapshot")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=cmd_delete)

    cl = subparsers.add_parser("clone", help="start N new VMs from a snapshot (copy-on-write RAM and disks)",
                               description="Start N new VMs from a snapshot: each has its own name, MAC "
                               "addresses, disk overlays and generation ID, and shares every page and block it "
                               "has not written.", epilog="examples:\n  virtkit clone base --count 3\n"
                               "  virtkit clone base --count 2 --name-prefix web --disk-dir /srv/vm",
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    cl.add_argument("snapshot")
    cl.add_argument("--count", type=int, default=1, help="how many clones (default 1)")
    cl.add_argument("--name-prefix", help="clones are PREFIX-1, PREFIX-2, ... (default: the snapshot's VM name)")
    cl.add_argument("--disk-dir", help="where the clones' disk overlays go (default: beside the original disks)")
    cl.add_argument("--json", action="store_true", help="machine-readable output")
    cl.set_defaults(func=cmd_clone)

    _, tsub = group(subparsers, "template", "templates: snapshots to deploy VMs from (virtkit run --template)",
                    "A template is a snapshot kept for deployment: `virtkit run --template T` starts a clone.",
                    "action")
    tc = add(tsub, "create", "make a template of a running VM", ["virtkit template create web1 webserver"])
    tc.add_argument("vm")
    tc.add_argument("template")
    tc.add_argument("--stop", action="store_true", help="stop the VM afterwards (Proxmox converts it)")
    tc.add_argument("--json", action="store_true", help="machine-readable output")
    tc.set_defaults(func=cmd_template_create)
    tl = add(tsub, "list", "the templates", ["virtkit template list"])
    tl.add_argument("--json", action="store_true", help="machine-readable output")
    tl.set_defaults(func=cmd_template_list)
    td = add(tsub, "delete", "remove a template", ["virtkit template delete webserver"])
    td.add_argument("template")
    td.set_defaults(func=cmd_template_delete)


def _start_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="the VM's name (default: the snapshot's)")
    p.add_argument("--detach", "-d", action="store_true", help="run in the background; print the name")
    p.add_argument("--serial", choices=["stdio", "none"], help="where the serial console goes")
    p.add_argument("--no-verify", action="store_true", help="do not hash the RAM file first (faster)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def _resolve(spec: str) -> Path:
    from virtkit.machine.snapshot import resolve

    return resolve(spec).absolute()


# ------------------------------------------------------------------------------------------------ create
def _take(vm: str, dest: Path, compress: bool = False, parent: Path | None = None) -> dict[str, Any]:
    from virtkit.machine.control import request

    if dest.exists():
        raise ConfigError(f"snapshot {dest} already exists")
    extra: dict[str, Any] = {"path": str(dest), "compress": compress, "name": dest.name}
    if parent is not None:
        extra["parent"] = str(parent)
    return request(vm, "snapshot", wait=600, **extra)


def cmd_create(args: argparse.Namespace) -> int:
    """Snapshot a running VM."""
    from virtkit.daemon.client import RemoteError, call, remote, wait_task
    from virtkit.machine.vmsnap import snapshot_name

    plain = args.snapshot is None or "/" not in args.snapshot and not args.snapshot.startswith(".")
    if remote() is not None and plain and not args.diff_from:  # through virtkitd: a task
        task = call("POST", f"/vms/{args.vm}/snapshots", {"snapshot": args.snapshot, "compress": args.compress})
        reply = wait_task(task, timeout=3600)
    elif os.environ.get("VIRTKIT_REMOTE"):
        raise RemoteError("through --remote, a snapshot takes a plain name (in the daemon's snapshot directory) "
                          "and no --diff-from")
    else:
        dest = _resolve(args.snapshot or snapshot_name())
        parent = _resolve(args.diff_from) if args.diff_from else None
        reply = _take(args.vm, dest, args.compress, parent)
    if args.json:
        print(json.dumps({k: v for k, v in reply.items() if k != "ok"}))
        return 0
    mem = reply["memory"]
    what = {"sparse": f"{mem.get('pages', 0)} non-zero pages", "zstd": f"{mem.get('compressed', 0):,} bytes "
            "compressed", "diff": f"{mem.get('changed', 0)} changed pages"}[mem["encoding"]]
    print(f"{args.vm}: snapshot {reply['name']} at {reply['path']} (RAM: {what}; {len(reply['disks'])} disk(s); "
          f"paused {reply['paused_seconds'] * 1000:.0f} ms)")
    return 0


# ------------------------------------------------------------------------------------------------ list / info
def cmd_list(args: argparse.Namespace) -> int:
    """List snapshots."""
    from virtkit.machine.snapshot import list_snapshots

    snaps = list_snapshots(Path(args.dir) if args.dir else None)
    _print_list(snaps, args.json, "snapshots")
    return 0


def _print_list(snaps: list[dict], as_json: bool, what: str) -> None:
    if as_json:
        print(json.dumps([{k: s.get(k) for k in ("name", "path", "vm", "created", "memory", "disk_usage", "error")}
                          for s in snaps], indent=1))
        return
    if not snaps:
        print(f"no {what}")
        return
    from rich.console import Console
    from rich.table import Table

    from virtkit.units import format_size

    t = Table()
    for col in ("name", "vm", "created", "RAM", "encoding", "disks", "on disk"):
        t.add_column(col)
    for s in snaps:
        if "error" in s:
            t.add_row(s["name"], "", "", "", f"[red]{s['error']}[/]", "", "")
            continue
        t.add_row(s["name"], s.get("vm") or "", s["created"], format_size(s["memory"]["size"]),
                  s["memory"]["encoding"], str(len(s.get("disks", []))), format_size(s["disk_usage"]))
    Console().print(t)


def cmd_info(args: argparse.Namespace) -> int:
    """Show one snapshot."""
    from virtkit.machine import snapshot as snap

    p = _resolve(args.snapshot)
    info = snap.info(p)
    if args.verify:
        snap.verify(p, info)
        info["verified"] = True
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    from virtkit.units import format_size

    mem = info["memory"]
    print(f"snapshot {info['name']}  ({info['path']})")
    print(f"  VM {info.get('vm') or '-'}, created {info['created']}, board {info['machine'].get('board')}, "
          f"{info['machine'].get('cpus')} CPU(s)")
    print(f"  RAM {format_size(mem['size'])} at {mem['base']:#x}, {mem['encoding']}"
          + (f", parent {mem['parent']}" if mem.get("parent") else ""))
    for d in info.get("disks", []):
        where = {"qcow2": f"image {d.get('base')} in the snapshot", "volume": f"pool snapshot {d.get('snapshot')}",
                 "shared": "used read-only in place"}.get(d.get("kind"), "?")
        print(f"  disk {d['index']}: {d['path']} ({where})")
    print(f"  {format_size(info['disk_usage'])} on disk" + ("; every checksum verified" if args.verify else ""))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete a snapshot and the pool volume snapshots it made."""
    from virtkit.machine import snapshot as snap

    p = _resolve(args.snapshot)
    man = snap.read_manifest(p)
    vols = [d for d in man.get("disks", []) if d.get("kind") == "volume"]
    snap.delete(p)
    for d in vols:
        from virtkit.storage.pool import Pool

        pool_name = d["path"].rpartition("/")[0]
        try:
            with Pool.open(pool_name) as pool:
                if d["snapshot"] in pool.volumes:
                    pool.delete_volume(d["snapshot"])
        except VirtkitError as err:
            print(f"virtkit: warning: volume snapshot {pool_name}/{d['snapshot']} kept: {err}", file=sys.stderr)
    if args.json:
        print(json.dumps({"deleted": str(p)}))
    else:
        print(f"deleted {p}")
    return 0


# ------------------------------------------------------------------------------------------------ restore / clone
def cmd_restore(args: argparse.Namespace) -> int:
    """``snapshot restore`` is ``virtkit run --restore``."""
    from virtkit.commands.run import start_from_snapshot

    return start_from_snapshot(_resolve(args.snapshot), args, clone=bool(args.clone))


def cmd_clone(args: argparse.Namespace) -> int:
    """Start ``--count`` clones, detached; print their names."""
    from virtkit.machine import snapshot as snap

    if not 1 <= args.count <= 64:
        raise ConfigError(f"--count must be 1..64: {args.count}")
    bundle = _resolve(args.snapshot)
    man = snap.read_manifest(bundle)
    prefix = args.name_prefix or man.get("vm") or bundle.name
    names = []
    for i in range(1, args.count + 1):
        ns = argparse.Namespace(name=f"{prefix}-{i}", detach=True, json=True, no_verify=i > 1)
        from contextlib import redirect_stdout
        from io import StringIO

        from virtkit.commands.run import detach_restored

        buf = StringIO()
        with redirect_stdout(buf):
            detach_restored(bundle, ns, True, args.disk_dir)
        names.append(json.loads(buf.getvalue()))
    if args.json:
        print(json.dumps(names))
    else:
        for n in names:
            print(n["name"])
    return 0


# ------------------------------------------------------------------------------------------------ templates
def cmd_template_create(args: argparse.Namespace) -> int:
    """Snapshot a VM into the template directory (and stop it with --stop)."""
    from virtkit.machine.snapshot import resolve

    if "/" in args.template:
        raise ConfigError("a template is named, not a path")
    resolve(args.template)  # checks the name
    dest = (snap_templates() / args.template).absolute()
    reply = _take(args.vm, dest)
    if args.stop:
        from virtkit.machine.control import request

        request(args.vm, "stop", wait=70, timeout=30)
    if args.json:
        print(json.dumps({k: v for k, v in reply.items() if k != "ok"}))
    else:
        print(f"template {args.template} from {args.vm} (virtkit run --template {args.template})")
    return 0


def cmd_template_list(args: argparse.Namespace) -> int:
    """List templates."""
    from virtkit.machine.snapshot import list_snapshots

    _print_list(list_snapshots(snap_templates()), args.json, "templates")
    return 0


def cmd_template_delete(args: argparse.Namespace) -> int:
    """Delete a template."""
    from virtkit.machine import snapshot as snap

    p = snap_templates() / args.template
    snap.delete(p)
    print(f"deleted template {args.template}")
    return 0
