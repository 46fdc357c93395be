"""``virtkit volume``: logical volumes in a pool (like LVM logical volumes): linear, striped, mirror, parity, thin.

Verbs: create, delete, list, show (--segments), set (--size), rename, snapshot, rollback, move, convert. Volumes
grow, move and change layout while a VM or an NBD export uses them.
"""

from __future__ import annotations

import argparse
import json
import sys

from virtkit.commands._help import add, group
from virtkit.commands.pool import _common, _emit, print_volumes, root_of, split_spec
from virtkit.errors import ConfigError
from virtkit.units import format_size, parse_size_change


def _layout_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stripes", type=int, metavar="N", help="striped: number of stripes; parity: devices per row")
    p.add_argument("--stripe-size", metavar="SIZE", help="bytes per stripe unit (default 64K)")
    p.add_argument("--copies", type=int, metavar="N", help="mirror: number of copies (default 2)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``virtkit volume ACTION``."""
    _, sub = group(subparsers, "volume", "logical volumes in a pool (linear, striped, mirror, parity, thin)",
                   __doc__, "volume_command")

    c = add(sub, "create", "create a volume", ["virtkit volume create tank/vm0 --size 10G --layout mirror",
                                                "virtkit volume create tank/data --size 100G --thin"])
    c.add_argument("spec", metavar="POOL/VOL")
    c.add_argument("--size", required=True, metavar="SIZE", help="virtual size, e.g. 10G (K, M, G, T suffixes)")
    c.add_argument("--layout", default="linear", choices=["linear", "striped", "mirror", "parity"])
    _layout_args(c)
    c.add_argument("--thin", action="store_true", help="allocate extents on first write (over-commit allowed)")
    _common(c)
    c.set_defaults(func=cmd_create)

    d = add(sub, "delete", "delete a volume or snapshot (refused while it is open)", ["virtkit volume delete tank/old"])
    d.add_argument("spec", metavar="POOL/VOL")
    _common(d)
    d.set_defaults(func=cmd_delete)

    ls = add(sub, "list", "the volumes of a pool", ["virtkit volume list tank"])
    ls.add_argument("pool", metavar="POOL")
    _common(ls)
    ls.set_defaults(func=cmd_list)

    sh = add(sub, "show", "a volume: size, layout, use, state; --segments: where each run of its data lives "
             "(lvdisplay -m)", ["virtkit volume show tank/vm0 --segments"])
    sh.add_argument("spec", metavar="POOL/VOL")
    sh.add_argument("--segments", action="store_true", help="list the volume's segments and their extents")
    _common(sh)
    sh.set_defaults(func=cmd_show)

    r = add(sub, "set", "change a volume's size while it is in use: SIZE, +SIZE (grow by), --shrink for smaller",
            ["virtkit volume set tank/vm0 --size +4G", "virtkit volume resize tank/vm0 --size 20G"],
            aliases=("resize",))
    r.add_argument("spec", metavar="POOL/VOL")
    r.add_argument("--size", required=True, metavar="SIZE", help="new size, or +SIZE / -SIZE")
    r.add_argument("--shrink", action="store_true", help="allow shrinking (data past the new end is lost)")
    _common(r)
    r.set_defaults(func=cmd_resize)

    rn = add(sub, "rename", "rename a volume (online: a VM using it keeps it)", ["virtkit volume rename tank/vm0 web"])
    rn.add_argument("spec", metavar="POOL/VOL")
    rn.add_argument("new_name", metavar="NEW")
    _common(rn)
    rn.set_defaults(func=cmd_rename)

    s = add(sub, "snapshot", "copy-on-write snapshot (read-only, shares extents)",
            ["virtkit volume snapshot tank/vm0 vm0-monday", "virtkit volume snapshot tank/vm0 vm1 --writable"])
    s.add_argument("spec", metavar="POOL/VOL")
    s.add_argument("snapshot", metavar="SNAP")
    s.add_argument("--writable", action="store_true", help="a writable clone instead of a read-only snapshot")
    _common(s)
    s.set_defaults(func=cmd_snapshot)

    rb = add(sub, "rollback", "return a volume to a snapshot's content",
             ["virtkit volume rollback tank/vm0 vm0-monday"])
    rb.add_argument("spec", metavar="POOL/VOL")
    rb.add_argument("snapshot", metavar="SNAP")
    _common(rb)
    rb.set_defaults(func=cmd_rollback)

    m = add(sub, "move", "move a volume's extents off a device, online (like pvmove -n)",
            ["virtkit volume move tank/vm0 --from a.img --to c.img"])
    m.add_argument("spec", metavar="POOL/VOL")
    m.add_argument("--from", dest="src", required=True, metavar="DEV")
    m.add_argument("--to", dest="dst", metavar="DEV", help="destination device (default: any with room)")
    _common(m)
    m.set_defaults(func=cmd_move)

    cv = add(sub, "convert", "change a volume's layout online (like lvconvert): linear, striped, mirror, parity",
             ["virtkit volume convert tank/vm0 --layout mirror", "virtkit volume convert tank/vm0 --layout linear"])
    cv.add_argument("spec", metavar="POOL/VOL")
    cv.add_argument("--layout", required=True, choices=["linear", "striped", "mirror", "parity"])
    _layout_args(cv)
    cv.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _common(cv)
    cv.set_defaults(func=cmd_convert)


def _width(args: argparse.Namespace) -> int | None:
    width = None
    if args.copies is not None:
        if args.layout != "mirror":
            raise ConfigError("--copies only applies to --layout mirror")
        width = args.copies
    if args.stripes is not None:
        if args.layout not in ("striped", "parity"):
            raise ConfigError("--stripes only applies to --layout striped or parity")
        width = args.stripes
    if args.stripe_size is not None and args.layout not in ("striped", "parity"):
        raise ConfigError("--stripe-size only applies to --layout striped or parity")
    return width


def cmd_create(args: argparse.Namespace) -> int:
    """Create a volume with the requested layout."""
    from virtkit.storage.pool import Pool

    pool_name, vol = split_spec(args.spec)
    width = _width(args)
    with Pool.open(pool_name, root=root_of(args)) as pool:
        v = pool.create_volume(vol, args.size, args.layout, width=width, stripe=args.stripe_size, thin=args.thin)
        info = pool.volume_usage(v)
    _emit(args, info, f"created {args.spec}: {info['layout']} x{info['width']}, {format_size(info['size'])}"
          f"{' (thin)' if info['thin'] else ''}")
    return 0


def cmd_resize(args: argparse.Namespace) -> int:
    """Set a new size (``+SIZE`` grows by SIZE, ``-SIZE`` shrinks by it)."""
    from virtkit.storage.pool import Pool

    pool_name, vol = split_spec(args.spec)
    delta, relative = parse_size_change(args.size, what="size")
    with Pool.open(pool_name, root=root_of(args)) as pool:
        size = pool.volume(vol).size + delta if relative else delta
        v = pool.resize_volume(vol, size, shrink=args.shrink)
        _emit(args, {"volume": args.spec, "size": v.size}, f"{args.spec} is now {format_size(v.size)} ({v.size} bytes)")
    return 0


def cmd_rename(args: argparse.Namespace) -> int:
    """Rename a volume."""
    from virtkit.storage.pool import Pool

    pool_name, vol = split_spec(args.spec)
    with Pool.open(pool_name, root=root_of(args)) as pool:
        pool.rename_volume(vol, args.new_name)
    _emit(args, {"renamed": args.spec, "name": f"{pool_name}/{args.new_name}"},
          f"{args.spec} is now {pool_name}/{args.new_name}")
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    """Snapshot a volume."""
    from virtkit.storage.pool import Pool

    pool_name, vol = split_spec(args.spec)
    with Pool.open(pool_name, root=root_of(args)) as pool:
        pool.snapshot(vol, args.snapshot, writable=args.writable)
    _emit(args, {"snapshot": f"{pool_name}/{args.snapshot}", "of": args.spec, "writable": args.writable},
          f"{'clone' if args.writable else 'snapshot'} {pool_name}/{args.snapshot} of {args.spec} created")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Roll a volume back to a snapshot."""
    from virtkit.storage.pool import Pool

    pool_name, vol = split_spec(args.spec)
    with Pool.open(pool_name, root=root_of(args)) as pool:
        pool.rollback(vol, args.snapshot)
    _emit(args, {"volume": args.spec, "rolled_back_to": args.snapshot}, f"{args.spec} rolled back to {args.snapshot}")
    return 0


def cmd_move(args: argparse.Namespace) -> int:
    """Move a volume's extents off a device."""
    from virtkit.storage.pool import Pool

    pool_name, vol = split_spec(args.spec)
    with Pool.open(pool_name, root=root_of(args)) as pool:
        moved = pool.move_volume(vol, args.src, args.dst)
    _emit(args, {"volume": args.spec, "extents_moved": moved}, f"moved {moved} extents of {args.spec} off {args.src}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Change a volume's layout, with a progress bar."""
    from virtkit.storage.pool import Pool

    pool_name, vol = split_spec(args.spec)
    width = _width(args)
    with Pool.open(pool_name, root=root_of(args)) as pool:
        if not args.quiet and not args.json and sys.stderr.isatty():
            from rich.progress import BarColumn, DownloadColumn, Progress

            with Progress("[progress.description]{task.description}", BarColumn(),
                          DownloadColumn(binary_units=True)) as prog:
                task = prog.add_task(f"{args.spec} -> {args.layout}", total=None)
                res = pool.convert_volume(vol, args.layout, width=width, stripe=args.stripe_size,
                                          progress=lambda d, t: prog.update(task, completed=d, total=t))
        else:
            res = pool.convert_volume(vol, args.layout, width=width, stripe=args.stripe_size)
        info = pool.volume_usage(pool.volume(vol))
    _emit(args, {**res, "volume_info": info}, f"{args.spec} is now {info['layout']} x{info['width']}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """List volumes (rich table or JSON)."""
    from virtkit.storage.pool import Pool

    with Pool.open(args.pool, read_only=True, root=root_of(args)) as pool:
        vols = pool.status()["volumes"]
    if args.json:
        print(json.dumps(vols, indent=1))
    else:
        print_volumes(vols, f"volumes of pool {args.pool}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """One volume, and optionally its segments."""
    from virtkit.storage.pool import Pool

    pool_name, vol = split_spec(args.spec)
    with Pool.open(pool_name, read_only=True, root=root_of(args)) as pool:
        info = pool.volume_usage(pool.volume(vol))
        segs = pool.segments(vol) if args.segments else None
    if args.json:
        print(json.dumps({**info, **({"segments": segs} if segs is not None else {})}, indent=1))
        return 0
    print_volumes([info], f"volume {args.spec}")
    if segs is not None:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"segments of {args.spec}")
        for col in ("logical range", "extents", "layout", "columns (device: first extent)"):
            t.add_column(col, overflow="fold")
        for sgm in segs:
            cols = ", ".join(f"{c['device']}: {c['extent']}" for c in sgm["columns"]) or "unallocated"
            t.add_row(f"{format_size(sgm['start'])} - {format_size(sgm['end'])}", str(sgm["extents"]),
                      sgm["layout"] + (f" x{sgm['width']}" if sgm["width"] > 1 else ""), cols)
        Console().print(t)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete a volume."""
    from virtkit.storage.pool import Pool

    pool_name, vol = split_spec(args.spec)
    with Pool.open(pool_name, root=root_of(args)) as pool:
        pool.delete_volume(vol)
    _emit(args, {"deleted": args.spec}, f"deleted {args.spec}")
    return 0
