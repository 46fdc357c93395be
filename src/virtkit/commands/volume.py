"""``virtkit volume``: logical volumes in a pool: create, resize, snapshot, rollback, move, list, delete."""

from __future__ import annotations

import argparse
import json

from virtkit.commands.pool import _common, print_volumes, root_of, split_spec
from virtkit.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``virtkit volume {create,resize,snapshot,rollback,move,list,delete}``."""
    p = subparsers.add_parser("volume", help="logical volumes in a pool (linear, striped, mirror, parity, thin)",
                              description=__doc__)
    sub = p.add_subparsers(dest="volume_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    c = sub.add_parser("create", help="create a volume")
    c.add_argument("spec", metavar="POOL/VOL")
    c.add_argument("--size", required=True, metavar="SIZE", help="virtual size, e.g. 10G (K, M, G, T suffixes)")
    c.add_argument("--layout", default="linear", choices=["linear", "striped", "mirror", "parity"])
    c.add_argument("--stripes", type=int, metavar="N", help="striped: number of stripes; parity: devices per row")
    c.add_argument("--stripe-size", metavar="SIZE", help="bytes per stripe unit (default 64K)")
    c.add_argument("--copies", type=int, metavar="N", help="mirror: number of copies (default 2)")
    c.add_argument("--thin", action="store_true", help="allocate extents on first write (over-commit allowed)")
    c.add_argument("--json", action="store_true", help="print the volume as JSON")
    _common(c)
    c.set_defaults(func=cmd_create)

    r = sub.add_parser("resize", help="grow (or with --shrink, shrink) a volume; works while it is in use")
    r.add_argument("spec", metavar="POOL/VOL")
    r.add_argument("--size", required=True, metavar="SIZE", help="new size, or +SIZE to grow by SIZE")
    r.add_argument("--shrink", action="store_true", help="allow shrinking (data past the new end is lost)")
    _common(r)
    r.set_defaults(func=cmd_resize)

    s = sub.add_parser("snapshot", help="copy-on-write snapshot (read-only, shares extents)")
    s.add_argument("spec", metavar="POOL/VOL")
    s.add_argument("snapshot", metavar="SNAP")
    s.add_argument("--writable", action="store_true", help="a writable clone instead of a read-only snapshot")
    _common(s)
    s.set_defaults(func=cmd_snapshot)

    rb = sub.add_parser("rollback", help="return a volume to a snapshot's content")
    rb.add_argument("spec", metavar="POOL/VOL")
    rb.add_argument("snapshot", metavar="SNAP")
    _common(rb)
    rb.set_defaults(func=cmd_rollback)

    m = sub.add_parser("move", help="move a volume's extents off a device, online (like pvmove -n)")
    m.add_argument("spec", metavar="POOL/VOL")
    m.add_argument("--from", dest="src", required=True, metavar="DEV")
    m.add_argument("--to", dest="dst", metavar="DEV", help="destination device (default: any with room)")
    _common(m)
    m.set_defaults(func=cmd_move)

    ls = sub.add_parser("list", help="list the volumes of a pool")
    ls.add_argument("pool", metavar="POOL")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    _common(ls)
    ls.set_defaults(func=cmd_list)

    d = sub.add_parser("delete", help="delete a volume or snapshot")
    d.add_argument("spec", metavar="POOL/VOL")
    _common(d)
    d.set_defaults(func=cmd_delete)


def cmd_create(args: argparse.Namespace) -> int:
    """Create a volume with the requested layout."""
    from virtkit.storage.pool import Pool

    pool_name, vol = split_spec(args.spec)
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
    with Pool.open(pool_name, root=root_of(args)) as pool:
        v = pool.create_volume(vol, args.size, args.layout, width=width, stripe=args.stripe_size, thin=args.thin)
        info = pool.volume_usage(v)
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        print(f"created {args.spec}: {info['layout']} x{info['width']}, {info['size']} bytes"
              f"{' (thin)' if info['thin'] else ''}")
    return 0


def cmd_resize(args: argparse.Namespace) -> int:
    """Set a new size (``+SIZE`` grows by SIZE)."""
    from virtkit.storage.pool import Pool, parse_size

    pool_name, vol = split_spec(args.spec)
    with Pool.open(pool_name, root=root_of(args)) as pool:
        text = args.size.strip()
        size = pool.volume(vol).size + parse_size(text[1:]) if text.startswith("+") else parse_size(text)
        v = pool.resize_volume(vol, size, shrink=args.shrink)
        print(f"{args.spec} is now {v.size} bytes")
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    """Snapshot a volume."""
    from virtkit.storage.pool import Pool

    pool_name, vol = split_spec(args.spec)
    with Pool.open(pool_name, root=root_of(args)) as pool:
        pool.snapshot(vol, args.snapshot, writable=args.writable)
    print(f"{'clone' if args.writable else 'snapshot'} {pool_name}/{args.snapshot} of {args.spec} created")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Roll a volume back to a snapshot."""
    from virtkit.storage.pool import Pool

    pool_name, vol = split_spec(args.spec)
    with Pool.open(pool_name, root=root_of(args)) as pool:
        pool.rollback(vol, args.snapshot)
    print(f"{args.spec} rolled back to {args.snapshot}")
    return 0


def cmd_move(args: argparse.Namespace) -> int:
    """Move a volume's extents off a device."""
    from virtkit.storage.pool import Pool

    pool_name, vol = split_spec(args.spec)
    with Pool.open(pool_name, root=root_of(args)) as pool:
        moved = pool.move_volume(vol, args.src, args.dst)
    print(f"moved {moved} extents of {args.spec} off {args.src}")
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


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete a volume."""
    from virtkit.storage.pool import Pool

    pool_name, vol = split_spec(args.spec)
    with Pool.open(pool_name, root=root_of(args)) as pool:
        pool.delete_volume(vol)
    print(f"deleted {args.spec}")
    return 0
