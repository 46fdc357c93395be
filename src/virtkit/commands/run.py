"""``virtkit run``: boot a guest. ``--bios none --kernel prog.elf`` runs a bare-metal RISC-V program.

The bare-metal path lives in :func:`run_bare_metal`; the board path (OpenSBI + Linux on the
virt board) plugs into :func:`cmd_run` through the same arguments.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from virtkit.errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+)\s*([KMGkmg]?)(i?B)?\s*$")


def parse_size(text: str) -> int:
    """'128M', '1G', '65536K' or plain bytes -> bytes (ConfigError when malformed)."""
    m = _SIZE.match(str(text))
    if not m:
        raise ConfigError(f"bad memory size {text!r} (expected e.g. 128M, 1G)")
    n = int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2).upper()]
    if n <= 0 or n % 4096 or n > (64 << 30):
        raise ConfigError(f"bad memory size {text!r}: must be a multiple of 4K between 4K and 64G")
    return n


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``run`` subcommand."""
    p = subparsers.add_parser("run", help="run a guest (bare-metal ELF with --bios none, or a board)")
    p.add_argument("--kernel", help="kernel image, or the bare-metal ELF with --bios none")
    p.add_argument("--bios", default="default", help="firmware: 'none' runs --kernel bare-metal (HTIF exit)")
    p.add_argument("--initrd", help="initial ramdisk")
    p.add_argument("--append", default="", help="kernel command line")
    p.add_argument("--mem", default="128M", help="guest RAM size (default 128M)")
    p.add_argument("--cpus", type=int, default=1, help="number of harts (default 1)")
    p.add_argument("--stats", action="store_true", help="print instructions, MIPS and exits by reason")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON (with --bios none)")
    p.add_argument("--max-insns", type=int, default=None, help="stop after this many instructions")
    p.add_argument("--deterministic", action="store_true", help="mtime follows instructions, not the host clock")
    from virtkit.boards.runner import add_board_arguments  # --disk, --net, --exec... (the riscv64-virt board)

    add_board_arguments(p)
    p.set_defaults(func=cmd_run)
    return p


def cmd_run(args: argparse.Namespace) -> int:
    """Dispatch ``virtkit run`` to the bare-metal runner or the board."""
    if args.bios == "none":
        return run_bare_metal(args)
    from virtkit.boards.runner import run_board  # OpenSBI + Linux on riscv64-virt (the default guest)

    if args.max_insns is not None or args.deterministic:
        raise ConfigError("--max-insns and --deterministic only apply to --bios none")
    return run_board(args, parse_size(args.mem))


def run_bare_metal(args: argparse.Namespace) -> int:
    """Run ``--kernel`` as a bare-metal ELF; exit 0 on pass, 1 with 'FAIL: test N' on failure."""
    from virtkit.engines.riscv.baremetal import run_elf

    if not args.kernel:
        raise ConfigError("--bios none needs --kernel PROGRAM.elf")
    if not 1 <= args.cpus <= 64:
        raise ConfigError(f"--cpus must be 1..64: {args.cpus}")
    if args.max_insns is not None and args.max_insns <= 0:
        raise ConfigError(f"--max-insns must be positive: {args.max_insns}")
    mem = parse_size(args.mem)
    console = (lambda b: None) if args.json else None
    res = run_elf(args.kernel, mem_size=mem, nharts=args.cpus, max_instructions=args.max_insns,
                  deterministic=args.deterministic, console=console)
    if res.exit_code == 0:
        rc, verdict = 0, "PASS"
    elif res.exit_code is not None:
        rc, verdict = 1, f"FAIL: test {res.exit_code}"
    elif res.reason == "wfi":
        rc, verdict = 3, "STUCK: every hart waits for an interrupt that cannot come"
    else:
        rc, verdict = 2, "TIMEOUT: instruction budget spent without an exit code"
    if args.json:
        print(json.dumps({"result": verdict, "exit_code": res.exit_code, "reason": res.reason,
                          "instructions": res.instructions, "seconds": round(res.seconds, 6),
                          "mips": round(res.mips, 2), "output": res.output.decode("utf-8", "replace"),
                          "stats": res.stats}))
        return rc
    if rc:
        print(verdict, file=sys.stderr)
    if args.stats:
        _print_stats(res)
    return rc


def _print_stats(res) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="virtkit run: RISC-V engine")
    t.add_column("counter")
    t.add_column("value", justify="right")
    from virtkit.engines.riscv.engine import selected_core

    t.add_row("core", selected_core())
    t.add_row("instructions", f"{res.instructions:,}")
    t.add_row("traps", f"{res.stats.get('traps', 0):,}")
    t.add_row("seconds", f"{res.seconds:.3f}")
    t.add_row("MIPS", f"{res.mips:.1f}")
    for hart, n in enumerate(res.stats.get("per_hart", [])):
        t.add_row(f"hart {hart} instructions", f"{n:,}")
    for reason, n in res.stats.get("exits", {}).items():
        t.add_row(f"exits: {reason}", f"{n:,}")
    Console(stderr=True).print(t)
