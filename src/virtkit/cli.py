"""The ``virtkit`` command line: parse, call the library, print. Nothing else lives here.

Each subcommand is a module in :mod:`virtkit.commands` with a ``register(subparsers)`` function;
registration is lazy-safe: a command whose module is missing is simply absent.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# NumPy's BLAS would start a thread per core on import, spinning for a while: virtkit does no linear
# algebra, and on a small host those threads take CPU from the vCPU and the JIT translator.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from virtkit import __version__  # noqa: E402
from virtkit.errors import VirtkitError  # noqa: E402

# Subcommand modules, in the order ``virtkit --help`` lists them.
COMMAND_MODULES = ["run", "images", "engine", "disk", "pool", "volume", "nbd", "net"]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser with every available subcommand registered (or just ``only``: importing
    every command module costs ~0.25 s of start-up that ``virtkit run`` does not need)."""
    parser = argparse.ArgumentParser(prog="virtkit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"virtkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        if only is not None and name != only:
            continue
        try:
            mod = importlib.import_module(f"virtkit.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"virtkit.commands.{name}":
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``virtkit`` console script; returns the process exit status."""
    words = sys.argv[1:] if argv is None else argv
    first = next((w for w in words if not w.startswith("-")), None)
    parser = build_parser(first if first in COMMAND_MODULES else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except VirtkitError as err:
        print(f"virtkit: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `virtkit ... | head`: the reader is gone; no traceback, no second error at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
