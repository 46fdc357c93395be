"""Dirty-page tracking cost: the same store-heavy bare-metal program with and without a live migration's
dirty logging, on virtkit and on QEMU, in one run.

The program writes one word into each page of a ``--mib`` region, pass after pass (the worst case for
dirty logging: every store of a pass lands on a page the last sync made clean), then powers off. Each peer
runs it three ways:

- plain: no tracking;
- synced: tracking on and the dirty log collected every ``--interval-ms`` (virtkit: the migration's own
  ``dirty_log_fetch`` with the guest paused around it, as a pre-copy round does; QEMU: a live migration
  to ``exec:cat > /dev/null`` capped at 1 MiB/s, so it stays in its pre-copy rounds, each of which
  syncs QEMU's dirty bitmap; a 1 ms downtime limit keeps it there);
- the slowdown of synced over plain is the tracking cost.

    .venv/bin/python bench/dirty_log.py [--mib 1] [--passes 1000000] [--interval-ms 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from snapshot import qmp  # noqa: E402  (bench/snapshot.py: the QMP client both QEMU benchmarks use)

SRC = """
.section .text.init
.globl _start
_start:
    li s0, 0x80200000      # the region
    li s1, {pages}
    li s2, {passes}
    li s3, 0
1:  mv t0, s0              # a pass
    mv t1, s1
2:  sd s3, 0(t0)
    li t2, 4096
    add t0, t0, t2
    addi t1, t1, -1
    bnez t1, 2b
    addi s3, s3, 1
    bne s3, s2, 1b
    li t0, 0x100000        # sifive_test: poweroff
    li t1, 0x5555
    sw t1, 0(t0)
5:  j 5b
"""


def build_elf(mib: int, passes: int, work: Path) -> Path:
    """The store-heavy program as an ELF linked at 0x8000_0000."""
    from virtkit.engines.riscv.asm import build

    return build(SRC.format(pages=mib * 256, passes=passes), work, f"dirty{mib}")


def run_virtkit(elf: Path, interval: float | None) -> float:
    """Seconds from start to poweroff; with ``interval``, the dirty log is fetched that often meanwhile."""
    from virtkit.machine.builder import build
    from virtkit.machine.config import MachineConfig

    fd = os.open("/dev/null", os.O_WRONLY)
    m = build(MachineConfig(kernel=str(elf), firmware="none", memory=64 << 20, rng=False),
              lambda data: os.write(fd, data) and None)
    vm, eng = m.vm, m.vm.engine
    done = threading.Event()
    syncs = 0

    def syncer() -> None:
        nonlocal syncs
        while not done.wait(interval):
            if vm.pause("bench: dirty log"):
                try:
                    eng.dirty_log_fetch()
                    syncs += 1
                finally:
                    vm.resume()

    try:
        t = time.perf_counter()
        vm.start()
        th = threading.Thread(target=syncer, daemon=True)
        if interval:
            th.start()
        res = vm.wait(600)
        dt = time.perf_counter() - t
        done.set()
        if interval:
            th.join()
    finally:
        vm.close()
        os.close(fd)
    if res is None or res.reason != "poweroff":
        raise RuntimeError(f"virtkit: the program ended with {res}")
    return dt


def run_qemu(elf: Path, migrate: bool, work: Path) -> float:
    """Wall seconds of QEMU running the ELF to poweroff; with ``migrate``, under a capped live migration."""
    qsock = str(work / "qmp.sock")
    argv = ["qemu-system-riscv64", "-M", "virt", "-m", "64M", "-display", "none", "-monitor", "none",
            "-serial", "file:/dev/null", "-bios", "none", "-kernel", str(elf),
            "-qmp", f"unix:{qsock},server=on,wait=off"]
    t = time.perf_counter()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if migrate:  # at once, while the program runs; a 1 ms downtime limit: it stays in pre-copy rounds
            r = qmp(qsock, {"execute": "migrate-set-parameters",
                             "arguments": {"max-bandwidth": 1 << 20, "downtime-limit": 1}},
                     {"execute": "migrate", "arguments": {"uri": "exec:cat > /dev/null"}},
                     {"execute": "query-migrate"})
            if any("error" in x for x in r) or r[-1]["return"].get("status") not in ("setup", "active"):
                raise RuntimeError(f"QMP: {r}")
        rc = p.wait(600)
        dt = time.perf_counter() - t
    finally:
        if p.poll() is None:
            p.kill()
    if rc:
        raise RuntimeError(f"qemu exited {rc}: {p.stderr.read().decode(errors='replace')[-300:]}")  # type: ignore
    return dt


def main(argv: list[str] | None = None) -> int:
    """Measure both peers plain and with tracking; print the slowdowns side by side."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=1, help="the region the program writes, MiB (default 1: its "
                    "pages fit the software TLB, so only the tracking sends stores to the slow path)")
    ap.add_argument("--passes", type=int, default=1_000_000, help="passes over the region (default 1000000)")
    ap.add_argument("--interval-ms", type=float, default=10.0, help="virtkit's dirty-log fetch interval")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    args = ap.parse_args(argv)
    if not 1 <= args.mib <= 48 or args.passes < 1 or args.interval_ms <= 0:
        ap.error("--mib must be 1..48, --passes and --interval-ms positive")
    from virtkit.engines.riscv.asm import have_toolchain

    if not have_toolchain():
        print("bench/dirty_log.py: error: needs riscv64-linux-gnu-gcc (gcc-riscv64-linux-gnu)", file=sys.stderr)
        return 1
    have_qemu = shutil.which("qemu-system-riscv64") is not None
    with tempfile.TemporaryDirectory(prefix="vk-bench-dirty-") as tmp:
        elf = build_elf(args.mib, args.passes, Path(tmp))
        run_virtkit(elf, None)  # warm-up: engine load, JIT
        vk_plain = min(run_virtkit(elf, None) for _ in range(2))
        vk_sync = min(run_virtkit(elf, args.interval_ms / 1000) for _ in range(2))
        q_plain = q_sync = None
        if have_qemu:
            q_plain = min(run_qemu(elf, False, Path(tmp)) for _ in range(2))
            q_sync = min(run_qemu(elf, True, Path(tmp)) for _ in range(2))
    stores = args.mib * 256 * args.passes
    res = {"mib": args.mib, "passes": args.passes, "stores": stores, "interval_ms": args.interval_ms,
           "virtkit": {"plain_s": vk_plain, "tracked_s": vk_sync, "slowdown": vk_sync / vk_plain - 1},
           "qemu": None if q_plain is None else {"plain_s": q_plain, "tracked_s": q_sync,
                                                 "slowdown": q_sync / q_plain - 1},  # type: ignore[operator]
           "load_average": os.getloadavg()[0]}
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"dirty tracking: {stores:,} stores, one per page over {args.mib} MiB, pass after pass")
    for col in ("peer", "plain s", "tracked s", "slowdown", "plain Mstores/s"):
        t.add_column(col, justify="left" if col == "peer" else "right")
    for name, r in (("virtkit", res["virtkit"]), ("qemu", res["qemu"])):
        if r:
            t.add_row(name, f"{r['plain_s']:.3f}", f"{r['tracked_s']:.3f}", f"{r['slowdown']:+.1%}",
                      f"{stores / r['plain_s'] / 1e6:.1f}")
    Console().print(t)
    print(f"virtkit fetches its dirty log every {args.interval_ms:g} ms; QEMU runs under a 1 MiB/s live "
          f"migration; load average {res['load_average']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
