"""``virtkit pool``: storage pools: devices cut into extents and handed out as volumes (like an LVM volume group).

Many VMs, NBD exports and commands use the volumes of one pool at the same time; metadata changes are
serialised by the pool's lock. Verbs: create, delete, list, show, set, rename, add-device, remove-device, fail,
scrub, rebuild.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from virtkit.commands._help import add, group
from virtkit.errors import ConfigError
from virtkit.units import format_size


def _common(p: argparse.ArgumentParser, json_flag: bool = True) -> None:
    p.add_argument("--pools-dir", metavar="DIR", help="where named pools live (default $VIRTKIT_POOLS_DIR or "
                   "~/.local/share/virtkit/pools)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print the result as JSON (nothing else on stdout)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``virtkit pool ACTION``."""
    _, sub = group(subparsers, "pool", "storage pools: devices cut into extents (like an LVM volume group)",
                   __doc__, "pool_command")

    c = add(sub, "create", "create a pool on devices (files or block devices)",
            ["truncate -s 4G a.img b.img && virtkit pool create tank a.img b.img"])
    c.add_argument("name", metavar="NAME", help="pool name (or a directory path)")
    c.add_argument("devices", nargs="+", metavar="DEV", help="existing files or block devices")
    c.add_argument("--extent-size", default="4M", metavar="SIZE", help="extent size (power of two, default 4M)")
    c.add_argument("--warn-percent", type=int, default=80, metavar="PCT",
                   help="warn when this much of the pool is used (default 80)")
    c.add_argument("--force", action="store_true", help="overwrite labels of devices that belong to another pool")
    _common(c)
    c.set_defaults(func=cmd_create)

    d = add(sub, "delete", "delete a pool (refused while any of its volumes is open; --force if it has volumes)",
            ["virtkit pool delete tank"])
    d.add_argument("name", metavar="NAME")
    d.add_argument("--force", action="store_true", help="delete even though it still holds volumes")
    _common(d)
    d.set_defaults(func=cmd_delete)

    ls = add(sub, "list", "the pools: size, free, state (ok, degraded, full) and open volumes",
             ["virtkit pool list", "virtkit pool list --json"])
    _common(ls)
    ls.set_defaults(func=cmd_list)

    s = add(sub, "show", "devices, capacity, use, state and volumes of a pool", ["virtkit pool show tank"],
            aliases=("status",))
    s.add_argument("name", metavar="NAME")
    _common(s)
    s.set_defaults(func=cmd_status)

    st = add(sub, "set", "change a pool setting", ["virtkit pool set tank --warn-percent 90"])
    st.add_argument("name", metavar="NAME")
    st.add_argument("--warn-percent", type=int, metavar="PCT", help="warn when this much of the pool is used")
    _common(st)
    st.set_defaults(func=cmd_set)

    rn = add(sub, "rename", "rename a pool (refused while it is in use)", ["virtkit pool rename tank vault"])
    rn.add_argument("name", metavar="NAME")
    rn.add_argument("new_name", metavar="NEW")
    _common(rn)
    rn.set_defaults(func=cmd_rename)

    a = add(sub, "add-device", "add a device to a pool (online)", ["virtkit pool add-device tank c.img"],
            aliases=("add",))
    a.add_argument("name", metavar="NAME")
    a.add_argument("device", metavar="DEV")
    a.add_argument("--force", action="store_true", help="overwrite a foreign pool label")
    _common(a)
    a.set_defaults(func=cmd_add)

    r = add(sub, "remove-device", "remove an empty device from a pool (--evacuate moves its extents first)",
            ["virtkit pool remove-device tank b.img --evacuate"], aliases=("remove",))
    r.add_argument("name", metavar="NAME")
    r.add_argument("device", metavar="DEV", help="device path, id or UUID")
    r.add_argument("--evacuate", action="store_true", help="first move its extents to the other devices (pvmove)")
    _common(r)
    r.set_defaults(func=cmd_remove)

    f = add(sub, "fail", "mark a device failed (redundant volumes continue degraded)", ["virtkit pool fail tank b.img"])
    f.add_argument("name", metavar="NAME")
    f.add_argument("device", metavar="DEV")
    _common(f)
    f.set_defaults(func=cmd_fail)

    sc = add(sub, "scrub", "check mirror copies and parity (after a crash: --repair)", ["virtkit pool scrub tank"])
    sc.add_argument("name", metavar="NAME")
    sc.add_argument("--repair", action="store_true", help="fix inconsistent chunks (first copy / recomputed parity)")
    _common(sc)
    sc.set_defaults(func=cmd_scrub)

    b = add(sub, "rebuild", "replace a (failed) device, reconstructing its extents onto a new one (online)",
            ["virtkit pool rebuild tank --replace b.img new.img"])
    b.add_argument("name", metavar="NAME")
    b.add_argument("--replace", nargs=2, required=True, metavar=("OLD", "NEW"), help="device to replace, new device")
    b.add_argument("--force", action="store_true", help="overwrite a foreign pool label on NEW")
    _common(b)
    b.set_defaults(func=cmd_rebuild)


def root_of(args: argparse.Namespace) -> Path | None:
    """The --pools-dir option as a Path (None: the default location)."""
    return Path(args.pools_dir) if getattr(args, "pools_dir", None) else None


def _size(n: int) -> str:
    return format_size(n)


def _emit(args: argparse.Namespace, data: Any, text: str | None) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=1, default=str))
    elif text is not None:
        print(text)


def cmd_create(args: argparse.Namespace) -> int:
    """Create the pool and print a one-line summary (or its status as JSON)."""
    from virtkit.storage.pool import Pool

    with Pool.create(args.name, args.devices, args.extent_size, root=root_of(args), force=args.force,
                     warn_percent=args.warn_percent) as pool:
        st = pool.status()
    _emit(args, st, f"pool {st['name']}: {len(st['devices'])} devices, {_size(st['size'])}, "
          f"{st['extents_total']} extents of {_size(st['extent_size'])} ({st['path']})")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete a pool nobody uses."""
    from virtkit.storage.pool import delete_pool

    freed = delete_pool(args.name, root=root_of(args), force=args.force)
    _emit(args, {"deleted": args.name, "devices": freed}, f"deleted pool {args.name}; devices set free: "
          f"{', '.join(freed)}")
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    """Change a pool setting."""
    from virtkit.storage.pool import Pool

    if args.warn_percent is None:
        raise ConfigError("nothing to set (give --warn-percent)")
    with Pool.open(args.name, root=root_of(args)) as pool:
        pool.set_warn_percent(args.warn_percent)
        st = pool.status()
    _emit(args, {"name": st["name"], "warn_percent": st["warn_percent"]},
          f"pool {st['name']}: warning at {st['warn_percent']}%")
    return 0


def cmd_rename(args: argparse.Namespace) -> int:
    """Rename a pool nobody uses."""
    from virtkit.storage.pool import rename_pool

    path = rename_pool(args.name, args.new_name, root=root_of(args))
    _emit(args, {"renamed": args.name, "name": args.new_name, "path": str(path)},
          f"pool {args.name} is now {args.new_name} ({path})")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    """Add one device."""
    from virtkit.storage.pool import Pool

    with Pool.open(args.name, root=root_of(args)) as pool:
        dev = pool.add_device(args.device, force=args.force)
        _emit(args, {"pool": pool.name, "device": dev.path, "extents": dev.pe_count},
              f"added {dev.path} to pool {pool.name}: {dev.pe_count} extents")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    """Remove one device (optionally evacuating it first)."""
    from virtkit.storage.pool import Pool

    with Pool.open(args.name, root=root_of(args)) as pool:
        pool.remove_device(args.device, evacuate=args.evacuate)
        _emit(args, {"pool": pool.name, "removed": args.device}, f"removed {args.device} from pool {pool.name}")
    return 0


def cmd_fail(args: argparse.Namespace) -> int:
    """Mark a device failed."""
    from virtkit.storage.pool import Pool

    with Pool.open(args.name, root=root_of(args)) as pool:
        dev = pool.fail_device(args.device)
        _emit(args, {"pool": pool.name, "failed": dev.path},
              f"device {dev.path} of pool {pool.name} marked failed; rebuild with "
              f"`virtkit pool rebuild {pool.name} --replace {dev.path} NEWDEV`")
    return 0


def cmd_scrub(args: argparse.Namespace) -> int:
    """Verify (and optionally repair) redundancy; exit 1 when inconsistencies remain."""
    from virtkit.storage.pool import Pool

    with Pool.open(args.name, root=root_of(args)) as pool:
        report = pool.scrub(repair=args.repair)
    _emit(args, report, f"scrubbed {report['checked']} redundant chunks: {report['inconsistent']} inconsistent, "
          f"{report['repaired']} repaired, {report['skipped_degraded']} skipped (degraded)"
          + (f"; volumes: {', '.join(report['volumes'])}" if report["volumes"] else ""))
    return 1 if report["inconsistent"] > report["repaired"] else 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    """Replace OLD by NEW, copying or reconstructing every extent."""
    from virtkit.storage.pool import Pool

    old, new = args.replace
    with Pool.open(args.name, root=root_of(args)) as pool:
        moved = pool.rebuild(old, new, force=args.force)
        state = pool.status()["state"]
        _emit(args, {"pool": pool.name, "extents": moved, "state": state},
              f"rebuilt {moved} extents of {old} onto {new}; pool {pool.name} is {state}")
    return 0


_STATE = {"ok": "[green]ok", "degraded": "[yellow]degraded", "full": "[red]full", "degraded,full": "[red]degraded,full"}


def print_volumes(vols: list[dict[str, Any]], title: str) -> None:
    """A rich table of volumes (shared by `pool show` and `volume list`)."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for col in ("volume", "layout", "size", "allocated", "type", "origin", "devices", "open", "state"):
        t.add_column(col, overflow="fold")
    for v in vols:
        layout = v["layout"] + (f" x{v['width']}" if v["width"] > 1 else "")
        if v.get("converting_to"):
            layout += f" -> {v['converting_to']} ({v['converted_percent']}%)"
        kind = "snapshot" if v["snapshot_of"] else ("thin" if v["thin"] else "thick")
        t.add_row(v["name"], layout, _size(v["size"]), f"{_size(v['allocated'])} ({v['allocated_percent']}%)",
                  kind, v["snapshot_of"] or "", str(len(v["devices"])), "yes" if v["open"] else "",
                  _STATE.get(v["state"], "[red]" + v["state"]))
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
    con.print(f"pool [bold]{st['name']}[/] {_STATE.get(st['state'], st['state'])}[/]: {_size(st['size'])}, "
              f"used {_size(st['used'])} ({st['used_percent']}%), free {_size(st['free'])}, "
              f"extent {_size(st['extent_size'])}, thin virtual {_size(st['thin_virtual'])} "
              f"(over-commit {st['overcommit']}x), open volumes: {', '.join(st['open_volumes']) or 'none'}")
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
    from virtkit.storage.pool import pool_statuses, pools_root

    root = root_of(args) or pools_root()
    rows = []
    for entry, st, err in pool_statuses(root):
        if st is None:
            rows.append({"name": entry, "state": "error", "error": err})
            continue
        rows.append({k: st[k] for k in ("name", "state", "size", "used", "free", "used_percent", "open_volumes",
                                        "warnings")} | {"devices": len(st["devices"]), "volumes": len(st["volumes"])})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"pools in {root}")
    for col in ("pool", "state", "size", "free", "used", "devices", "volumes", "open volumes"):
        t.add_column(col, overflow="fold")
    for r in rows:
        if r["state"] == "error":
            t.add_row(r["name"], f"[red]{r['error']}", "", "", "", "", "", "")
        else:
            t.add_row(r["name"], _STATE.get(r["state"], r["state"]), _size(r["size"]), _size(r["free"]),
                      f"{r['used_percent']}%", str(r["devices"]), str(r["volumes"]), ", ".join(r["open_volumes"]))
    Console().print(t)
    return 0


def split_spec(spec: str) -> tuple[str, str]:
    """``POOL/VOLUME`` -> (pool, volume); ConfigError when it is not of that form."""
    pool, sep, vol = spec.rpartition("/")
    if not sep or not pool or not vol:
        raise ConfigError(f"bad volume {spec!r}: use POOL/VOLUME (e.g. tank/disk0)")
    return pool, vol
