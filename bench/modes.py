"""Virtualization modes benchmark: the ``virtkit modes`` table, with QEMU booting the same guest beside it.

Every mode boots the default guest (Linux 6.1 + busybox initramfs), runs ``--exec`` (default ``true``) and
powers off; QEMU (``qemu-system-riscv64 -M virt`` with Debian's OpenSBI) boots the same kernel, initramfs
and command line (the initramfs runs the command and powers off there too). Wall time from process start
to exit, the median of ``--runs`` (modes and QEMU take turns). Goals of issue 15: the builtin SBI boots
faster than OpenSBI's; trap and emulate boots in at most twice the emulated boot's time. The nested row
has its own peer: QEMU with ``-cpu rv64,h=true`` booting the same outer guest, whose KVM boots the inner
one (the same kit, command and initramfs).

    .venv/bin/python bench/modes.py [--runs 5] [--cpus 2] [--exec CMD] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from virtkit.images import default_guest
from virtkit.images.initramfs import exec_command_line
from virtkit.images.qemu import qemu_argv
from virtkit.machine.modes import MODES, NESTED_TAG, _nested, median_run, run_mode


def qemu_once(cmd: str, cpus: int, nested: bool = False) -> float:
    """Seconds for QEMU to boot the default guest, run ``cmd`` and power off (``nested``: in a KVM guest of
    the guest, on QEMU's H extension)."""
    g = default_guest(progress=False)
    initrd, want = g.initrd, "virtkit-exit-status: 0"
    if nested:
        cmd, initrd = _nested(cmd, None, None)
        want = f"{NESTED_TAG}exit-status: 0"
    argv = qemu_argv(g.kernel, initrd, f"console=ttyS0 earlycon=sbi {exec_command_line(cmd)}", g.firmware,
                     smp=cpus, memory="256M" if nested else "128M")
    if nested:
        argv += ["-cpu", "rv64,h=true"]
    t0 = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900)
    wall = time.monotonic() - t0
    if want not in p.stdout:
        raise RuntimeError(f"QEMU's guest did not finish the command: {p.stdout[-300:]}")
    return wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--exec", dest="cmd", default="true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows: dict[str, list[dict]] = {m.name: [] for m in MODES}
    qemu: list[float] = []
    qemu_nested: list[float] = []
    run_mode(MODES[0], args.cmd, args.cpus)  # warm-up: page cache, JIT cache
    for _ in range(args.runs):
        for m in MODES:
            rows[m.name].append(run_mode(m, args.cmd, args.cpus))
        qemu.append(qemu_once(args.cmd, args.cpus))
        qemu_nested.append(qemu_once(args.cmd, args.cpus, nested=True))
    med = {name: median_run(rs) for name, rs in rows.items()}
    q, qn = statistics.median(qemu), statistics.median(qemu_nested)
    result = {"runs": args.runs, "cpus": args.cpus, "command": args.cmd, "qemu_seconds": round(q, 3),
              "qemu_nested_seconds": round(qn, 3),
              "modes": {n: {k: r[k] for k in ("wall_seconds", "instructions", "traps", "exits_total", "exits",
                                            "exit_cost_us", "sbi_calls", "sbi_in_core")} for n, r in med.items()}}
    emu, para = med["emulation"]["wall_seconds"], med["paravirt"]["wall_seconds"]
    result["paravirt_over_emulation"] = round(para / emu, 3)
    result["nested_over_qemu_nested"] = round(med["nested"]["wall_seconds"] / qn, 3)
    trap = med["trap"]["wall_seconds"]
    result["trap_over_emulation"] = round(trap / emu, 3)
    result["monitor"] = med["trap"]["monitor"]
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"boot + `{args.cmd}` + power off, {args.cpus} harts, median of {args.runs}")
    for c in ("", "wall", "/ QEMU", "instructions", "traps in guest", "exits to VMM", "hypercall exits"):
        t.add_column(c, justify="right" if c else "left")
    t.add_row("qemu-system-riscv64 + OpenSBI", f"{q:.2f} s", "1.00x", "", "", "", "")
    t.add_row("qemu-system-riscv64 -cpu rv64,h=true, nested", f"{qn:.2f} s", "1.00x", "", "", "", "")
    for n, r in med.items():
        peer = qn if n == "nested" else q
        t.add_row(f"virtkit {n}", f"{r['wall_seconds']:.2f} s", f"{r['wall_seconds'] / peer:.2f}x",
                  f"{r['instructions']:,}", f"{r['traps']:,}", f"{r['exits_total']:,}",
                  f"{r['exits'].get('HYPERCALL', 0):,}")
    Console(width=140).print(t)
    verdict = "met" if para < emu else "NOT met"
    print(f"paravirt / emulation = {para / emu:.2f}x (goal: the builtin SBI boots faster than OpenSBI: {verdict})")
    verdict = "met" if trap <= 2 * emu else "NOT met"
    print(f"trap / emulation = {trap / emu:.2f}x, trap / paravirt = {trap / para:.2f}x (goal: trap and emulate "
          f"boots in at most 2x the emulated boot: {verdict}); the monitor: {med['trap']['monitor']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
