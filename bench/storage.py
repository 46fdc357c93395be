"""Storage benchmark: virtkit's NBD server vs qemu-nbd vs nbdkit, and qcow2 conversion vs qemu-img.

Every server exports the same file in the same run; each measurement is repeated (servers
interleaved round by round) and the median is reported:

- sequential read and write throughput (MiB/s) with ``nbdcopy`` (libnbd),
- 4 KiB random-read IOPS with ``fio --ioengine=nbd`` (iodepth 16),
- conversion raw->qcow2 and qcow2->raw (MiB/s of virtual size): ``virtkit disk convert`` vs
  ``qemu-img convert`` and ``nbdcopy`` through ``qemu-nbd`` (command-line runs, start-up included).

The qcow2 export has one peer, qemu-nbd: Debian 12's nbdkit (1.32) cannot read qcow2 (its qcow2dec
filter arrived in 1.36).

Usage: python bench/storage.py [--size-mib 256] [--rounds 3] [--runtime 5] [--only nbd,qcow2,convert]
                               [--dir /tmp] [--json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from rich.console import Console
from rich.table import Table

PY = sys.executable


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start")


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_server(kind: str, path: str, fmt: str, port: int) -> subprocess.Popen:
    if kind == "virtkit":
        cmd = [PY, "-m", "virtkit.cli", "nbd", "serve", "-p", str(port), path]
    elif kind == "qemu-nbd":
        cmd = ["qemu-nbd", "-f", fmt, "-t", "-e", "16", "-b", "127.0.0.1", "-p", str(port), "--cache=writeback",
               path]
    else:
        cmd = ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port), "file", path]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_port(port, proc)
    return proc


NBD_ROWS = (("seq_read_mib_s", "seq read MiB/s"), ("seq_write_mib_s", "seq write MiB/s"),
            ("randread_4k_iops", "4K randread IOPS"))
CONVERTERS = ("virtkit-lib", "virtkit-cli", "qemu-img", "nbdcopy")


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr.strip()}")
    return dt


def fio_iops(url: str, size: int, runtime: int) -> float:
    p = subprocess.run(["fio", "--name=randread", "--ioengine=nbd", f"--uri={url}", "--rw=randread", "--bs=4k",
                        "--iodepth=16", f"--runtime={runtime}", "--time_based", f"--size={size}",
                        "--output-format=json"], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"fio failed: {p.stderr.strip()}")
    out = p.stdout[p.stdout.index("{"):]
    return float(json.loads(out)["jobs"][0]["read"]["iops"])


def bench_nbd(work: str, size: int, rounds: int, runtime: int, servers: list[str], fmt: str = "raw") -> dict:
    """Per server and round: write the source file sequentially, read it back, then random 4K reads.

    raw: all servers export the same preexisting file. qcow2: a fresh empty image per run (so the
    write test measures cluster allocation), created by qemu-img for every server.
    """
    disk = os.path.join(work, f"disk.{fmt}")
    src = os.path.join(work, "src.raw")
    if not os.path.exists(src):
        rng = random.Random(1)
        with open(src, "wb") as f:
            for _ in range(size >> 20):
                f.write(rng.randbytes(1 << 20))
    if fmt == "raw":
        shutil.copyfile(src, disk)
    mib = size / (1 << 20)
    res: dict = {s: {"seq_read_mib_s": [], "seq_write_mib_s": [], "randread_4k_iops": []} for s in servers}
    for _ in range(rounds):
        for kind in servers:
            if fmt == "qcow2":
                if os.path.exists(disk):
                    os.unlink(disk)
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, str(size)], check=True)
            port = free_port()
            proc = start_server(kind, disk, fmt, port)
            url = f"nbd://127.0.0.1:{port}"
            try:
                res[kind]["seq_write_mib_s"].append(mib / timed(["nbdcopy", "--flush", src, url]))
                res[kind]["seq_read_mib_s"].append(mib / timed(["nbdcopy", url, "null:"]))
                res[kind]["randread_4k_iops"].append(fio_iops(url, size, runtime))
            finally:
                proc.terminate()
                proc.wait(30)
    return {k: {m: statistics.median(v) for m, v in d.items()} for k, d in res.items()}


def bench_convert(work: str, size: int, rounds: int, tools: tuple[str, ...] = (), startup: bool = False) -> dict:
    """Time each tool converting the same raw file to qcow2 and back; the page cache is written out
    (``sync``) before each timed run so one tool's dirty pages do not slow the next. ``startup``: report
    seconds instead of MiB/s (a 1 MiB image: what a conversion costs before any data moves)."""
    from virtkit.storage.imgtool import convert

    raw = os.path.join(work, "conv-src.raw")
    rng = random.Random(2)
    with open(raw, "wb") as f:  # 3/4 random data, 1/4 zeros, in 1 MiB pieces
        for i in range(size >> 20):
            f.write(bytes(1 << 20) if i % 4 == 3 else rng.randbytes(1 << 20))
    mib = size / (1 << 20)
    tools = tools or CONVERTERS
    out: dict = {t: {"raw_to_qcow2_mib_s": [], "qcow2_to_raw_mib_s": []} for t in tools}
    q = os.path.join(work, "conv.qcow2")
    back = os.path.join(work, "conv-back.raw")

    def run(fn) -> float:
        os.sync()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        return dt if startup else mib / dt

    for _ in range(rounds):
        for tool in tools:
            for f in (q, back):
                if os.path.exists(f):
                    os.unlink(f)
            if tool == "virtkit-lib":
                out[tool]["raw_to_qcow2_mib_s"].append(run(lambda: convert(raw, q, "qcow2")))
                out[tool]["qcow2_to_raw_mib_s"].append(run(lambda: convert(q, back, "raw")))
                continue
            if tool == "virtkit-cli":
                to_q = [PY, "-m", "virtkit.cli", "disk", "convert", "-q", raw, q]
                to_r = [PY, "-m", "virtkit.cli", "disk", "convert", "-q", "-O", "raw", q, back]
            elif tool == "qemu-img":  # -t writeback: flush at the end like virtkit does (qemu-img's default skips it)
                to_q = ["qemu-img", "convert", "-t", "writeback", "-f", "raw", "-O", "qcow2", raw, q]
                to_r = ["qemu-img", "convert", "-t", "writeback", "-f", "qcow2", "-O", "raw", q, back]
            else:  # nbdcopy with qemu-nbd serving the qcow2 side (the image is created first, untimed)
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", q, str(size)], check=True)
                to_q = ["nbdcopy", "--flush", raw, "--", "[", "qemu-nbd", "-f", "qcow2", "--cache=writeback", q, "]"]
                to_r = ["nbdcopy", "--flush", "--", "[", "qemu-nbd", "-r", "-f", "qcow2", q, "]", back]
            out[tool]["raw_to_qcow2_mib_s"].append(run(functools.partial(timed, to_q)))
            out[tool]["qcow2_to_raw_mib_s"].append(run(functools.partial(timed, to_r)))
            with open(raw, "rb") as f1, open(back, "rb") as f2:
                assert f1.read() == f2.read(), f"{tool}: conversion round trip changed the data"
    res = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in out.items()}
    if startup:
        return {"startup_s": {k: {"raw_to_qcow2": d["raw_to_qcow2_mib_s"], "qcow2_to_raw": d["qcow2_to_raw_mib_s"]}
                              for k, d in res.items()}}
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256, help="size of the exported/converted file")
    ap.add_argument("--rounds", type=int, default=3, help="repetitions (median reported)")
    ap.add_argument("--runtime", type=int, default=5, help="seconds per fio random-read run")
    ap.add_argument("--convert-mib", type=int, default=1024,
                    help="size of the converted image (a disk-sized image, so start-up does not dominate; "
                         "start-up is measured on its own)")
    ap.add_argument("--only", default="nbd,qcow2,convert",
                    help="comma-separated parts to run: nbd (raw export), qcow2 (qcow2 export), convert")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the test files go")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    args = ap.parse_args()
    missing = [t for t in ("qemu-nbd", "nbdkit", "nbdcopy", "fio", "qemu-img") if shutil.which(t) is None]
    if missing:
        print(f"bench/storage.py needs {', '.join(missing)} (scripts/setup-host.sh installs them)", file=sys.stderr)
        return 1
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="vk-bench-storage-") as work:
        parts = set(args.only.split(","))
        unknown = parts - {"nbd", "qcow2", "convert"}
        if unknown:
            print(f"--only: unknown part(s) {', '.join(sorted(unknown))} (nbd, qcow2, convert)", file=sys.stderr)
            return 2
        nbd = bench_nbd(work, size, args.rounds, args.runtime, ["virtkit", "qemu-nbd", "nbdkit"]) \
            if "nbd" in parts else None
        nbd_q = bench_nbd(work, size, args.rounds, args.runtime, ["virtkit", "qemu-nbd"], fmt="qcow2") \
            if "qcow2" in parts else None
        conv = bench_convert(work, args.convert_mib << 20, args.rounds) if "convert" in parts else None
        if conv:
            conv.update(bench_convert(work, 1 << 20, args.rounds * 3, tools=CONVERTERS[1:], startup=True))
    result = {"size_mib": args.size_mib, "rounds": args.rounds, "nbd": nbd, "nbd_qcow2": nbd_q, "convert": conv,
              "load_average": os.getloadavg()[0], "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    con = Console(width=max(Console().width, 110))
    con.print(f"load average {result['load_average']:.1f} on {result['cpus']} CPUs")
    if nbd:
        t = Table(title=f"NBD server, {args.size_mib} MiB raw file, median of {args.rounds}")
        for col in ("metric", "virtkit", "qemu-nbd", "nbdkit", "virtkit/qemu-nbd", "virtkit/nbdkit"):
            t.add_column(col, justify="right" if col != "metric" else "left")
        for m, label in NBD_ROWS:
            v, q, k = nbd["virtkit"][m], nbd["qemu-nbd"][m], nbd["nbdkit"][m]
            t.add_row(label, f"{v:,.0f}", f"{q:,.0f}", f"{k:,.0f}", f"{v / q:.2f}", f"{v / k:.2f}")
        con.print(t)
    if nbd_q:
        t = Table(title="NBD server exporting a qcow2 image (fresh, so writes allocate clusters); no nbdkit: "
                        "Debian 12's nbdkit 1.32 cannot read qcow2")
        for col in ("metric", "virtkit", "qemu-nbd", "virtkit/qemu-nbd"):
            t.add_column(col, justify="right" if col != "metric" else "left")
        for m, label in NBD_ROWS:
            v, q = nbd_q["virtkit"][m], nbd_q["qemu-nbd"][m]
            t.add_row(label, f"{v:,.0f}", f"{q:,.0f}", f"{v / q:.2f}")
        con.print(t)
    if nbd or nbd_q:
        con.print("seq read: nbdcopy URL null:; seq write: nbdcopy --flush FILE URL; randread: fio --ioengine=nbd "
                  "--bs=4k --iodepth=16")
    if conv:
        t = Table(title=f"conversion, {args.convert_mib} MiB (3/4 data, 1/4 zeros), median of {args.rounds}")
        for col in ("metric", "virtkit lib", "virtkit CLI", "qemu-img", "nbdcopy", "CLI/qemu-img", "CLI/nbdcopy"):
            t.add_column(col, justify="right" if col != "metric" else "left")
        for m, label in (("raw_to_qcow2_mib_s", "raw -> qcow2 MiB/s"), ("qcow2_to_raw_mib_s", "qcow2 -> raw MiB/s")):
            v, c, q, n = (conv[k][m] for k in CONVERTERS)
            t.add_row(label, f"{v:,.0f}", f"{c:,.0f}", f"{q:,.0f}", f"{n:,.0f}", f"{c / q:.2f}", f"{c / n:.2f}")
        su = conv["startup_s"]
        for d, label in (("raw_to_qcow2", "start-up, 1 MiB raw -> qcow2, ms"),
                         ("qcow2_to_raw", "start-up, 1 MiB qcow2 -> raw, ms")):
            c, q, n = (su[k][d] * 1000 for k in CONVERTERS[1:])
            t.add_row(label, "", f"{c:.0f}", f"{q:.0f}", f"{n:.0f}", f"{q / c:.2f}", f"{n / c:.2f}")
        con.print(t)
        con.print("virtkit lib: virtkit.storage.imgtool.convert() in-process; CLI: `virtkit disk convert` (start-up "
                  "included); qemu-img convert -t writeback; nbdcopy --flush with qemu-nbd serving the qcow2 image "
                  "(all flush the output at the end)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
