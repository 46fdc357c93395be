"""``virtkit pool``: create storage pools from devices, add/remove/fail/rebuild devices, show status."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from virtkit.errors import ConfigError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pools-dir", metavar="DIR", help="where named pools live (default $VIRTKIT_POOLS_DIR or "
                   "~/.local/share/virtkit/pools)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``virtkit pool {create,add,remove,status,list,fail,scrub,rebuild}`` to the top-level parser."""
    p = subparsers.add_parser("pool", help="storage pools: devices cut into extents (like an LVM volume group)",
                              description=__doc__)
    sub = p.add_subparsers(dest="pool_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    c = sub.add_parser("create", help="create a pool on devices (files or block devices)")
    c.add_argument("name", metavar="NAME", help="pool name (or a directory path)")
    c.add_argument("devices", nargs="+", metavar="DEV", help="existing files or block devices")
    c.add_argument("--extent-size", default="4M", metavar="SIZE", help="extent size (power of two, default 4M)")
    c.add_argument("--warn-percent", type=int, default=80, metavar="PCT",
                   help="warn when this much of the pool is used (default 80)")
    c.add_argument("--force", action="store_true", help="overwrite labels of devices that belong to another pool")
    c.add_argument("--json", action="store_true", help="print the new pool's status as JSON")
    _common(c)
    c.set_defaults(func=cmd_create)

    a = sub.add_parser("add", help="add a device to a pool")
    a.add_argument("name", metavar="NAME")
    a.add_argument("device", metavar="DEV")
    a.add_argument("--force", action="store_true", help="overwrite a foreign pool label")
    _common(a)
    a.set_defaults(func=cmd_add)

    r = sub.add_parser("remove", help="remove an empty device from a pool")
    r.add_argument("name", metavar="NAME")
    r.add_argument("device", metavar="DEV", help="device path, id or UUID")
    r.add_argument("--evacuate", action="store_true", help="first move its extents to the other devices (pvmove)")
    _common(r)
    r.set_defaults(func=cmd_remove)

    s = sub.add_parser("status", help="devices, capacity, use and volumes of a pool")
    s.add_argument("name", metavar="NAME")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    _common(s)
    s.set_defaults(func=cmd_status)

    ls = sub.add_parser("list", help="list the named pools")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    _common(ls)
    ls.set_defaults(func=cmd_list)

    f = sub.add_parser("fail", help="mark a device failed (redundant volumes continue degraded)")
    f.add_argument("name", metavar="NAME")
    f.add_argument("device", metavar="DEV")
    _common(f)
    f.set_defaults(func=cmd_fail)

    sc = sub.add_parser("scrub", help="check mirror copies and parity (after a crash: --repair)")
    sc.add_argument("name", metavar="NAME")
    sc.add_argument("--repair", action="store_true", help="fix inconsistent chunks (first copy / recomputed parity)")
    sc.add_argument("--json", action="store_true", help="machine-readable output")
    _common(sc)
    sc.set_defaults(func=cmd_scrub)

    b = sub.add_parser("rebuild", help="replace a (failed) device, reconstructing its extents onto a new one")
    b.add_argument("name", metavar="NAME")
    b.add_argument("--replace", nargs=2, required=True, metavar=("OLD", "NEW"), help="device to replace, new device")
    b.add_argument("--force", action="store_true", help="overwrite a foreign pool label on NEW")
    _common(b)
    b.set_defaults(func=cmd_rebuild)


def root_of(args: argparse.Namespace) -> Path | None:
    """The --pools-dir option as a Path (None: the default location)."""
    return Path(args.pools_dir) if getattr(args, "pools_dir", None) else None


def _size(n: int) -> str:
    from virtkit.storage.pool import format_size

    return format_size(n)


def cmd_create(args: argparse.Namespace) -> int:
    """Create the pool and print a one-line summary (or its status as JSON)."""
    from virtkit.storage.pool import Pool

    with Pool.create(args.name, args.devices, args.extent_size, root=root_of(args), force=args.force,
                     warn_percent=args.warn_percent) as pool:
        st = pool.status()
    if args.json:
        print(json.dumps(st, indent=1))
    else:
        print(f"pool {st['name']}: {len(st['devices'])} devices, {_size(st['size'])}, "
              f"{st['extents_total']} extents of {_size(st['extent_size'])} ({st['path']})")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    """Add one device."""
    from virtkit.storage.pool import Pool

    with Pool.open(args.name, root=root_of(args)) as pool:
        dev = pool.add_device(args.device, force=args.force)
        print(f"added {dev.path} to pool {pool.name}: {dev.pe_count} extents")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    """Remove one device (optionally evacuating it first)."""
    from virtkit.storage.pool import Pool

    with Pool.open(args.name, root=root_of(args)) as pool:
        pool.remove_device(args.device, evacuate=args.evacuate)
        print(f"removed {args.device} from pool {pool.name}")
    return 0


def cmd_fail(args: argparse.Namespace) -> int:
    """Mark a device failed."""
    from virtkit.storage.pool import Pool

    with Pool.open(args.name, root=root_of(args)) as pool:
        dev = pool.fail_device(args.device)
        print(f"device {dev.path} of pool {pool.name} marked failed; rebuild with "
              f"`virtkit pool rebuild {pool.name} --replace {dev.path} NEWDEV`")
    return 0


def cmd_scrub(args: argparse.Namespace) -> int:
    """Verify (and optionally repair) redundancy; exit 1 when inconsistencies remain."""
    from virtkit.storage.pool import Pool

    with Pool.open(args.name, root=root_of(args)) as pool:
        report = pool.scrub(repair=args.repair)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"scrubbed {report['checked']} redundant chunks: {report['inconsistent']} inconsistent, "
              f"{report['repaired']} repaired, {report['skipped_degraded']} skipped (degraded)"
              + (f"; volumes: {', '.join(report['volumes'])}" if report["volumes"] else ""))
    return 1 if report["inconsistent"] > report["repaired"] else 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    """Replace OLD by NEW, copying or reconstructing every extent."""
    from virtkit.storage.pool import Pool

    old, new = args.replace
    with Pool.open(args.name, root=root_of(args)) as pool:
        moved = pool.rebuild(old, new, force=args.force)
        print(f"rebuilt {moved} extents of {old} onto {new}; pool {pool.name} is {pool.status()['state']}")
    return 0


def print_volumes(vols: list[dict[str, Any]], title: str) -> None:
    """A rich table of volumes (shared by `pool status` and `volume list`)."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for col in ("volume", "layout", "size", "allocated", "type", "origin", "devices", "state"):
        t.add_column(col, overflow="fold")
    for v in vols:
        layout = v["layout"] + (f" x{v['width']}" if v["width"] > 1 else "")
        kind = "snapshot" if v["snapshot_of"] else ("thin" if v["thin"] else "thick")
        t.add_row(v["name"], layout, _size(v["size"]), f"{_size(v['allocated'])} ({v['allocated_percent']}%)",
                  kind, v["snapshot_of"] or "", str(len(v["devices"])),
                  {"ok": "[green]ok", "degraded": "[yellow]degraded"}.get(v["state"], "[red]" + v["state"]))
    Console().print(t)


def cmd_status(args: argparse.Namespace) -> int:
    """Print the pool's devices, use and volumes."""
    from rich.console import Console
    from rich.table import Table

    from virtkit.storage.pool import Pool

    with Pool.open(args.name, read_only=True, root=root_of(args)) as pool:
        st = pool.status()
    if args.json:
        print(json.dumps(st, indent=1))
        return 0
    con = Console()
    colour = "green" if st["state"] == "ok" else "red"
    con.print(f"pool [bold]{st['name']}[/] [{colour}]{st['state']}[/]: {_size(st['size'])}, "
              f"used {_size(st['used'])} ({st['used_percent']}%), free {_size(st['free'])}, "
              f"extent {_size(st['extent_size'])}, thin virtual {_size(st['thin_virtual'])} "
              f"(over-commit {st['overcommit']}x)")
    t = Table(title="devices")
    for col in ("id", "device", "size", "used", "state"):
        t.add_column(col, overflow="fold")
    for d in st["devices"]:
        state = "[green]ok" if d["state"] == "ok" else f"[red]{d['state']}[/] {d['reason']}"
        t.add_row(str(d["id"]), d["path"], _size(d["size"]), _size(d["used"]), state)
    con.print(t)
    if st["volumes"]:
        print_volumes(st["volumes"], "volumes")
    for w in st["warnings"]:
        con.print(f"[yellow]warning:[/] {w}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """List pools found under the pools directory."""
    from virtkit.storage.pool import Pool, PoolError, pools_root

    root = root_of(args) or pools_root()
    rows = []
    if root.is_dir():
        for entry in sorted(os.listdir(root)):
            if not (root / entry / "metadata.0").exists() and not (root / entry / "metadata.1").exists():
                continue
            try:
                with Pool.open(root / entry, read_only=True) as pool:
                    st = pool.status()
                rows.append({k: st[k] for k in ("name", "state", "size", "used", "free", "used_percent")}
                            | {"devices": len(st["devices"]), "volumes": len(st["volumes"])})
            except PoolError as err:
                rows.append({"name": entry, "state": "error", "error": str(err)})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"pools in {root}")
    for col in ("pool", "state", "size", "used", "devices", "volumes"):
        t.add_column(col, overflow="fold")
    for r in rows:
        if r["state"] == "error":
            t.add_row(r["name"], f"[red]{r['error']}", "", "", "", "")
        else:
            t.add_row(r["name"], r["state"], _size(r["size"]), f"{r['used_percent']}%", str(r["devices"]),
                      str(r["volumes"]))
    Console().print(t)
    return 0


def split_spec(spec: str) -> tuple[str, str]:
    """``POOL/VOLUME`` -> (pool, volume); ConfigError when it is not of that form."""
    pool, sep, vol = spec.rpartition("/")
    if not sep or not pool or not vol:
        raise ConfigError(f"bad volume {spec!r}: use POOL/VOLUME (e.g. tank/disk0)")
    return pool, vol
