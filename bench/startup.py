"""Start-up benchmark: a process that runs a tiny bare-metal RISC-V program (the ~11k-instruction demo) and exits,
on virtkit (AOT-compiled core and Numba JIT core) and on `qemu-system-riscv64 -M spike -bios none`, in one run.

Prints the wall time of the whole process (median of ``--runs``), virtkit's start-up before the first
guest instruction (wall time minus the guest run time ``virtkit run --json`` reports), and the
virtkit/QEMU ratio. The guest's run itself is tiny, so the process time is almost all start-up.
``--boot`` also boots the Linux guest to /init (as ``bench/boot.py`` does) on QEMU and on virtkit with
each core; the peers take turns within each round, so machine load hits them alike.

    .venv/bin/python bench/startup.py [--runs N] [--boot] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from virtkit.errors import VirtkitError

QEMU = "qemu-system-riscv64"


@dataclass
class Peer:
    """Samples (seconds) of one peer, or why it could not be measured."""

    name: str
    wall: list[float] = field(default_factory=list)
    startup: list[float] = field(default_factory=list)
    error: str = ""

    def median(self, what: str) -> float | None:
        vals = getattr(self, what)
        return statistics.median(vals) if vals else None


def run_virtkit(elf: Path, core: str, runs: int) -> Peer:
    """``virtkit run --bios none --kernel elf --json`` with ``$VIRTKIT_CORE=core``, ``runs`` times."""
    peer = Peer(f"virtkit ({core} core)")
    env = {**os.environ, "VIRTKIT_CORE": core}
    argv = [sys.executable, "-m", "virtkit.cli", "run", "--bios", "none", "--kernel", str(elf), "--json"]
    for _ in range(runs):
        t = time.monotonic()
        p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
        wall = time.monotonic() - t
        if p.returncode != 0:
            lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
            peer.error = lines[-1] if lines else f"exit {p.returncode}"
            return peer
        res = json.loads(p.stdout)
        peer.wall.append(wall)
        peer.startup.append(wall - res["seconds"])
    return peer


def run_qemu(elf: Path, runs: int) -> Peer:
    """``qemu-system-riscv64 -M spike -bios none -kernel elf`` (HTIF exit), ``runs`` times."""
    peer = Peer("qemu-system-riscv64 -M spike")
    argv = [QEMU, "-M", "spike", "-bios", "none", "-kernel", str(elf), "-display", "none", "-serial", "stdio",
            "-monitor", "none", "-m", "128M"]
    for _ in range(runs):
        t = time.monotonic()
        try:
            p = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
        except FileNotFoundError:
            peer.error = f"{QEMU} not installed (Debian package qemu-system-misc)"
            return peer
        if p.returncode != 0:
            peer.error = f"exit {p.returncode}"
            return peer
        peer.wall.append(time.monotonic() - t)
    return peer


def boot_rounds(runs: int) -> list[Peer]:
    """Linux to /init, ``runs`` rounds of QEMU, virtkit AOT core, virtkit Numba core (interleaved)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from boot import APPEND, MEMORY, virtkit_argv

    from virtkit.images import INIT_REACHED, default_guest
    from virtkit.images.qemu import qemu_argv, run_console

    guest = default_guest(progress=False)
    append = f"{APPEND} virtkit.bench=init"
    peers = {"qemu": Peer("qemu-system-riscv64 -M virt: boot to init"),
             "aot": Peer("virtkit (aot core): boot to init"), "jit": Peer("virtkit (jit core): boot to init")}
    argvs = {"qemu": qemu_argv(guest.kernel, guest.initrd, append, guest.firmware, memory=MEMORY),
             "aot": virtkit_argv(guest, append), "jit": virtkit_argv(guest, append)}
    for _ in range(runs):
        for name, peer in peers.items():
            if peer.error:
                continue
            env = None if name == "qemu" else {"VIRTKIT_CORE": name}
            run = run_console(argvs[name], timeout=300, marks=[INIT_REACHED], env=env)
            if INIT_REACHED not in run.marks:
                lines = [ln for ln in run.output.splitlines() if ln.strip()]
                peer.error = lines[-1][:120] if lines else f"exit {run.returncode}"
                continue
            peer.wall.append(run.marks[INIT_REACHED])
    return list(peers.values())


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table (or JSON)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="processes per peer (median reported)")
    ap.add_argument("--boot", action="store_true", help="also boot Linux to /init on each peer, interleaved")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be positive")
    from virtkit.engines.riscv import aot
    from virtkit.images import demo

    try:
        elf = demo.build_demo()
    except VirtkitError as err:
        print(f"bench/startup.py: error: {err}", file=sys.stderr)
        return 1
    qemu = run_qemu(elf, args.runs)
    peers = [qemu]
    reason = aot.check()
    if reason:
        peers.append(Peer("virtkit (aot core)", error=f"not available: {reason} (run `virtkit engine build`)"))
    else:
        peers.append(run_virtkit(elf, "aot", args.runs))
    peers.append(run_virtkit(elf, "jit", args.runs))
    if args.boot:
        if reason:
            print(f"bench/startup.py: error: --boot needs the AOT core: {reason}", file=sys.stderr)
            return 1
        peers += boot_rounds(args.runs)
    qemu_wall = {"demo": qemu.median("wall"), "boot": peers[3].median("wall") if args.boot else None}

    def ratio(p: Peer) -> float | None:
        w = p.median("wall")
        q = qemu_wall["boot" if "boot to init" in p.name else "demo"]
        return None if w is None or not q else w / q

    if args.json:
        print(json.dumps({"program": str(elf), "runs": args.runs, "peers": [
            {"name": p.name, "error": p.error, "wall": p.median("wall"), "startup": p.median("startup"),
             "samples": {"wall": p.wall, "startup": p.startup}, "ratio_over_qemu": ratio(p)} for p in peers]},
            indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    what = f"bare-metal demo ({elf.name})" + (" and Linux to /init" if args.boot else "")
    t = Table(title=f"Start-up: {what}, median of {args.runs} processes")
    for col in ("peer", "process wall time", "before the first guest instruction", "wall / qemu"):
        t.add_column(col, justify="left" if col == "peer" else "right")
    for p in peers:
        w, s, r = p.median("wall"), p.median("startup"), ratio(p)
        t.add_row(p.name, "-" if w is None else f"{w:.3f} s", "-" if s is None else f"{s:.3f} s",
                  "-" if r is None else f"{r:.1f}x")
    console = Console(width=None if sys.stdout.isatty() else 130)
    console.print(t)
    for p in peers:
        if p.error:
            console.print(f"[yellow]{p.name}[/yellow]: {p.error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
