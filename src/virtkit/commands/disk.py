"""``virtkit disk``: disk images (qcow2 v3 or raw) with qemu-img's verbs and option names.

create, show (info), convert, snapshot, check, resize, rebase, commit, compare, map, measure, amend, bench,
delete, list. Every command that writes takes the image's lock first (QEMU's locks: an image a VM, qemu-nbd or
another process holds is refused before anything is touched); read-only commands look at images in use with
-U/--force-share, like qemu-img. Exit statuses are qemu-img's (check: 0 clean, 2 corrupt, 3 leaks; compare: 0
identical, 1 different, 2 error).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from virtkit.commands._help import add, group
from virtkit.errors import ConfigError, VirtkitError
from virtkit.units import format_size, parse_size


def _fmt(p: argparse.ArgumentParser, flag: str = "-f") -> None:
    p.add_argument(flag, "--format" if flag == "-f" else "--target-format", dest="fmt" if flag == "-f" else "fmt2",
                   choices=["qcow2", "raw"], help="image format (default: probed; only qcow2 is recognised)")


def _share(p: argparse.ArgumentParser) -> None:
    p.add_argument("-U", "--force-share", action="store_true",
                   help="look at an image another VM or process holds (no lock, like qemu-img -U)")


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON (nothing else on stdout)")


def _output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", choices=["human", "json"], default="human", help="output format (qemu-img's option)")
    _json(p)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``virtkit disk ACTION``."""
    _, sub = group(subparsers, "disk", "disk images (qcow2, raw) with qemu-img's verbs", __doc__, "disk_command")

    c = add(sub, "create", "create a qcow2 or raw image (an existing image in use is refused)",
            ["virtkit disk create vm.qcow2 10G", "virtkit disk create -b base.qcow2 -F qcow2 vm0.qcow2",
             "virtkit disk create -f raw data.img 512M"])
    c.add_argument("path", metavar="IMAGE")
    c.add_argument("size", nargs="?", metavar="SIZE", help="virtual size, e.g. 10G (default: the backing file's)")
    c.add_argument("-f", "--format", dest="fmt", default="qcow2", choices=["qcow2", "raw"])
    c.add_argument("-b", "--backing", metavar="FILE", help="backing file (qcow2 only), relative to IMAGE's directory")
    c.add_argument("-F", "--backing-format", choices=["qcow2", "raw"], help="format of the backing file (probed)")
    c.add_argument("-o", dest="options", metavar="OPTS", help="cluster_size=64K,lazy_refcounts=on (qemu-img -o)")
    c.add_argument("--cluster-size", metavar="SIZE", help="qcow2 cluster size, 512..2M (64K)")
    _json(c)
    c.set_defaults(func=cmd_create)

    i = add(sub, "show", "format, sizes, backing chain and snapshots of an image", [
        "virtkit disk show vm0.qcow2", "virtkit disk info --backing-chain --output=json vm0.qcow2",
        "virtkit disk show -U disk-of-a-running-vm.qcow2"], aliases=("info",))
    i.add_argument("path", metavar="IMAGE")
    _fmt(i)
    _share(i)
    i.add_argument("--backing-chain", action="store_true", help="also show every backing file")
    _output(i)
    i.set_defaults(func=cmd_info)

    v = add(sub, "convert", "copy an image to a new one (raw<->qcow2, qcow2->qcow2 compacting, flattening)",
            ["virtkit disk convert -O raw vm0.qcow2 flat.raw", "virtkit disk convert -f raw -O qcow2 disk.img d.qcow2"])
    v.add_argument("src", metavar="SRC")
    v.add_argument("dst", metavar="DST")
    _fmt(v)
    v.add_argument("-O", "--output-format", default="qcow2", choices=["qcow2", "raw"])
    v.add_argument("--cluster-size", default="64K", metavar="SIZE")
    v.add_argument("--bitmaps", action="store_true", help="copy the persistent dirty bitmaps too (qcow2 to qcow2)")
    _share(v)
    v.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    v.add_argument("-p", "--progress", action="store_true", help="show a progress bar (the default on a terminal)")
    _json(v)
    v.set_defaults(func=cmd_convert)

    s = add(sub, "snapshot", "internal snapshots: -c create, -l list, -a apply, -d delete",
            ["virtkit disk snapshot -c before-upgrade vm0.qcow2", "virtkit disk snapshot -l vm0.qcow2"])
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("-c", dest="create", metavar="NAME", help="create a snapshot")
    g.add_argument("-l", dest="list", action="store_true", help="list snapshots")
    g.add_argument("-a", dest="apply", metavar="NAME", help="revert the disk to a snapshot")
    g.add_argument("-d", dest="delete", metavar="NAME", help="delete a snapshot")
    s.add_argument("path", metavar="IMAGE")
    _share(s)
    _json(s)
    s.set_defaults(func=cmd_snapshot)

    k = add(sub, "check", "check refcounts: exit 0 clean, 3 leaks only, 2 corruptions (qemu-img's codes)",
            ["virtkit disk check vm0.qcow2", "virtkit disk check -r all vm0.qcow2"])
    k.add_argument("path", metavar="IMAGE")
    k.add_argument("-r", dest="repair", choices=["leaks", "all"], help="repair leaks, or all errors (qemu-img -r)")
    k.add_argument("--repair", dest="repair", action="store_const", const="all", help="the same as -r all")
    _fmt(k)
    _share(k)
    _output(k)
    k.set_defaults(func=cmd_check)

    r = add(sub, "resize", "grow an image, or with --shrink shrink it: SIZE, +SIZE or -SIZE",
            ["virtkit disk resize vm0.qcow2 +4G", "virtkit disk resize --shrink data.img 1G"], aliases=("set",))
    r.add_argument("path", metavar="IMAGE")
    r.add_argument("size", metavar="[+|-]SIZE")
    _fmt(r)
    r.add_argument("--shrink", action="store_true", help="allow making the image smaller (data past the end is lost)")
    _json(r)
    r.set_defaults(func=cmd_resize)

    b = add(sub, "rebase", "change an image's backing file (safe: the guest sees the same data; -u: header only)",
            ["virtkit disk rebase -b new-base.qcow2 -F qcow2 vm0.qcow2",
             "virtkit disk rebase -u -b moved/base.qcow2 vm0.qcow2",
             "virtkit disk rebase -b '' vm0.qcow2   # no backing file any more (flattened)"])
    b.add_argument("path", metavar="IMAGE")
    b.add_argument("-b", "--backing", required=True, metavar="FILE", help="the new backing file ('' for none)")
    b.add_argument("-F", "--backing-format", choices=["qcow2", "raw"])
    b.add_argument("-u", "--unsafe", action="store_true", help="only rewrite the header (the files must be equal)")
    b.add_argument("-p", "--progress", action="store_true", help="show a progress bar")
    _json(b)
    b.set_defaults(func=cmd_rebase)

    m = add(sub, "commit", "write an overlay's data into its backing file (then empty the overlay; -d keeps it)",
            ["virtkit disk commit vm0.qcow2", "virtkit disk commit -b base.qcow2 -d top.qcow2"])
    m.add_argument("path", metavar="IMAGE")
    m.add_argument("-b", "--base", metavar="FILE", help="commit into this image of the chain (default: the backing)")
    m.add_argument("-d", dest="keep", action="store_true", help="do not empty IMAGE afterwards")
    m.add_argument("-p", "--progress", action="store_true", help="show a progress bar")
    _json(m)
    m.set_defaults(func=cmd_commit)

    cp = add(sub, "compare", "compare what two images read: exit 0 identical, 1 different, 2 error",
             ["virtkit disk compare vm0.qcow2 vm0.raw", "virtkit disk compare -s a.qcow2 b.qcow2"])
    cp.add_argument("img1", metavar="IMAGE1")
    cp.add_argument("img2", metavar="IMAGE2")
    cp.add_argument("-f", dest="fmt", choices=["qcow2", "raw"], help="format of IMAGE1")
    cp.add_argument("-F", dest="fmt2", choices=["qcow2", "raw"], help="format of IMAGE2")
    cp.add_argument("-s", "--strict", action="store_true", help="sizes and allocation must match too")
    _share(cp)
    cp.add_argument("-p", "--progress", action="store_true", help="show a progress bar")
    _json(cp)
    cp.set_defaults(func=cmd_compare)

    mp = add(sub, "map", "where each range of an image lives (depth in the backing chain, data, zeros)",
             ["virtkit disk map --output=json vm0.qcow2"])
    mp.add_argument("path", metavar="IMAGE")
    _fmt(mp)
    _share(mp)
    mp.add_argument("--start-offset", default="0", metavar="OFFSET")
    mp.add_argument("--max-length", metavar="LEN")
    _output(mp)
    mp.set_defaults(func=cmd_map)

    me = add(sub, "measure", "the file size an image needs for a virtual size, or to convert an image",
             ["virtkit disk measure --size 10G -O qcow2", "virtkit disk measure -O qcow2 vm0.raw"])
    me.add_argument("path", nargs="?", metavar="IMAGE")
    me.add_argument("--size", metavar="SIZE", help="measure a new image of this virtual size")
    me.add_argument("-O", dest="output_format", default="qcow2", choices=["qcow2", "raw"])
    _fmt(me)
    _share(me)
    _output(me)
    me.set_defaults(func=cmd_measure)

    a = add(sub, "amend", "change image options in place: -o lazy_refcounts=on|off, size=SIZE",
            ["virtkit disk amend -o lazy_refcounts=on vm0.qcow2"])
    a.add_argument("path", metavar="IMAGE")
    a.add_argument("-o", dest="options", required=True, metavar="OPTS")
    _fmt(a)
    _json(a)
    a.set_defaults(func=cmd_amend)

    be = add(sub, "bench", "run a stream of read (or write) requests on an image and time it (qemu-img bench)",
             ["virtkit disk bench -c 20000 -d 16 vm0.qcow2", "virtkit disk bench -w -s 65536 scratch.raw"])
    be.add_argument("path", metavar="IMAGE")
    be.add_argument("-c", "--count", type=int, default=75000)
    be.add_argument("-d", "--depth", type=int, default=64)
    be.add_argument("-s", "--buffer-size", default="4096", metavar="SIZE")
    be.add_argument("-o", "--offset", default="0", metavar="OFFSET")
    be.add_argument("-S", "--step-size", metavar="SIZE")
    be.add_argument("-w", "--write", action="store_true")
    be.add_argument("--flush-interval", type=int, default=0)
    be.add_argument("--pattern", type=lambda t: int(t, 0), default=0xA5)
    _fmt(be)
    _share(be)
    _json(be)
    be.set_defaults(func=cmd_bench)

    bm = add(sub, "bitmap", "persistent dirty bitmaps of a qcow2 image (qemu-img bitmap): what changed since when",
             ["virtkit disk bitmap --add vm0.qcow2 daily", "virtkit disk bitmap --clear vm0.qcow2 daily",
              "virtkit disk bitmap --merge old -b other.qcow2 vm0.qcow2 daily", "virtkit disk show vm0.qcow2"])
    ops = bm.add_argument_group("operations (done in the order given)")
    for flag, what in (("--add", "create the bitmap, empty"), ("--remove", "delete it"),
                       ("--clear", "mark every chunk clean"), ("--enable", "record writes from now"),
                       ("--disable", "stop recording (freeze it)")):
        ops.add_argument(flag, dest="ops", action="append_const", const=flag[2:], help=what)
    ops.add_argument("--merge", dest="ops", action="append", type=lambda v: ("merge", v), metavar="SOURCE",
                     help="add the dirty chunks of bitmap SOURCE (of -b FILE, else of this image)")
    bm.add_argument("-g", "--granularity", default="64K", metavar="SIZE", help="chunk size of --add (default 64K)")
    bm.add_argument("-b", dest="source_file", metavar="FILE", help="the image --merge reads SOURCE from")
    bm.add_argument("path", metavar="IMAGE")
    bm.add_argument("bitmap", metavar="BITMAP")
    _fmt(bm)
    _json(bm)
    bm.set_defaults(func=cmd_bitmap)

    dl = add(sub, "delete", "remove an image file (refused while a VM or process uses it)",
             ["virtkit disk delete old.qcow2"])
    dl.add_argument("path", metavar="IMAGE")
    _json(dl)
    dl.set_defaults(func=cmd_delete)

    ls = add(sub, "list", "the disk images in a directory: format, sizes, backing file, in use",
             ["virtkit disk list ~/vms", "virtkit disk list --json ."])
    ls.add_argument("dir", nargs="?", default=".", metavar="DIR")
    _json(ls)
    ls.set_defaults(func=cmd_list)


# ------------------------------------------------------------------------------------------------ helpers
def _emit(args: argparse.Namespace, data: Any, text: str | None = None) -> None:
    if getattr(args, "json", False) or getattr(args, "output", "human") == "json":
        print(json.dumps(data, indent=1, default=str))
    elif text is not None:
        print(text)


def _progress(enabled: bool, title: str):
    """A rich progress bar (units of the one size formatter) or None."""
    if not enabled:
        return None
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    prog = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(binary_units=True),
                    TransferSpeedColumn(), transient=False)
    task = prog.add_task(title, total=None)

    def update(done: int, total: int) -> None:
        prog.update(task, completed=done, total=total)

    return prog, update


def _with_progress(args: argparse.Namespace, title: str, fn):
    show = (getattr(args, "progress", False) or sys.stderr.isatty()) and not getattr(args, "quiet", False) \
        and not getattr(args, "json", False)
    pb = _progress(show, title)
    if pb is None:
        return fn(None)
    prog, update = pb
    with prog:
        return fn(update)


def _parse_opts(text: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        k, sep, v = part.partition("=")
        if not sep:
            raise ConfigError(f"bad -o option {part!r}: expected key=value")
        out[k.strip()] = v.strip()
    return out


def _onoff(key: str, v: str) -> bool:
    if v in ("on", "true", "yes"):
        return True
    if v in ("off", "false", "no"):
        return False
    raise ConfigError(f"-o {key}={v!r}: expected on or off")


def _open_qcow2(path: str, read_only: bool, force_share: bool = False):
    from virtkit.storage.formats import probe, refusal
    from virtkit.storage.qcow2 import Qcow2, Qcow2Error

    p = probe(path)
    if p.name != "qcow2":
        if not p.supported:
            raise Qcow2Error(refusal(path, p))
        raise Qcow2Error(f"{path}: not a qcow2 image (snapshots, checks and this command need qcow2)")
    return Qcow2(path, read_only=read_only, force_share=force_share)


# ------------------------------------------------------------------------------------------------ commands
def cmd_create(args: argparse.Namespace) -> int:
    """Create an image (a new file, or replacing one nobody uses)."""
    from virtkit.storage.backend import BlockError, replacing
    from virtkit.storage.imgtool import image_info
    from virtkit.storage.qcow2 import Qcow2

    opts = _parse_opts(args.options)
    unknown = set(opts) - {"cluster_size", "lazy_refcounts", "size", "backing_file", "backing_fmt"}
    if unknown:
        raise ConfigError(f"unknown -o option(s) {', '.join(sorted(unknown))} (cluster_size, lazy_refcounts, size)")
    size = parse_size(args.size if args.size is not None else opts["size"]) if (args.size or "size" in opts) else None
    backing = args.backing or opts.get("backing_file")
    cluster = parse_size(args.cluster_size or opts.get("cluster_size", "64K"), what="cluster size")
    if args.fmt == "raw":
        if backing:
            raise ConfigError("raw images cannot have a backing file")
        if size is None:
            raise ConfigError("a size is needed for a raw image")
        with replacing(args.path) as tmp:
            try:
                with open(tmp, "wb") as f:
                    f.truncate(size)
            except OSError as err:
                raise BlockError(f"cannot create {args.path!r}: {err.strerror}", err.errno) from None
    else:
        if size is None and not backing:
            raise ConfigError("a size is needed when there is no backing file")
        Qcow2.create(args.path, size if size is not None else -1, cluster_size=cluster, backing=backing,
                     backing_fmt=args.backing_format or opts.get("backing_fmt"))
        if "lazy_refcounts" in opts and _onoff("lazy_refcounts", opts["lazy_refcounts"]):
            with Qcow2(args.path) as q:
                q.amend(lazy_refcounts=True)
    info = image_info(args.path)
    extra = f", backing_file={backing}" if backing else ""
    _emit(args, info, f"Formatting {args.path!r}, fmt={args.fmt} size={info['virtual_size']}{extra}")
    return 0


def _info_text(info: dict) -> str:
    lines = [f"image: {info['filename']}", f"file format: {info['format']}"]
    if info.get("supported") is False:
        lines.append(f"({info['title']}: virtkit reads raw and qcow2; convert it with qemu-img)")
        return "\n".join(lines)
    lines.append(f"virtual size: {format_size(info['virtual_size'])} ({info['virtual_size']} bytes)")
    lines.append(f"disk size: {format_size(info['disk_size'])}")
    if info["format"] == "qcow2":
        lines.append(f"cluster_size: {info['cluster_size']}")
        if info.get("backing_file"):
            lines.append(f"backing file: {info['backing_file']}")
            if info.get("backing_format"):
                lines.append(f"backing file format: {info['backing_format']}")
        if info.get("snapshots"):
            lines.append("Snapshot list:")
            lines.append(f"{'ID':<8}{'TAG':<20}{'VM SIZE':>10}{'DATE':>22}{'VM CLOCK':>16}")
            for s in info["snapshots"]:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["date"]))
                clock = s["vm_clock_nsec"] // 10**9
                lines.append(f"{s['id']:<8}{s['name']:<20}{format_size(s['vm_state_size']):>10}{when:>22}"
                             f"{clock // 3600:>8}:{clock // 60 % 60:02d}:{clock % 60:02d}")
        lines.append("Format specific information:")
        lines.append("    compat: 1.1")
        lines.append(f"    lazy refcounts: {str(info['lazy_refcounts']).lower()}")
        if info.get("bitmaps"):
            lines.append("    bitmaps:")
            for b in info["bitmaps"]:
                state = f"{format_size(b['dirty_bytes'])} dirty" if b["consistent"] else "inconsistent"
                flags = ", ".join(b["flags"]) or "disabled"
                lines.append(f"        {b['name']}: granularity {b['granularity']}, {flags}, {state}")
        lines.append(f"    refcount bits: {info['refcount_bits']}")
        lines.append(f"    corrupt: {str(info['corrupt']).lower()}")
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    """Print image information (``--output=json`` in qemu-img's shape, ``--json`` in virtkit's)."""
    from virtkit.storage.imgtool import backing_chain_info, image_info, qemu_info

    infos = backing_chain_info(args.path, args.force_share) if args.backing_chain else \
        [image_info(args.path, args.force_share, args.fmt)]
    if args.output == "json":
        q = [qemu_info(i) for i in infos]
        print(json.dumps(q if args.backing_chain else q[0], indent=4))
    elif args.json:
        print(json.dumps(infos if args.backing_chain else infos[0], indent=1))
    else:
        print("\n\n".join(_info_text(i) for i in infos))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert an image, with a progress bar."""
    from virtkit.storage.imgtool import convert

    if not os.path.exists(args.src) and "/" not in args.src:
        raise ConfigError(f"source image {args.src!r} does not exist")
    cs = parse_size(args.cluster_size, what="cluster size")
    t0 = time.perf_counter()
    res = _with_progress(args, f"{args.src} -> {args.dst}", lambda cb: convert(
        args.src, args.dst, args.output_format, cs, progress=cb, src_format=args.fmt, force_share=args.force_share,
        bitmaps=args.bitmaps))
    res["seconds"] = round(time.perf_counter() - t0, 3)
    if args.json:
        print(json.dumps(res))
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    """Create, list, apply or delete an internal snapshot."""
    if args.list:
        with _open_qcow2(args.path, read_only=True, force_share=args.force_share) as q:
            snaps = [{"id": s.id, "name": s.name, "vm_state_size": s.vm_state_size, "disk_size": s.disk_size,
                      "date": s.date_sec + s.date_nsec / 1e9} for s in q.snapshots]
        if args.json:
            print(json.dumps(snaps, indent=1))
        else:
            from rich.console import Console

            Console().print(_snapshot_table(snaps))
        return 0
    if args.force_share:
        raise ConfigError("-U only applies to -l: changing snapshots needs the image to itself")
    with _open_qcow2(args.path, read_only=False) as q:
        if args.create is not None:
            q.snapshot_create(args.create)
            what = {"created": args.create}
        elif args.apply is not None:
            q.snapshot_apply(args.apply)
            what = {"applied": args.apply}
        else:
            q.snapshot_delete(args.delete)
            what = {"deleted": args.delete}
    if args.json:
        print(json.dumps({"image": args.path, **what}))
    return 0


def _snapshot_table(snaps: list[dict]):
    from rich.table import Table

    t = Table(title="snapshots")
    for col in ("ID", "TAG", "VM SIZE", "DATE", "DISK SIZE"):
        t.add_column(col)
    for s in snaps:
        t.add_row(s["id"], s["name"], format_size(s["vm_state_size"]),
                  time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["date"])), format_size(s["disk_size"]))
    return t


def cmd_check(args: argparse.Namespace) -> int:
    """Check (and optionally repair) refcounts; exit status like qemu-img check."""
    if args.repair and args.force_share:
        raise ConfigError("-U cannot be used with -r: repairing needs the image to itself")
    with _open_qcow2(args.path, read_only=not args.repair, force_share=args.force_share) as q:
        res = q.check(repair=bool(args.repair))
    if args.json or args.output == "json":
        print(json.dumps({"filename": args.path, "format": "qcow2", "check-errors": res.corruptions,
                          "leaks": res.leaks, "corruptions": res.corruptions, "repaired": res.repaired,
                          "allocated-clusters": res.allocated_clusters, "total-clusters": res.total_clusters,
                          "image-end-offset": res.image_end_offset, "messages": res.messages}, indent=1))
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
        print(f"{res.allocated_clusters}/{res.total_clusters} = "
              f"{100 * res.allocated_clusters / max(1, res.total_clusters):.2f}% allocated clusters")
        print(f"Image end offset: {res.image_end_offset}")
    return 2 if res.corruptions else 3 if res.leaks else 0


def cmd_resize(args: argparse.Namespace) -> int:
    """Grow or shrink an image in place."""
    from virtkit.storage.imgtool import resize

    new = resize(args.path, args.size, args.fmt, shrink=args.shrink)
    _emit(args, {"image": args.path, "size": new}, "Image resized.")
    return 0


def cmd_rebase(args: argparse.Namespace) -> int:
    """Change the backing file."""
    from virtkit.storage.imgtool import rebase

    _with_progress(args, f"rebase {args.path}", lambda cb: rebase(args.path, args.backing or None,
                                                                   args.backing_format, unsafe=args.unsafe,
                                                                   progress=cb))
    _emit(args, {"image": args.path, "backing_file": args.backing or None}, None)
    return 0


def cmd_commit(args: argparse.Namespace) -> int:
    """Commit an overlay into its backing file."""
    from virtkit.storage.imgtool import commit

    base = _with_progress(args, f"commit {args.path}", lambda cb: commit(args.path, args.base, drop=not args.keep,
                                                                          progress=cb))
    _emit(args, {"image": args.path, "base": base, "emptied": not args.keep}, "Image committed.")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare two images; exit 0 identical, 1 different, 2 error (qemu-img compare's codes)."""
    from virtkit.storage.imgtool import compare, open_image

    try:
        a = open_image(args.img1, args.fmt, force_share=args.force_share)
        try:
            b = open_image(args.img2, args.fmt2, force_share=args.force_share)
        except BaseException:
            a.close()
            raise
    except VirtkitError as err:
        print(f"virtkit: error: {err}", file=sys.stderr)
        return 2
    try:
        res = _with_progress(args, "compare", lambda cb: compare(a, b, strict=args.strict, progress=cb))
    except VirtkitError as err:
        print(f"virtkit: error: {err}", file=sys.stderr)
        return 3
    finally:
        a.close()
        b.close()
    _emit(args, {"identical": res.identical, "message": res.message, "offset": res.offset}, res.message)
    return 0 if res.identical else 1


def cmd_map(args: argparse.Namespace) -> int:
    """Print the image's map (``--output=json``: qemu-img map's exact JSON)."""
    from virtkit.storage.imgtool import image_map, map_human, map_json, open_image

    b = open_image(args.path, args.fmt, force_share=args.force_share)
    try:
        rows = image_map(b, parse_size(args.start_offset, what="offset"),
                         parse_size(args.max_length, what="length") if args.max_length else None)
    finally:
        b.close()
    if args.output == "json" or args.json:
        sys.stdout.write(map_json(rows))
    else:
        sys.stdout.write(map_human(rows))
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    """Print the sizes a new image needs."""
    from virtkit.storage.imgtool import measure, open_image

    if (args.size is None) == (args.path is None):
        raise ConfigError("give either --size SIZE or an IMAGE to measure")
    if args.size is not None:
        res = measure(args.output_format, size=parse_size(args.size))
    else:
        b = open_image(args.path, args.fmt, force_share=args.force_share)
        try:
            res = measure(args.output_format, src=b)
        finally:
            b.close()
    text = f"required size: {res['required']}\nfully allocated size: {res['fully-allocated']}"
    if "bitmaps" in res:
        text += f"\nbitmaps size: {res['bitmaps']}"
    _emit(args, res, text)
    return 0


def cmd_amend(args: argparse.Namespace) -> int:
    """Change image options in place."""
    from virtkit.storage.imgtool import resize

    opts = _parse_opts(args.options)
    unknown = set(opts) - {"lazy_refcounts", "compat", "size"}
    if unknown:
        raise ConfigError(f"unknown -o option(s) {', '.join(sorted(unknown))} (lazy_refcounts, compat, size)")
    changed: list[str] = []
    if "lazy_refcounts" in opts or "compat" in opts:
        with _open_qcow2(args.path, read_only=False) as q:
            changed += q.amend(lazy_refcounts=_onoff("lazy_refcounts", opts["lazy_refcounts"])
                               if "lazy_refcounts" in opts else None, compat=opts.get("compat"))
    if "size" in opts:
        resize(args.path, opts["size"], args.fmt, shrink=True)
        changed.append(f"size={opts['size']}")
    _emit(args, {"image": args.path, "changed": changed}, None)
    return 0


def cmd_bitmap(args: argparse.Namespace) -> int:
    """Apply the bitmap operations in order; the image is written once, when it is closed."""
    if not args.ops:
        raise ConfigError("say what to do: --add, --remove, --clear, --enable, --disable or --merge SOURCE")
    if args.fmt == "raw":
        raise ConfigError("dirty bitmaps are kept in qcow2 images only")
    gran = parse_size(args.granularity, what="granularity")
    with _open_qcow2(args.path, read_only=False) as q:
        for op in args.ops:
            if op == "add":
                q.bitmap_add(args.bitmap, gran)
            elif op == "remove":
                q.bitmap_remove(args.bitmap)
            elif op == "clear":
                q.bitmap_clear(args.bitmap)
            elif op in ("enable", "disable"):
                q.bitmap_enable(args.bitmap, op == "enable")
            else:
                src_name = op[1]
                if args.source_file:
                    with _open_qcow2(args.source_file, read_only=True) as src:
                        source = src.bitmap(src_name)
                else:
                    source = q.bitmap(src_name).copy()
                q.bitmap_merge(source, args.bitmap)
        listed = [b for b in q.bitmap_list() if b["name"] == args.bitmap]
    _emit(args, {"image": args.path, "bitmap": args.bitmap, "done": [o if isinstance(o, str) else f"merge {o[1]}"
                                                                     for o in args.ops], "bitmaps": listed})
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Time a stream of requests."""
    from virtkit.storage.imgtool import bench, open_image

    b = open_image(args.path, args.fmt, read_only=not args.write, force_share=args.force_share)
    try:
        size = parse_size(args.buffer_size, what="buffer size")
        step = parse_size(args.step_size, what="step size") if args.step_size else None
        offset = parse_size(args.offset, what="offset")
        if not args.json:
            kind = "write" if args.write else "read"
            print(f"Sending {args.count} {kind} requests, {size} bytes each, {args.depth} in parallel "
                  f"(starting at offset {offset}, step size {step or size})")
        res = bench(b, count=args.count, depth=args.depth, size=size, offset=offset, step=step, write=args.write,
                    flush_interval=args.flush_interval, pattern=args.pattern)
    finally:
        b.close()
    _emit(args, res, f"Run completed in {res['seconds']:.3f} seconds.")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """Remove an image nobody uses."""
    from virtkit.storage.backend import BlockError, lock_image
    from virtkit.storage.lock import EXCLUSIVE

    try:
        fd = os.open(args.path, os.O_RDONLY)
    except FileNotFoundError:
        raise BlockError(f"disk image {args.path!r} does not exist") from None
    try:
        lock_image(fd, args.path, read_only=False, mode=EXCLUSIVE)
        os.unlink(args.path)
    finally:
        os.close(fd)
    _emit(args, {"deleted": args.path}, f"deleted {args.path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Images in a directory."""
    from virtkit.storage.formats import probe
    from virtkit.storage.imgtool import image_info
    from virtkit.storage.lock import users

    rows = []
    for name in sorted(os.listdir(args.dir)):
        path = os.path.join(args.dir, name)
        if not os.path.isfile(path) or name.startswith("."):
            continue
        try:
            p = probe(path)
        except VirtkitError:
            continue
        if p.name == "raw" and not name.endswith((".img", ".raw", ".iso", ".ext4", ".bin")):
            continue
        row: dict[str, Any] = {"name": name, "format": p.name, "in_use": users(path) or ""}
        try:
            info = image_info(path, force_share=True)
            row |= {"virtual_size": info.get("virtual_size"), "disk_size": info["disk_size"],
                    "backing_file": info.get("backing_file")}
        except VirtkitError as err:
            row["error"] = str(err)
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"disk images in {os.path.abspath(args.dir)}")
    for col in ("image", "format", "virtual size", "disk size", "backing file", "in use by"):
        t.add_column(col, overflow="fold")
    for r in rows:
        vs = r.get("virtual_size")
        t.add_row(r["name"], r["format"], format_size(vs) if vs is not None else "", format_size(r.get("disk_size", 0)),
                  r.get("backing_file") or "", r["in_use"] or r.get("error", ""))
    Console().print(t)
    return 0
