"""``virtkit engine``: build the ahead-of-time compiled RISC-V core and say which core a run would use.

With the AOT core built, ``virtkit run`` never imports Numba (about a second less start-up);
without it the engine falls back to the Numba JIT core.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``virtkit engine {build,status}`` to the top-level parser."""
    p = subparsers.add_parser("engine", help="build the AOT-compiled RISC-V core; show which core runs",
                              description=__doc__)
    sub = p.add_subparsers(dest="engine_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    from virtkit.commands._help import add

    b = add(sub, "build", "build the AOT core for the current sources unless cached (takes minutes)",
            "virtkit engine build")
    b.add_argument("--force", action="store_true", help="rebuild even if a current AOT core exists")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    b.add_argument("--json", action="store_true", help="print the resulting status as JSON")
    b.set_defaults(func=cmd_build)

    s = add(sub, "status", "the engines, which core a run would use, where it is cached, why not AOT",
            "virtkit engine status --json")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_status)


def _progress_line(quiet: bool):
    """A status line rewritten in place on a terminal (a line every 30 s otherwise); None when quiet."""
    if quiet:
        return None
    tty = sys.stderr.isatty()
    last = [-30.0]

    def show(elapsed: float) -> None:
        if tty:
            print(f"\rvirtkit: building the AOT RISC-V core ... {elapsed:5.0f} s", end="", file=sys.stderr,
                  flush=True)
        elif elapsed - last[0] >= 30:
            last[0] = elapsed
            print(f"virtkit: building the AOT RISC-V core ... {elapsed:.0f} s", file=sys.stderr, flush=True)

    return show


def cmd_build(args: argparse.Namespace) -> int:
    """Build (or find cached) the AOT core and print where it is."""
    from virtkit.engines.riscv import aot

    show = _progress_line(args.quiet or args.json)
    try:
        st = aot.build(force=args.force, progress=show)
    finally:
        if show and sys.stderr.isatty():
            print(file=sys.stderr)
    if args.json:
        print(json.dumps(st, indent=1))
    elif st["built"]:
        print(f"built the AOT core in {st['build_seconds']} s: {st['module']}")
    else:
        print(f"AOT core up to date: {st['module']}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print which core ``virtkit run`` would use and where the AOT core is (or why it is not used)."""
    from virtkit.engines.riscv import aot
    from virtkit.machine.engine import engine_module, engine_names

    st = aot.status()
    engines = {}
    for name in engine_names():
        try:
            describe = getattr(engine_module(name), "describe", None)
            engines[name] = describe() if describe else {"engine": name}
        except Exception as err:  # an engine that cannot describe itself here is reported, not fatal
            engines[name] = {"engine": name, "available": False, "note": str(err)}
    st["engines"] = engines
    if args.json:
        print(json.dumps(st, indent=1))
        return 0
    for name, d in engines.items():
        print(f"engine {name}: {d.get('kind', '')}" + (f" ({d['note']})" if d.get("note") else ""))
    print(f"core: {st['core']}")
    print(f"AOT core: {'ready' if st['aot_ready'] else 'not usable: ' + st['reason']}")
    print(f"AOT module: {st['module']}")
    if st["built_at"]:
        print(f"built: {st['built_at']} in {st['build_seconds']} s")
    print(f"numba {st['numba']}, python {st['python']}")
    return 0
