"""KVM engine benchmark: the cost of an exit round trip and the speed of ring-3 code, virtkit's KVM engine
beside ``qemu-system-x86_64 -accel kvm`` on the same guests in the same run.

    .venv/bin/python bench/kvm.py [--exits 65536] [--rounds 0x10000000] [--runs 3] [--json]

- **Exit round trip**: the test kernel ``exits`` (tests/kvm/guests) writes ``--exits`` times to one I/O
  port, timing the loop with rdtsc in the guest: microseconds per exit (guest instructions between exits
  included, the same for both VMMs). Two ports: 0x80 (the POST port: nothing to emulate; virtkit answers it
  in its compiled run loop, QEMU in its ioport80 device) and 0x3ff (the 16550's scratch register: a device
  model; virtkit's is Python, QEMU's C).
- **Ring-3 compute**: the kernel ``compute`` runs work() (tests/kvm/guests/work.c) in ring 3 and times it
  with rdtsc; the same source built for the host is the reference: guest cycles / native cycles.

Goals of issue 18: ring-3 compute at least 95% of native; exit round trip no more than QEMU's. The host's
kind of KVM is printed (on kvm_pvm, ring-0 guest code is emulated by the host kernel).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.helpers import x86guests  # noqa: E402


def virtkit(kernel: Path, append: str) -> str:
    p = subprocess.run([sys.executable, "-m", "virtkit.cli", "run", "--engine", "kvm", "--kernel", str(kernel),
                        "--mem", "64", "--append", append], capture_output=True, text=True, timeout=600)
    if p.returncode != 33:
        raise SystemExit(f"virtkit failed ({p.returncode}): {p.stdout[-500:]} {p.stderr[-500:]}")
    return p.stdout


def qemu(kernel: Path, append: str) -> str:
    p = subprocess.run(["qemu-system-x86_64", "-accel", "kvm", "-M", "pc", "-m", "64", "-display", "none",
                        "-nodefaults", "-no-reboot", "-serial", "stdio", "-device",
                        "isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel", str(kernel), "-append", append],
                       capture_output=True, text=True, timeout=600)
    if p.returncode != 33:
        raise SystemExit(f"QEMU failed ({p.returncode}): {p.stdout[-500:]} {p.stderr[-500:]}")
    return p.stdout


def field(out: str, name: str) -> str:
    return out.split(f"{name} ")[1].split()[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--exits", type=lambda s: int(s, 0), default=0x10000, help="port writes per run")
    ap.add_argument("--rounds", type=lambda s: int(s, 0), default=0x10000000, help="work() rounds in ring 3")
    ap.add_argument("--runs", type=int, default=3, help="runs of each; the median is shown")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from virtkit.engines.kvm.host import kind

    host = kind()
    if not host["usable"]:
        raise SystemExit(f"bench/kvm.py: {host['note']}")
    peers = ["virtkit"] + (["qemu"] if shutil.which("qemu-system-x86_64") else [])
    tsc_hz = float(subprocess.run([str(x86guests.native("tsc_hz"))], capture_output=True, text=True,
                                  check=True).stdout)
    out: dict = {"host": host["kind"], "module": host["module"], "tsc_mhz": round(tsc_hz / 1e6), "exits": {},
                 "compute": {}}
    exits_k = x86guests.kernel("exits")
    for port, what in ((0x80, "port 0x80 (nothing to emulate)"), (0x3FF, "port 0x3ff (16550 scratch register)")):
        row = {}
        for peer in peers:
            run = virtkit if peer == "virtkit" else qemu
            us = [int(field(run(exits_k, f"count={args.exits:#x} port={port:#x}"), "cycles")) / tsc_hz / args.exits
                  * 1e6 for _ in range(args.runs)]
            row[peer] = round(statistics.median(us), 2)
        out["exits"][what] = row
    compute_k = x86guests.kernel("compute")
    native = [int(field(subprocess.run([str(x86guests.native()), hex(args.rounds)], capture_output=True, text=True,
                                       check=True).stdout, "cycles")) for _ in range(args.runs)]
    out["compute"]["native_cycles"] = statistics.median(native)
    for peer in peers:
        run = virtkit if peer == "virtkit" else qemu
        cyc = [int(field(run(compute_k, f"rounds={args.rounds:#x}"), "cycles")) for _ in range(args.runs)]
        out["compute"][peer] = {"cycles": statistics.median(cyc),
                                "of_native": round(out["compute"]["native_cycles"] / statistics.median(cyc), 3)}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"host: {host['kind']} ({host['module']}), TSC {out['tsc_mhz']} MHz")
    print(f"exit round trip, us per exit (median of {args.runs} runs of {args.exits} exits):")
    for what, row in out["exits"].items():
        ratio = f"  virtkit/QEMU {row['virtkit'] / row['qemu']:.2f}x" if "qemu" in row else ""
        print(f"  {what:40} " + "  ".join(f"{p} {v:6.2f}" for p, v in row.items()) + ratio)
    print(f"ring-3 compute, {args.rounds:#x} rounds: native {out['compute']['native_cycles']:,} cycles")
    for peer in peers:
        c = out["compute"][peer]
        print(f"  {peer:8} {c['cycles']:,} cycles = {c['of_native'] * 100:.1f}% of native")
    v = out["compute"]["virtkit"]["of_native"]
    sink = out["exits"]["port 0x80 (nothing to emulate)"]
    print(f"goals: ring-3 at least 95% of native: {'met' if v >= 0.95 else 'NOT met'} ({v * 100:.1f}%); exit round "
          f"trip no more than QEMU's: " + (
              "met for exits answered in the compiled loop" if "qemu" in sink and sink["virtkit"] <= sink["qemu"]
              else "NOT met" if "qemu" in sink else "no QEMU to compare"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
