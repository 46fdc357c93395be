"""virtkit: virtual machines, containers, disks and networks you can read, run and measure.

Boot a RISC-V Linux guest on an emulated machine (``virtkit run``), manage the running VMs
(``virtkit ps``, ``console``, ``pause``, ``stop``), and the storage and networks they use: disk
images (``virtkit disk``), storage pools and volumes (``pool``, ``volume``), an NBD server (``nbd``)
and 802.1Q virtual switches (``net``).

The CLI only parses, calls the library and prints; each subcommand is a module of
:mod:`virtkit.commands` with a ``register(subparsers)`` function.
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

#: command word -> module of virtkit.commands, in the order ``virtkit --help`` lists them
COMMANDS = {
    "run": "run", "ps": "vm", "console": "vm", "pause": "vm", "resume": "vm", "stop": "vm", "kill": "vm",
    "images": "images", "engine": "engine", "disk": "disk", "pool": "pool", "volume": "volume", "nbd": "nbd",
    "net": "net", "snapshot": "snapshot", "clone": "snapshot", "template": "snapshot",
    "migrate": "migrate", "backup": "backup", "modes": "modes", "runtime": "runtime",
    "container": "container", "image": "image", "daemon": "daemon",
}

DESCRIPTION = """\
virtkit: virtual machines, storage and networks, small enough to read, fast enough to use.

Boot a RISC-V Linux guest on an emulated machine, manage the running VMs from any terminal, and the
disk images, storage pools, NBD exports and 802.1Q switches they use."""

EPILOG = """\
examples:
  virtkit run                          boot the default guest, its console on this terminal
  virtkit run --exec 'uname -a'        run one command in a guest and exit with its status
  virtkit run -d --name web1           boot in the background; then: virtkit ps, virtkit console web1
  virtkit disk create vm.qcow2 10G     a qcow2 disk image
  virtkit pool create tank a.img b.img a storage pool (then: virtkit volume create tank/vm0 --size 2G)
  virtkit net create lab               an 802.1Q switch (then: virtkit run --net switch:lab,vlan=7)
  virtkit --remote https://HOST:8006 --token T --cacert tls.crt ps
                                       ps, pause, resume, stop, kill, console, snapshot create,
                                       migrate through another host's virtkitd (and through this
                                       host's when one runs here; VIRTKIT_NO_DAEMON=1: never)

`virtkit COMMAND --help` describes each command, with examples."""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser with every available subcommand registered (or just ``only``'s module:
    importing every command module costs ~0.25 s of start-up that ``virtkit run`` does not need)."""
    parser = argparse.ArgumentParser(prog="virtkit", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"virtkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    done: set[str] = set()
    for module in COMMANDS.values():
        if module in done or only is not None and COMMANDS.get(only) != module:
            continue
        done.add(module)
        try:
            mod = importlib.import_module(f"virtkit.commands.{module}")
        except ModuleNotFoundError as err:
            if err.name == f"virtkit.commands.{module}":
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``virtkit`` console script; returns the process exit status."""
    words = list(sys.argv[1:] if argv is None else argv)
    glob = ("--remote", "--token", "--cacert")
    while words and (words[0] in glob or words[0].startswith(tuple(g + "=" for g in glob))):
        key, eq, val = words.pop(0).partition("=")  # global options: commands on running VMs go to a virtkitd
        if not eq:
            if not words:
                print(f"virtkit: error: {key} needs a value", file=sys.stderr)
                return 2
            val = words.pop(0)
        os.environ["VIRTKIT_" + key[2:].upper()] = val
    argv = words
    first = next((w for w in words if not w.startswith("-")), None)
    if first == "runtime" and words and words[0] == "runtime":  # runc's own command line, passed through whole
        from virtkit.containers.runtime import main as runtime_main

        return runtime_main(list(words[1:]))
    parser = build_parser(first if first in COMMANDS else None)
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
