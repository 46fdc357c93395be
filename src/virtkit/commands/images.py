"""``virtkit images``: build, list and locate the guest images (kernel, busybox, initramfs, firmware)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``virtkit images {build,list,path}`` to the top-level parser."""
    p = subparsers.add_parser("images", help="build and locate guest images (from Debian packages, cached)",
                              description=__doc__)
    sub = p.add_subparsers(dest="images_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    from virtkit.commands._help import add

    b = add(sub, "build", "build images (default: all) unless cached", ["virtkit images build",
                                                                         "virtkit images build kernel --force"])
    b.add_argument("names", nargs="*", metavar="NAME", help="kernel, busybox, initramfs (default: all)")
    b.add_argument("--force", action="store_true", help="rebuild even if a cached build exists")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    b.add_argument("--json", action="store_true", help="print {name: path} as JSON")
    b.set_defaults(func=cmd_build)

    ls = add(sub, "list", "list images: name, key, size, built or not", "virtkit images list --json")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_list)

    pa = add(sub, "path", "print the path of a built image", "virtkit images path kernel")
    pa.add_argument("name", metavar="NAME", help="kernel, busybox, initramfs or firmware")
    pa.set_defaults(func=cmd_path)


def cmd_build(args: argparse.Namespace) -> int:
    """Build the requested images and print where they are."""
    from virtkit.images import build

    paths = build(args.names or None, progress=not (args.quiet or args.json), force=args.force)
    if args.json:
        print(json.dumps({k: str(v) for k, v in paths.items()}, indent=1))
    elif args.quiet:
        for name, path in paths.items():
            print(f"{name}\t{path}")
    return 0


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_list(args: argparse.Namespace) -> int:
    """Print the image table (or JSON)."""
    from virtkit.images import list_images

    rows = list_images()
    if args.json:
        print(json.dumps([{"name": r.name, "key": r.key, "built": r.built, "path": str(r.path), "size": r.size,
                           "summary": r.summary, "error": r.error} for r in rows], indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="virtkit guest images")
    for col in ("name", "key", "size", "status", "path"):
        table.add_column(col, overflow="fold")
    for r in rows:
        status = "[green]built" if r.built else (f"[red]unbuildable: {r.error}" if r.error else "[yellow]not built")
        table.add_row(r.name, r.key, _human(r.size) if r.built else "-", status, str(r.path))
    Console().print(table)
    return 0


def cmd_path(args: argparse.Namespace) -> int:
    """Print the path of one built image (error if not built)."""
    from virtkit.images import image_path

    print(image_path(args.name))
    return 0
