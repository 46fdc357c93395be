"""``virtkit disk``: create, inspect, convert, snapshot and check disk images (qcow2 v3 or raw)."""

from __future__ import annotations

import argparse
import json
import os
import re
import time

from virtkit.errors import ConfigError

_SUFFIX = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(text: str) -> int:
    """Parse ``10G``, ``512M``, ``64K``, ``1.5G`` or a byte count (binary units, like qemu-img)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtTpPbB]?)(?:i?[bB])?\s*", text or "")
    if not m:
        raise ConfigError(f"invalid size {text!r} (expected a number with an optional K/M/G/T suffix)")
    value = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if value != int(value):
        raise ConfigError(f"size {text!r} is not a whole number of bytes")
    if value >= 1 << 62:
        raise ConfigError(f"size {text!r} is too large")
    return int(value)


def _human(n: int) -> str:
    f = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if f < 1024 or unit == "TiB":
            return f"{int(f)} {unit}" if unit == "B" else f"{f:.3g} {unit}"
        f /= 1024
    return str(n)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``virtkit disk {create,info,convert,snapshot,check}``."""
    p = subparsers.add_parser("disk", help="create, inspect, convert, snapshot and check disk images",
                              description=__doc__)
    sub = p.add_subparsers(dest="disk_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    c = sub.add_parser("create", help="create a qcow2 or raw image")
    c.add_argument("path", metavar="IMAGE")
    c.add_argument("size", nargs="?", metavar="SIZE", help="virtual size, e.g. 10G (default: the backing file's)")
    c.add_argument("-f", "--format", default="qcow2", choices=["qcow2", "raw"])
    c.add_argument("-b", "--backing", metavar="FILE", help="backing file (qcow2 only), relative to IMAGE's directory")
    c.add_argument("-F", "--backing-format", choices=["qcow2", "raw"], help="format of the backing file (probed)")
    c.add_argument("--cluster-size", default="64K", metavar="SIZE", help="qcow2 cluster size, 512..2M (64K)")
    c.add_argument("--json", action="store_true", help="print the new image's info as JSON")
    c.set_defaults(func=cmd_create)

    i = sub.add_parser("info", help="show format, sizes, backing chain and snapshots")
    i.add_argument("path", metavar="IMAGE")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=cmd_info)

    v = sub.add_parser("convert", help="copy an image to a new one (raw<->qcow2, qcow2->qcow2 compacting)")
    v.add_argument("src", metavar="SRC")
    v.add_argument("dst", metavar="DST")
    v.add_argument("-O", "--output-format", default="qcow2", choices=["qcow2", "raw"])
    v.add_argument("--cluster-size", default="64K", metavar="SIZE")
    v.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    v.add_argument("--json", action="store_true", help="print a JSON summary")
    v.set_defaults(func=cmd_convert)

    s = sub.add_parser("snapshot", help="internal snapshots: -c create, -l list, -a apply, -d delete")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("-c", dest="create", metavar="NAME", help="create a snapshot")
    g.add_argument("-l", dest="list", action="store_true", help="list snapshots")
    g.add_argument("-a", dest="apply", metavar="NAME", help="revert the disk to a snapshot")
    g.add_argument("-d", dest="delete", metavar="NAME", help="delete a snapshot")
    s.add_argument("path", metavar="IMAGE")
    s.add_argument("--json", action="store_true", help="machine-readable output (-l)")
    s.set_defaults(func=cmd_snapshot)

    k = sub.add_parser("check", help="check refcounts: exit 0 clean, 3 leaks only, 2 corruptions")
    k.add_argument("path", metavar="IMAGE")
    k.add_argument("-r", "--repair", action="store_true", help="repair refcounts (leaks and errors)")
    k.add_argument("--json", action="store_true", help="machine-readable output")
    k.set_defaults(func=cmd_check)


def _open_qcow2(path: str, read_only: bool):
    from virtkit.storage.qcow2 import Qcow2, Qcow2Error, probe_format

    if probe_format(path) != "qcow2":
        raise Qcow2Error(f"{path}: not a qcow2 image (snapshots and checks need qcow2)")
    return Qcow2(path, read_only=read_only)


def cmd_create(args: argparse.Namespace) -> int:
    """Create an image."""
    from virtkit.storage.imgtool import image_info
    from virtkit.storage.qcow2 import Qcow2

    size = parse_size(args.size) if args.size is not None else None
    if args.format == "raw":
        if args.backing:
            raise ConfigError("raw images cannot have a backing file")
        if size is None:
            raise ConfigError("a size is needed for a raw image")
        try:
            with open(args.path, "wb") as f:
                f.truncate(size)
        except OSError as err:
            raise ConfigError(f"cannot create {args.path!r}: {err.strerror}") from None
    else:
        if size is None and not args.backing:
            raise ConfigError("a size is needed when there is no backing file")
        Qcow2.create(args.path, size if size is not None else -1, cluster_size=parse_size(args.cluster_size),
                     backing=args.backing, backing_fmt=args.backing_format)
    info = image_info(args.path)
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        extra = f", backing_file={args.backing}" if args.backing else ""
        print(f"Formatting {args.path!r}, fmt={args.format} size={info['virtual_size']}{extra}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print image information."""
    from virtkit.storage.imgtool import image_info

    info = image_info(args.path)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"image {args.path}", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value", overflow="fold")
    t.add_row("format", info["format"])
    t.add_row("virtual size", f"{_human(info['virtual_size'])} ({info['virtual_size']} bytes)")
    t.add_row("disk size", _human(info["disk_size"]))
    if info["format"] == "qcow2":
        t.add_row("cluster size", str(info["cluster_size"]))
        t.add_row("refcount bits", str(info["refcount_bits"]))
        flags = [n for n in ("dirty", "corrupt", "lazy_refcounts") if info[n]]
        t.add_row("flags", ", ".join(flags) or "-")
        chain = " -> ".join([args.path] + [f"{b['filename']} ({b['format']})" for b in info["backing_chain"]])
        t.add_row("backing chain", chain)
    con = Console()
    con.print(t)
    if info.get("snapshots"):
        con.print(_snapshot_table(info["snapshots"]))
    return 0


def _snapshot_table(snaps: list[dict]):
    from rich.table import Table

    t = Table(title="snapshots")
    for col in ("ID", "TAG", "VM SIZE", "DATE", "DISK SIZE"):
        t.add_column(col)
    for s in snaps:
        t.add_row(s["id"], s["name"], _human(s["vm_state_size"]),
                  time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["date"])), _human(s["disk_size"]))
    return t


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert an image, with a progress bar."""
    from virtkit.storage.imgtool import convert

    if not os.path.exists(args.src):
        raise ConfigError(f"source image {args.src!r} does not exist")
    cs = parse_size(args.cluster_size)
    t0 = time.perf_counter()
    if args.quiet or args.json:
        res = convert(args.src, args.dst, args.output_format, cs)
    else:
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                      TransferSpeedColumn()) as prog:
            task = prog.add_task(f"{args.src} -> {args.dst}", total=None)
            res = convert(args.src, args.dst, args.output_format, cs,
                          progress=lambda done, total: prog.update(task, completed=done, total=total))
    res["seconds"] = round(time.perf_counter() - t0, 3)
    if args.json:
        print(json.dumps(res))
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    """Create, list, apply or delete an internal snapshot."""
    if args.list:
        with _open_qcow2(args.path, read_only=True) as q:
            snaps = [{"id": s.id, "name": s.name, "vm_state_size": s.vm_state_size, "disk_size": s.disk_size,
                      "date": s.date_sec + s.date_nsec / 1e9} for s in q.snapshots]
        if args.json:
            print(json.dumps(snaps, indent=1))
        else:
            from rich.console import Console

            Console().print(_snapshot_table(snaps))
        return 0
    with _open_qcow2(args.path, read_only=False) as q:
        if args.create is not None:
            q.snapshot_create(args.create)
        elif args.apply is not None:
            q.snapshot_apply(args.apply)
        else:
            q.snapshot_delete(args.delete)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Check (and optionally repair) refcounts; exit status like qemu-img check."""
    with _open_qcow2(args.path, read_only=not args.repair) as q:
        res = q.check(repair=args.repair)
    if args.json:
        print(json.dumps({"filename": args.path, "leaks": res.leaks, "corruptions": res.corruptions,
                          "repaired": res.repaired, "allocated_clusters": res.allocated_clusters,
                          "total_clusters": res.total_clusters, "image_end_offset": res.image_end_offset,
                          "messages": res.messages}, indent=1))
    else:
        for m in res.messages:
            print(m)
        if res.clean:
            print("No errors were found on the image.")
        else:
            if res.corruptions:
                print(f"{res.corruptions} errors were found on the image.")
            if res.leaks:
                print(f"{res.leaks} leaked clusters were found on the image.")
        if res.repaired:
            print(f"{res.repaired} refcounts were repaired.")
        print(f"{res.allocated_clusters} clusters in use, image end offset {res.image_end_offset}")
    return 2 if res.corruptions else 3 if res.leaks else 0
