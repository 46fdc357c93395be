"""``virtkit runtime``: the OCI runtime (runc's command line; the same program as ``virtkit-runc``)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``virtkit runtime`` (its arguments are runc's: ``virtkit runtime --help`` lists them)."""
    p = subparsers.add_parser("runtime", help="an OCI container runtime with runc's command line (virtkit-runc)",
                              add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_runtime)


def cmd_runtime(args: argparse.Namespace) -> int:
    """Hand the arguments to the runtime's own command line."""
    from virtkit.containers.runtime import main

    return main(list(args.args))
