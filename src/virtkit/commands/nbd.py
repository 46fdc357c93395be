"""``virtkit nbd serve``: export disk images (qcow2, raw, or any spec ``open_disk`` knows) over NBD."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

from virtkit.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``virtkit nbd serve``."""
    p = subparsers.add_parser("nbd", help="serve disk images over the NBD protocol", description=__doc__)
    sub = p.add_subparsers(dest="nbd_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    from virtkit.commands._help import add

    s = add(sub, "serve", "export one or more disks until interrupted", [
        "virtkit nbd serve vm0.qcow2 data=flat.raw -p 10809   # then: nbdinfo --list nbd://127.0.0.1:10809",
        "virtkit nbd serve tank/vm2 --socket /run/vm2.sock -r", "virtkit nbd serve -U disk-of-a-running-vm.qcow2 -r",
        "virtkit nbd serve --vm web1 --bitmap virtkit-backup -p 10810   # pull backup: the disk as of now",
        "nbdinfo --map=qemu:dirty-bitmap:virtkit-backup nbd://127.0.0.1:10810"])
    s.add_argument("specs", nargs="*", metavar="FILE_OR_SPEC",
                   help="disk to export; NAME=SPEC names the export (default: '' for the first, "
                        "the file name for the others)")
    s.add_argument("-p", "--port", type=int, default=None, help="TCP port (default 10809 unless --socket)")
    s.add_argument("-b", "--bind", default="127.0.0.1", help="TCP address to listen on (default 127.0.0.1)")
    s.add_argument("-k", "--socket", metavar="PATH", help="listen on a Unix socket")
    s.add_argument("-x", "--name", help="export name of the first disk (default '')")
    s.add_argument("-r", "--read-only", action="store_true", help="export read-only (writes fail with EPERM)")
    s.add_argument("-f", "--format", dest="fmt", choices=["raw", "qcow2"], help="format of the disks (default probed)")
    s.add_argument("-U", "--force-share", action="store_true",
                   help="(with -r) export an image another VM or process holds, without locking it")
    s.add_argument("-e", "--max-clients", type=int, default=256, metavar="N",
                   help="refuse connections beyond N concurrent clients (default 256)")
    s.add_argument("-v", "--verbose", action="store_true", help="log every connection")
    s.add_argument("--json", action="store_true", help="print the listening addresses as one JSON line")
    v = s.add_argument_group("pull-mode backup of a running VM (served by the VM's process, read-only)")
    v.add_argument("--vm", metavar="NAME", help="export VM NAME's disk as it is at this instant, while it runs")
    v.add_argument("--disk", type=int, metavar="N", help="which disk of the VM (default: the only one)")
    v.add_argument("--bitmap", metavar="BITMAP", help="also offer qemu:dirty-bitmap:BITMAP (what changed since "
                   "the bitmap was started), frozen at the same instant")
    v.add_argument("--reset-bitmap", action="store_true", help="start the bitmap again at the instant (this "
                   "export becomes the base of the next incremental)")
    s.set_defaults(func=cmd_serve)


def _parse_specs(specs: list[str], first_name: str | None) -> list[tuple[str, str]]:
    out = []
    for i, spec in enumerate(specs):
        name = None
        if "=" in spec and not os.path.exists(spec):
            name, spec = spec.split("=", 1)
        if name is None:
            name = first_name if (i == 0 and first_name is not None) else ("" if i == 0 else os.path.basename(spec))
        if not spec:
            raise ConfigError(f"empty disk spec for export {name!r}")
        out.append((name, spec))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"duplicate export names: {names}")
    return out


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def cmd_serve_vm(args: argparse.Namespace) -> int:
    """Ask VM ``--vm`` to export its disk as of now; keep the export until SIGINT/SIGTERM, then end it."""
    from virtkit.machine.control import ControlError, request

    if args.specs:
        raise ConfigError("--vm exports the VM's own disk: give no FILE_OR_SPEC")
    if args.reset_bitmap and not args.bitmap:
        raise ConfigError("--reset-bitmap needs --bitmap")
    if args.port is not None and not 0 <= args.port <= 65535:
        raise ConfigError(f"invalid port {args.port}")
    sock = os.path.abspath(args.socket) if args.socket else None
    port = args.port if args.port is not None or not sock else None
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rep = request(args.vm, "nbd-export", wait=30, disk=args.disk, bitmap=args.bitmap,
                  reset_bitmap=args.reset_bitmap, host=args.bind, port=port, socket=sock, name=args.name or "")
    try:
        if args.json:
            print(json.dumps({"addresses": rep["addresses"], "exports": [args.name or ""], "disk": rep["disk"],
                              "contexts": rep["contexts"]}), flush=True)
        else:
            for a in rep["addresses"]:
                print(f"serving {rep['disk']} of {args.vm} as of now on {a} ({', '.join(rep['contexts'])}); "
                      "Ctrl-C ends it", file=sys.stderr, flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    finally:
        try:
            request(args.vm, "nbd-export-stop", id=rep["id"])
        except ControlError:
            pass  # the VM is gone, and its export with it
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Open the disks, listen, serve until SIGINT/SIGTERM, then flush and close."""
    if args.vm:
        return cmd_serve_vm(args)
    if args.disk is not None or args.bitmap or args.reset_bitmap:
        raise ConfigError("--disk, --bitmap and --reset-bitmap are for --vm")
    if not args.specs:
        raise ConfigError("give the disks to export (or --vm NAME for a running VM's disk)")
    from virtkit.storage import open_disk
    from virtkit.storage.nbd import NbdExport, NbdServer

    if args.port is not None and not 0 <= args.port <= 65535:
        raise ConfigError(f"invalid port {args.port}")
    if args.max_clients < 1:
        raise ConfigError(f"--max-clients must be at least 1, not {args.max_clients}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="virtkit nbd: %(message)s")
    exports = []
    server = None
    try:
        for name, spec in _parse_specs(args.specs, args.name):
            if args.force_share and not args.read_only:
                raise ConfigError("-U/--force-share needs -r (a shared image can only be exported read-only)")
            exports.append(NbdExport(name, open_disk(spec, read_only=args.read_only, fmt=args.fmt,
                                                     force_share=args.force_share), read_only=args.read_only))
        server = NbdServer(exports, max_clients=args.max_clients)
        if args.socket:
            server.listen_unix(args.socket)
        if args.port is not None or not args.socket:
            server.listen_tcp(args.bind, 10809 if args.port is None else args.port)
        signal.signal(signal.SIGTERM, _interrupt)  # before announcing: a prompt SIGTERM must still clean up
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (`cmd &`)
        if args.json:
            print(json.dumps({"addresses": server.addresses, "exports": [e.name for e in exports]}), flush=True)
        else:
            for a in server.addresses:
                print(f"serving {', '.join(repr(e.name) for e in exports)} on {a}", file=sys.stderr, flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    finally:
        if server is not None:
            server.stop()  # removes the unix socket, flushes the exports
        for e in exports:
            e.backend.close()
    return 0
