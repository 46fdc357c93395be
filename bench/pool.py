"""Pool volume benchmark: virtkit pool volumes vs QEMU's block layer (`qemu-img bench`), same work, one run.

Each workload is a stream of synchronous requests at queue depth 1 (what one virtio-blk queue
without batching issues); write workloads end with one flush, on both sides:

  * seq-write-64K: 64 KiB writes over the whole volume
  * seq-read-64K:  64 KiB reads over the whole (written) volume
  * seq-write-4K:  4 KiB writes over the first quarter

virtkit runs them through the BlockBackend API on linear (thick), thin, mirror (2 copies) and
parity (3 devices) volumes of one pool; QEMU runs them with ``qemu-img bench`` on a raw file
(peer of thick volumes) and a fresh qcow2 image (peer of thin volumes, allocation on first write).
Mirror and parity are compared with raw too: the ratio shows the price of redundancy.

    .venv/bin/python bench/pool.py [--size 64M] [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from virtkit.storage.pool import Pool, VolumeBackend, parse_size

WORKLOADS = {  # name: (request size, write?, fraction of the volume)
    "seq-write-64K": (64 << 10, True, 1.0),
    "seq-read-64K": (64 << 10, False, 1.0),
    "seq-write-4K": (4 << 10, True, 0.25),
}
CASES = [  # virtkit volume layout, thin?, QEMU peer format
    ("linear", False, "raw"),
    ("linear", True, "qcow2"),
    ("mirror", False, "raw"),
    ("parity", False, "raw"),
]


def run_virtkit(vol: VolumeBackend, req: int, write: bool, total: int) -> float:
    """Seconds for ``total`` bytes of sequential ``req``-byte requests then a flush."""
    buf = bytearray(b"\xa5" * req)
    t0 = time.perf_counter()
    for off in range(0, total, req):
        if write:
            vol.write(off, buf)
        else:
            vol.readinto(off, buf)
    if write:
        vol.flush()
    return time.perf_counter() - t0


def run_qemu(image: Path, fmt: str, req: int, write: bool, total: int) -> float:
    """Seconds reported by ``qemu-img bench`` for the same request stream (writeback cache, depth 1)."""
    argv = ["qemu-img", "bench", "-f", fmt, "-t", "writeback", "-d", "1", "-c", str(total // req), "-s", str(req)]
    if write:  # one flush after the last request, like the virtkit side
        argv += ["-w", f"--flush-interval={total // req}"]
    out = subprocess.run([*argv, str(image)], capture_output=True, text=True, check=True)
    m = re.search(r"Run completed in ([\d.]+) seconds", out.stdout)
    if not m:
        raise RuntimeError(f"unexpected qemu-img bench output: {out.stdout!r}")
    return float(m.group(1))


def main() -> int:
    """Run every workload on every case and print the table (or JSON)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="64M", help="volume size (default 64M)")
    ap.add_argument("--runs", type=int, default=3, help="runs per measurement; the median is shown (default 3)")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    args = ap.parse_args()
    if shutil.which("qemu-img") is None:
        print("bench/pool.py needs qemu-img (Debian qemu-utils; `make setup` installs it)", file=sys.stderr)
        return 1
    size = parse_size(args.size)
    rows = []
    with tempfile.TemporaryDirectory(prefix="virtkit-bench-pool-") as tmp:
        tmpd = Path(tmp)
        devs = []
        for i in range(3):
            p = tmpd / f"dev{i}.img"
            with open(p, "wb") as f:
                f.truncate(2 * size + (16 << 20))
            devs.append(str(p))
        pool = Pool.create(tmpd / "pool", devs)
        for layout, thin, fmt in CASES:
            name = f"{layout}{'-thin' if thin else ''}"
            width = {"linear": 1, "mirror": 2, "parity": 3}[layout]
            for wl, (req, write, frac) in WORKLOADS.items():
                total = int(size * frac) // req * req
                vk_times, q_times = [], []
                for _ in range(args.runs):  # fresh volume and image each run: thin allocation is measured
                    pool.create_volume(name, size, layout, width=width, thin=thin)
                    vol = pool.open_volume(name)
                    image = tmpd / f"peer.{fmt}"
                    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(image), str(size)], check=True)
                    if not write:  # reads of written data on both sides
                        run_virtkit(vol, 1 << 20, True, size)
                        run_qemu(image, fmt, 1 << 20, True, size)
                    vk_times.append(run_virtkit(vol, req, write, total))
                    q_times.append(run_qemu(image, fmt, req, write, total))
                    vol.close()
                    pool.delete_volume(name)
                    image.unlink()
                t_vk, t_q = statistics.median(vk_times), statistics.median(q_times)
                rows.append({
                    "workload": wl, "virtkit": name, "peer": f"qemu {fmt}",
                    "virtkit_MBps": total / t_vk / 1e6, "peer_MBps": total / t_q / 1e6,
                    "ratio": t_q / t_vk,
                })
        pool.close()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    t = Table(title=f"pool volumes vs qemu-img bench ({args.size} volume, depth 1, writeback, median of {args.runs})")
    for col in ("workload", "virtkit volume", "virtkit MB/s", "peer", "peer MB/s", "virtkit/peer"):
        t.add_column(col, justify="right" if "MB" in col or "/" in col else "left")
    for r in rows:
        t.add_row(r["workload"], r["virtkit"], f"{r['virtkit_MBps']:.0f}", r["peer"], f"{r['peer_MBps']:.0f}",
                  f"{r['ratio']:.2f}")
    Console(width=120).print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
