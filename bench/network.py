"""Network benchmark: virtkit's switch vs vde_switch vs the Linux bridge, on the same work in one run.

Two network namespaces (hosts A and B) are wired through each fabric:
  * virtkit   — ``virtkit net`` switch with two ``tap:`` ports moved into the namespaces (compiled datapath)
  * virtkit python-only — the same with ``VIRTKIT_NET_DATAPATH=0``: every frame through the Python path
  * virtkit host: — the same switch with two ``host:`` ports on veth pairs (PACKET_MMAP rings)
  * vde_switch — Debian vde2's ``vde_switch -t TAP -t TAP``, TAPs moved into the namespaces
  * bridge    — the Linux bridge with two veth pairs, offloads on (the kernel: our physical limit)
and measured with
  * frame rate: 64-byte frames (60 + FCS) from A to B's MAC as fast as a Python AF_PACKET sender can
    offer them for ``--duration`` s; B's rx counter gives the frames delivered per second;
  * TCP throughput: ``iperf3`` from A to B for ``--duration`` s.

Run as root: ``.venv/bin/python bench/network.py [--duration 5] [--repeat 3] [--json]``.
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
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from virtkit.network import control
from virtkit.network.netns import Netns, sh

TAG = f"vb{os.getpid() % 10000}"
A_IP, B_IP = "10.99.0.1", "10.99.0.2"

GEN = r"""
import socket, sys, time
ifname, dst, duration = sys.argv[1], bytes.fromhex(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((ifname, 0))
src = s.getsockname()[4]
frame = dst + src + b"\x88\xb5" + bytes(46)
send = s.send
n = 0
t0 = time.perf_counter()
end = t0 + duration
while True:
    for _ in range(1000):
        try:
            send(frame)
        except OSError:
            pass
    n += 1000
    if time.perf_counter() >= end:
        break
print(n, time.perf_counter() - t0)
"""


#: the pid of the switch process of the fabric being measured (None for the kernel bridge)
SWITCH = {"pid": None}


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time a process has used so far (0 when there is no process)."""
    if pid is None:
        return 0.0
    try:
        fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rx_packets(ns: Netns, ifname: str = "eth0") -> int:
    return int(ns.exec("cat", f"/sys/class/net/{ifname}/statistics/rx_packets").stdout)


def mac_of(ns: Netns, ifname: str = "eth0") -> str:
    return ns.exec("cat", f"/sys/class/net/{ifname}/address").stdout.strip().replace(":", "")


def frame_rate(a: Netns, b: Netns, duration: float) -> tuple[float, float, float]:
    """(offered, delivered) 64-byte frames per second from A to B, and the switch's CPU µs per delivered frame."""
    a.ping(B_IP, count=2)  # the switch learns both MACs
    before = rx_packets(b)
    cpu0 = cpu_seconds(SWITCH["pid"])
    out = a.exec(sys.executable, "-c", GEN, "eth0", mac_of(b), str(duration), timeout=duration + 60).stdout.split()
    sent, elapsed = int(out[0]), float(out[1])
    time.sleep(0.5)  # let queues drain
    got = rx_packets(b) - before
    cpu = cpu_seconds(SWITCH["pid"]) - cpu0
    return sent / elapsed, got / elapsed, cpu * 1e6 / got if got and SWITCH["pid"] else 0.0


def tcp_throughput(a: Netns, b: Netns, duration: float) -> float:
    """iperf3 A → B, Gbit/s received (a fresh one-shot server per attempt, up to 5 attempts)."""
    last = ""
    for _ in range(5):
        server = b.popen("iperf3", "-s", "-1", "-B", B_IP, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            p = a.exec("iperf3", "-c", B_IP, "-t", str(duration), "-J", check=False, timeout=duration + 60)
            try:
                res = json.loads(p.stdout)
                return res["end"]["sum_received"]["bits_per_second"] / 1e9
            except (ValueError, KeyError):
                last = p.stdout[-300:] + p.stderr[-300:]
        except subprocess.TimeoutExpired:
            last = "iperf3 client timed out"
        finally:
            server.kill()
            server.wait()
    raise RuntimeError(f"iperf3 failed: {last}")


def setup_virtkit(a: Netns, b: Netns, datapath: bool = True) -> Callable[[], None]:
    d = tempfile.mkdtemp(prefix="vkb")
    os.environ["VIRTKIT_NET_DIR"] = d
    os.environ["VIRTKIT_NET_DATAPATH"] = "1" if datapath else "0"
    control.create("bench", storm_pps=0)
    SWITCH["pid"] = control.request("bench", "ping")["pid"]
    for ns, ip in ((a, A_IP), (b, B_IP)):
        tap = f"{TAG}{ns.name[-1]}"
        control.request("bench", "port_add", spec=f"tap:{tap}", access=1)
        ns.adopt(tap, f"{ip}/24")
        ns.exec("ip", "link", "set", tap, "name", "eth0")

    def down() -> None:
        control.stop("bench")
        shutil.rmtree(d, ignore_errors=True)
        os.environ.pop("VIRTKIT_NET_DATAPATH", None)
    return down


def setup_virtkit_python(a: Netns, b: Netns) -> Callable[[], None]:
    """The same TAP switch with the compiled datapath off: every frame through the Python path."""
    return setup_virtkit(a, b, datapath=False)


def setup_virtkit_host(a: Netns, b: Netns) -> Callable[[], None]:
    d = tempfile.mkdtemp(prefix="vkb")
    os.environ["VIRTKIT_NET_DIR"] = d
    control.create("bench", storm_pps=0)
    SWITCH["pid"] = control.request("bench", "ping")["pid"]
    for ns, ip in ((a, A_IP), (b, B_IP)):
        out = ns.veth("eth0", f"{TAG}{ns.name[-1]}", f"{ip}/24")
        control.request("bench", "port_add", spec=f"host:{out}", access=1)

    def down() -> None:
        control.stop("bench")
        shutil.rmtree(d, ignore_errors=True)
    return down


def setup_vde(a: Netns, b: Netns) -> Callable[[], None]:
    d = tempfile.mkdtemp(prefix="vde")
    taps = [f"{TAG}v{ns.name[-1]}" for ns in (a, b)]
    pidfile = f"{d}/pid"
    sh("vde_switch", "-s", f"{d}/ctl", "-d", "-p", pidfile, *[x for t in taps for x in ("-t", t)])
    for _ in range(100):
        if os.path.exists(pidfile) and all(os.path.exists(f"/sys/class/net/{t}") for t in taps):
            break
        time.sleep(0.05)
    SWITCH["pid"] = int(open(pidfile).read())
    for ns, ip, tap in ((a, A_IP, taps[0]), (b, B_IP, taps[1])):
        ns.adopt(tap, f"{ip}/24")
        ns.exec("ip", "link", "set", tap, "name", "eth0")

    def down() -> None:
        try:
            os.kill(int(open(pidfile).read()), 15)
        except (OSError, ValueError):
            pass
        shutil.rmtree(d, ignore_errors=True)
    return down


def setup_bridge(a: Netns, b: Netns) -> Callable[[], None]:
    br = f"{TAG}br"
    SWITCH["pid"] = None
    sh("ip", "link", "add", br, "type", "bridge")
    sh("ip", "link", "set", br, "up")
    for ns, ip in ((a, A_IP), (b, B_IP)):
        out = ns.veth("eth0", f"{TAG}{ns.name[-1]}", f"{ip}/24", offloads=True)
        sh("ip", "link", "set", out, "master", br)

    def down() -> None:
        sh("ip", "link", "del", br, check=False)
    return down


FABRICS: dict[str, Callable[[Netns, Netns], Callable[[], None]]] = {
    "virtkit": setup_virtkit, "virtkit python-only": setup_virtkit_python, "virtkit host:": setup_virtkit_host,
    "vde_switch": setup_vde,
    "linux bridge": setup_bridge}


def run(fabric: str, duration: float) -> dict[str, float]:
    print(f"measuring {fabric}...", file=sys.stderr, flush=True)
    a, b = Netns(f"{TAG}a"), Netns(f"{TAG}b")
    down = None
    try:
        down = FABRICS[fabric](a, b)
        if not a.ping(B_IP):
            raise RuntimeError(f"{fabric}: A cannot ping B")
        offered, delivered, cpu_us = frame_rate(a, b, duration)
        gbps = tcp_throughput(a, b, duration)
        return {"offered_fps": offered, "delivered_fps": delivered, "cpu_us_per_frame": cpu_us, "tcp_gbps": gbps}
    finally:
        if down:
            down()
        a.close()
        b.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measurement (default 5)")
    ap.add_argument("--only", choices=list(FABRICS), action="append", help="run only these fabrics")
    ap.add_argument("--repeat", type=int, default=1, help="runs per fabric, interleaved; the median is shown")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    args = ap.parse_args()
    if args.repeat < 1 or args.duration <= 0:
        ap.error("--repeat must be >= 1 and --duration > 0")
    if os.geteuid() != 0:
        print("bench/network.py needs root (namespaces, TAP, AF_PACKET)", file=sys.stderr)
        return 2
    for tool in ("vde_switch", "iperf3", "ping"):
        if not shutil.which(tool):
            print(f"needs {tool} (scripts/setup-host.sh installs it)", file=sys.stderr)
            return 2
    fabrics = args.only or list(FABRICS)
    runs: dict[str, list[dict[str, float]]] = {f: [] for f in fabrics}
    for _ in range(args.repeat):  # interleaved, so a burst of load on the shared machine hits every fabric
        for f in fabrics:
            runs[f].append(run(f, args.duration))
    results = {f: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for f, rs in runs.items()}
    if args.json:
        print(json.dumps({"median": results, "runs": runs}, indent=2))
        return 0
    t = Table(title=f"virtual switch: 64-byte frame rate and TCP throughput ({args.duration:g} s each, "
                    f"median of {args.repeat})")
    for c in ("fabric", "offered frames/s", "delivered frames/s", "vs virtkit", "switch CPU µs/frame", "TCP Gbit/s",
              "vs virtkit"):
        t.add_column(c, justify="left" if c == "fabric" else "right")
    base = results.get("virtkit")
    for f, r in results.items():
        fr = f"{base['delivered_fps'] / r['delivered_fps']:.2f}x" if base and r["delivered_fps"] else "-"
        tr = f"{base['tcp_gbps'] / r['tcp_gbps']:.2f}x" if base and r["tcp_gbps"] else "-"
        cpu = f"{r['cpu_us_per_frame']:.2f}" if r["cpu_us_per_frame"] else "-"
        t.add_row(f, f"{r['offered_fps']:,.0f}", f"{r['delivered_fps']:,.0f}", fr, cpu, f"{r['tcp_gbps']:.2f}", tr)
    Console().print(t)
    print("vs virtkit = virtkit's figure / this fabric's figure (>1: virtkit faster); switch CPU = user+system "
          "time of the switch process during the frame test / frames delivered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
