"""``virtkit modes``: boot the same guest in every virtualization mode and compare what each one costs.

Each mode runs the same kernel and initramfs, runs one command (``--exec``, default ``true``) and powers
off; the table shows per mode the wall time, the guest instructions, the traps taken inside the guest,
the exits to the VMM by reason with the VMM's time per exit, the SBI calls by extension where the VMM
answers them, and the MMIO exits by device.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

EPILOG = """\
modes: emulation (OpenSBI runs inside the emulated machine), paravirt (--bios builtin: virtkit is the SBI),
trap (--mode trap: the kernel runs deprivileged under a monitor with shadow page tables), nested (--cpu
rv64,h=on: the guest's KVM runs the same kernel and initramfs, which run the command).

examples:
  virtkit modes                                  the default guest in every mode, one boot each
  virtkit modes --exec 'md5sum /bin/busybox' --cpus 2 --runs 3
  virtkit modes --mode paravirt --json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``virtkit modes``."""
    p = subparsers.add_parser("modes", help="one guest in every virtualization mode, side by side",
                              description=__doc__.split("\n\n")[0], epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exec", dest="exec_cmd", default="true", metavar="CMD", help="the command each guest runs")
    p.add_argument("--mode", action="append", help="only this mode (repeatable)")
    p.add_argument("--cpus", type=int, default=1, help="harts per guest (default 1)")
    p.add_argument("--runs", type=int, default=1, help="boots per mode; the median is shown (default 1)")
    p.add_argument("--kernel", help="kernel Image (default: the default guest's)")
    p.add_argument("--initrd", help="initramfs (default: the default guest's)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_modes)


def cmd_modes(args: argparse.Namespace) -> int:
    """Run the modes and print the table (or JSON)."""
    from virtkit.errors import ConfigError
    from virtkit.machine.modes import compare

    if not 1 <= args.cpus <= 8:
        raise ConfigError(f"--cpus {args.cpus}: out of range 1..8")
    if not 1 <= args.runs <= 100:
        raise ConfigError(f"--runs {args.runs}: out of range 1..100")
    rows = compare(args.mode, args.exec_cmd, args.cpus, args.runs, kernel=args.kernel, initrd=args.initrd)
    if args.json:
        print(json.dumps({"command": args.exec_cmd, "cpus": args.cpus, "modes": rows}, indent=2))
        return 0
    print_table(rows, args.exec_cmd)
    return 0


def print_table(rows: list[dict[str, Any]], command: str) -> None:
    """One column per mode, one row per measure."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"virtkit modes: boot, `{command}`, power off")
    t.add_column("")
    for r in rows:
        t.add_column(r["mode"], justify="right")

    def row(label: str, fn: Any) -> None:
        t.add_row(label, *[fn(r) for r in rows])

    row("wall time", lambda r: f"{r['wall_seconds']:.2f} s")
    row("guest instructions", lambda r: f"{r['instructions']:,}")
    row("traps inside the guest", lambda r: f"{r['traps']:,}")
    for cause in sorted({k for r in rows for k in r["traps_by_cause"]}):
        row(f"  {cause}", lambda r, k=cause: f"{r['traps_by_cause'].get(k, 0):,}")
    row("exits to the VMM", lambda r: f"{r['exits_total']:,}")
    for reason in sorted({k for r in rows for k in r["exits"] if k not in ("HALT", "BUDGET")}):
        row(f"  {reason}", lambda r, k=reason: _with_cost(r["exits"].get(k, 0), r["exit_cost_us"].get(k)))
    for ext in sorted({k for r in rows for k in r["sbi_calls"]}):
        row(f"SBI {ext}", lambda r, k=ext: _sbi(r, k))
    for dev in sorted({k for r in rows for k in r["mmio"]}):
        row(f"MMIO {dev}", lambda r, k=dev: f"{r['mmio'].get(k, 0):,}")
    row("MMIO served in the core", lambda r: f"{r['mmio_without_exit']:,}")
    names = {"privileged_instructions": "monitor: privileged instructions emulated",
             "sbi_calls": "monitor: SBI calls", "shadow_fills": "monitor: shadow PTEs filled",
             "guest_page_faults": "monitor: page faults handed to the guest",
             "shadow_drops": "monitor: shadow tables dropped"}
    if any(r["monitor"] for r in rows):
        for key, label in names.items():
            row(label, lambda r, k=key: f"{r['monitor'][k]:,}" if r["monitor"] else "-")
    console = Console()
    console.print(t)
    for r in rows:
        console.print(f"[bold]{r['mode']}[/bold]: {r['what']}")


def _with_cost(n: int, us: float | None) -> str:
    return f"{n:,}" + (f" ({us:.1f} us each)" if n and us is not None else "")


def _sbi(r: dict[str, Any], ext: str) -> str:
    n = r["sbi_calls"].get(ext)
    if n is None:
        return "-" if r["sbi_calls"] else "in guest firmware"
    inside = r["sbi_in_core"].get(ext, 0)
    return f"{n:,}" + (f" ({inside:,} in the core)" if inside else "")
