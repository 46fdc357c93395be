"""``virtkit image``: container images (OCI image layouts): import, list, inspect, remove, build, export.

Images live in an OCI image layout under $VIRTKIT_CONTAINERS_DIR (default /var/lib/virtkit/containers for
root); their layers are unpacked once and shared by every container made from them (overlayfs).
"""

from __future__ import annotations

import argparse
import json
import time

from virtkit.commands._help import add, group
from virtkit.units import format_size


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``virtkit image ACTION``."""
    _, sub = group(subparsers, "image", "container images: import, build, list, inspect, remove, export",
                   __doc__, "image_command")
    i = add(sub, "import", "import an OCI image layout (directory or tar) or a docker/podman save tarball",
            ["virtkit image import busybox.tar", "virtkit image import ./oci-dir --name demo:1"], aliases=("load",))
    i.add_argument("path", metavar="PATH")
    i.add_argument("--name", metavar="NAME[:TAG]", help="the name to give (required when the image has none)")
    i.add_argument("--json", action="store_true", help="print the names imported as JSON")
    i.set_defaults(func=cmd_import)

    ls = add(sub, "list", "the images in the store", ["virtkit image list", "virtkit image list --json"],
             aliases=("ls",))
    ls.add_argument("--json", action="store_true", help="print the list as JSON (nothing else on stdout)")
    ls.set_defaults(func=cmd_list)

    ins = add(sub, "inspect", "an image's manifest and configuration as JSON", ["virtkit image inspect busybox"])
    ins.add_argument("ref", metavar="IMAGE")
    ins.set_defaults(func=cmd_inspect)

    rm = add(sub, "rm", "remove image names; blobs and layers nothing else uses go too",
             ["virtkit image rm busybox:latest"])
    rm.add_argument("refs", nargs="+", metavar="IMAGE")
    rm.add_argument("-f", "--force", action="store_true", help="remove even if a container uses it")
    rm.set_defaults(func=cmd_rm)

    b = add(sub, "build", "build an image: from a Containerfile, the host's busybox, or Debian packages",
            ["virtkit image build -t web:1 .                  (./Containerfile or ./Dockerfile)",
             "virtkit image build -t busybox --busybox        (one layer: /bin/busybox and its applets)",
             "virtkit image build -t debian:12 --debian bookworm --include curl"])
    b.add_argument("context", nargs="?", metavar="DIR", help="the build context (with a Containerfile)")
    b.add_argument("-t", "--tag", required=True, metavar="NAME[:TAG]")
    b.add_argument("-f", "--file", metavar="FILE", help="the Containerfile (default DIR/Containerfile or Dockerfile)")
    b.add_argument("--busybox", action="store_true", help="a tiny image from the host's static busybox")
    b.add_argument("--debian", metavar="SUITE", help="a Debian image (mmdebstrap --variant=minbase SUITE)")
    b.add_argument("--include", action="append", default=[], metavar="PKG", help="with --debian: more packages")
    b.add_argument("--mirror", metavar="URL", help="with --debian: the mirror (default: apt's)")
    b.set_defaults(func=cmd_build)

    e = add(sub, "export", "write an image as an OCI layout tarball (ctr image import reads it)",
            ["virtkit image export busybox busybox.tar"], aliases=("save",))
    e.add_argument("ref", metavar="IMAGE")
    e.add_argument("out", metavar="FILE")
    e.set_defaults(func=cmd_export)


def _store():  # noqa: ANN202
    from virtkit.containers.images import Store

    return Store()


def cmd_import(args: argparse.Namespace) -> int:
    """Import, print the names."""
    refs = _store().import_path(args.path, args.name)
    print(json.dumps(refs) if args.json else "\n".join(f"imported {r}" for r in refs))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """The images, as a table or JSON."""
    rows = _store().images()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table()
    for col in ("IMAGE", "ID", "CREATED", "SIZE"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["ref"], r["id"][7:19], r["created"], format_size(r["size"]))
    Console().print(t)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Manifest and config as JSON."""
    digest, man, cfg = _store().resolve(args.ref)
    print(json.dumps({"manifest_digest": digest, "manifest": man, "config": cfg}, indent=1))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    """Untag; refuse an image a container uses unless --force."""
    from virtkit.containers.frontend import Containers
    from virtkit.containers.images import ImageError

    cs = Containers()
    containers = cs.all()
    in_use = {layer for m in containers for layer in m.get("layers", [])}  # (kept even with -f)
    for ref in args.refs:
        _, man, _ = cs.store.resolve(ref)
        users = [m["name"] for m in containers if m.get("image_id") == man["config"]["digest"]]
        if users and not args.force:
            raise ImageError(f"image {ref!r} is used by container(s) {', '.join(users)}: remove them or use -f")
        for name in cs.store.remove(ref, keep_layers=in_use):
            print(f"removed {name}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    """Build by the chosen method."""
    import os

    from virtkit.containers import build
    from virtkit.errors import ConfigError

    t0 = time.monotonic()
    if args.busybox:
        cid = build.build_busybox(_store(), args.tag)
    elif args.debian:
        cid = build.build_debian(_store(), args.tag, args.debian, args.include, args.mirror)
    else:
        from virtkit.containers.frontend import Containers

        ctx = args.context or "."
        f = args.file or next((os.path.join(ctx, n) for n in ("Containerfile", "Dockerfile")
                               if os.path.exists(os.path.join(ctx, n))), None)
        if f is None:
            raise ConfigError(f"{ctx}: no Containerfile or Dockerfile (or give -f FILE, --busybox or --debian)")
        cid = build.build_file(Containers(), args.tag, f, ctx)
    print(f"{args.tag} {cid[7:19]} ({time.monotonic() - t0:.2f} s)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write an OCI layout tarball."""
    _store().export(args.ref, args.out)
    return 0
