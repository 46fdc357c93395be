"""``virtkit runtime``: the OCI runtime (runc's command line; the same program as ``virtkit-runc``)."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  cd bundle && virtkit runtime spec && virtkit runtime run demo     a shell in a container (runc's default config)
  virtkit runtime create demo && virtkit runtime start demo         the two steps, then: state, kill, delete
  virtkit runtime --help                                            every command (runc's, as virtkit-runc has them)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``virtkit runtime`` (its arguments are runc's: ``virtkit runtime --help`` lists them)."""
    p = subparsers.add_parser("runtime", help="an OCI container runtime with runc's command line (virtkit-runc)",
                              add_help=False, description=__doc__.split("\n")[0], epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_runtime)


def cmd_runtime(args: argparse.Namespace) -> int:
    """Hand the arguments to the runtime's own command line."""
    from virtkit.containers.runtime import main

    return main(list(args.args))
