"""Container start-up benchmark: ``/bin/true`` in a busybox bundle, 100 times in a row (``run``: create, start,
wait, delete), then 50 started at once, with virtkit-runc and Debian's runc in the same run, taking turns;
then virtkit-runc and crun without cgroups (``--cgroup-manager=disabled`` in a private cgroup2 mount: the
only way Debian's crun runs on this hybrid host). Goal of issue 16: at most half of runc's time, ahead of
crun where crun runs.

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


def crun_rows(d: Path, b: Path, ours: list[str], count: int) -> dict[str, list[float]]:
    """crun and virtkit-runc, both with ``--cgroup-manager=disabled``, in a mount namespace of their own whose
    /sys/fs/cgroup is a fresh cgroup2 (Debian's crun refuses this host's hybrid layout, and on cgroup2 here it
    cannot load its device filter: no CAP_SYS_RESOURCE to raise RLIMIT_MEMLOCK). Run in a child process, so
    the benchmark's own mount namespace stays as it was."""
    import multiprocessing

    def work(q: multiprocessing.Queue) -> None:
        from virtkit.containers import linux as L

        L.unshare(L.CLONE_NEWNS)
        L.mount(None, "/", None, L.MS_REC | L.MS_PRIVATE)
        L.mount("none", "/sys/fs/cgroup", "cgroup2", 0, None)
        crun = ["crun", "--cgroup-manager=disabled", "--root", str(d / "cr"), "run", "--bundle", str(b)]
        vk = [ours[0], "--cgroup-manager=disabled", *ours[1:]]
        out: dict[str, list[float]] = {"crun": [], "virtkit-runc": []}
        for i in range(3):
            one([*crun, f"cw{i}"])
            one([*vk, f"cw{i}"])
        for i in range(count):
            out["crun"].append(one([*crun, f"cc{i}"]))
            out["virtkit-runc"].append(one([*vk, f"cc{i}"]))
        q.put(out)

    q: multiprocessing.Queue = multiprocessing.get_context("fork").Queue()
    p = multiprocessing.get_context("fork").Process(target=work, args=(q,))
    p.start()
    out = q.get(timeout=600)
    p.join()
    return out


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
    ap.add_argument("--no-crun", action="store_true", help="skip the comparison with crun (no cgroups)")
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
        crun = crun_rows(d, b, ours, args.count) if shutil.which("crun") and not args.no_crun else {}
    ratio = t0["virtkit-runc"] / t0["runc"]
    crun_med = {k: round(statistics.median(v) * 1000, 1) for k, v in crun.items()}
    result = {"count": args.count, "total_seconds": {k: round(v, 3) for k, v in t0.items()},
              "median_ms": {k: round(statistics.median(v) * 1000, 1) for k, v in times.items()},
              "ratio": round(ratio, 3), "parallel": args.parallel,
              "parallel_seconds": {k: round(v, 3) for k, v in par.items()},
              "parallel_ratio": round(par["virtkit-runc"] / par["runc"], 3) if par else None,
              "no_cgroups_median_ms": crun_med}
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
    print(f"virtkit-runc / runc = {ratio:.2f}x (goal: at most 0.5x: {verdict})")
    if crun_med:
        print(f"without cgroups (--cgroup-manager=disabled, a private cgroup2 mount: the only way Debian's crun "
              f"runs here), median per container: crun {crun_med['crun']} ms, virtkit-runc "
              f"{crun_med['virtkit-runc']} ms ({crun_med['virtkit-runc'] / crun_med['crun']:.2f}x crun)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
