"""REST API benchmark: requests per second and p50/p99 latency with concurrent clients, virtkitd beside the
Docker Engine API (Debian's dockerd, started privately) on the same machine, through the same client
(httpx over each daemon's Unix socket, one thread per client).

    .venv/bin/python bench/api.py [--clients 50] [--requests 40] [--json]      (root for dockerd)

Measured: ``GET /vms`` (virtkitd, one VM running) against ``GET /containers/json`` (dockerd, one container
running), and ``POST /vms/NAME/pause`` + ``/resume`` against ``POST /containers/ID/pause`` + ``/unpause``.
Goal of issue 17: virtkit's API at least as fast as dockerd's, p99 under 20 ms at 50 concurrent clients.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def hammer(sock: str, calls: list[tuple[str, str]], clients: int, per_client: int) -> dict:
    """``clients`` threads each making ``per_client`` rounds of ``calls``, each sending its next request when
    the last is answered (closed loop: the daemon's capacity); rps and latency percentiles (ms)."""
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client() -> None:
        mine = []
        with httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://api", timeout=60) as c:
            start.wait()
            for _ in range(per_client):
                for method, path in calls:
                    t0 = time.perf_counter()
                    r = c.request(method, path)
                    mine.append(time.perf_counter() - t0)
                    if r.status_code >= 500:  # (a 409 "already paused" is an answer, not a failure)
                        with lock:
                            errors.append(f"{method} {path}: {r.status_code} {r.text[:200]}")
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    return {"requests": len(lat), "rps": round(len(lat) / wall, 1),
            "p50_ms": round(statistics.median(lat) * 1000, 2), "p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1000, 2),
            "errors": len(errors), "first_error": errors[0] if errors else None}


def hammer_raw(sock: str, path: str, clients: int, per_client: int, rate: float) -> dict:
    """The open-loop phase with a client that costs little: one asyncio loop, ``clients`` keep-alive HTTP/1.1
    connections on the Unix socket, each sending ``GET path`` on its own schedule (``rate`` per second in
    all) and reading the answer by its Content-Length; latency from the scheduled start."""
    import asyncio

    lat: list[float] = []
    errors: list[str] = []
    req = f"GET {path} HTTP/1.1\r\nHost: api\r\n\r\n".encode()

    async def client(i: int, began: float) -> None:
        reader, writer = await asyncio.open_unix_connection(sock)
        interval = clients / rate
        for k in range(per_client):
            t0 = began + interval * (i / clients + k)
            delay = t0 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            lat.append(time.perf_counter() - t0)
            if not head.startswith(b"HTTP/1.1 2"):
                errors.append(head.split(b"\r\n")[0].decode())
        writer.close()

    async def run() -> float:
        began = time.perf_counter() + 0.2
        await asyncio.gather(*(client(i, began) for i in range(clients)))
        return time.perf_counter() - began

    wall = asyncio.run(run())
    lat.sort()
    return {"requests": len(lat), "rps": round(len(lat) / wall, 1),
            "p50_ms": round(statistics.median(lat) * 1000, 2), "p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1000, 2),
            "errors": len(errors), "first_error": errors[0] if errors else None}


def start_virtkitd(tmp: Path) -> tuple[subprocess.Popen | None, str, dict]:
    from tests.helpers.guests import COUNTING
    from tests.helpers.opensbi import payload_image

    env = dict(os.environ, VIRTKIT_DAEMON_DIR=str(tmp / "d"), VIRTKIT_RUN_DIR=str(tmp / "run"))
    subprocess.run([sys.executable, "-m", "virtkit.cli", "daemon", "start"], env=env, check=True,
                   capture_output=True)
    sock = str(tmp / "d" / "virtkitd.sock")
    payload_image(tmp / "Image", COUNTING)
    cfg = {"board": "riscv64-virt", "firmware": "none", "kernel": str(tmp / "Image"), "memory": "32M", "rng": False}
    with httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://api", timeout=120) as c:
        c.post("/vms", json={"name": "b1", "config": cfg}).raise_for_status()
        c.post("/vms/b1/start").raise_for_status()
    return None, sock, env


def start_dockerd(tmp: Path) -> tuple[subprocess.Popen, str, str]:
    d = Path(f"/tmp/vkbd-{os.getpid()}")
    d.mkdir(exist_ok=True)
    sock = f"{d}/docker.sock"
    proc = subprocess.Popen(["dockerd", "--data-root", f"{d}/data", "--exec-root", f"{d}/exec", "--pidfile",
                             f"{d}/pid", "-H", f"unix://{sock}", "--bridge=none", "--iptables=false",
                             "--ip6tables=false", "--ip-masq=false"], stdout=subprocess.DEVNULL,
                            stderr=open(tmp / "dockerd.log", "w"))
    docker = ["/usr/bin/docker", "-H", f"unix://{sock}"]
    for _ in range(600):
        if subprocess.run([*docker, "version"], capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    # a busybox image from virtkit's store (nothing is pulled)
    env = dict(os.environ, VIRTKIT_CONTAINERS_DIR=str(tmp / "c"))
    subprocess.run([sys.executable, "-m", "virtkit.cli", "image", "build", "-t", "busybox", "--busybox"], env=env,
                   check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "virtkit.cli", "image", "export", "busybox", str(tmp / "bb.tar")],
                   env=env, check=True, capture_output=True)
    subprocess.run([*docker, "load", "-i", str(tmp / "bb.tar")], check=True, capture_output=True)
    cid = subprocess.run([*docker, "run", "-d", "--network", "none", "busybox", "sleep", "3600"], check=True,
                         capture_output=True, text=True).stdout.strip()
    return proc, sock, cid


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=40, help="rounds per client (default 40)")
    ap.add_argument("--rate", type=float, default=500, help="open-loop phase: GETs per second in all (default 500)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="vk-bench-api-") as tmp_s:
        tmp = Path(tmp_s)
        _, sock, env = start_virtkitd(tmp)
        try:
            rows["virtkitd GET /vms"] = hammer(sock, [("GET", "/vms")], args.clients, args.requests)
            rows[f"virtkitd GET /vms at {args.rate:g}/s"] = hammer_raw(sock, "/vms", args.clients,
                                                                      args.requests * 2, args.rate)
            rows["virtkitd POST pause+resume"] = hammer(
                sock, [("POST", "/vms/b1/pause"), ("POST", "/vms/b1/resume")], args.clients, args.requests // 4)
        finally:
            subprocess.run([sys.executable, "-m", "virtkit.cli", "daemon", "stop"], env=env, capture_output=True)
            for info in (tmp / "run").glob("*.json"):
                try:
                    os.kill(json.loads(info.read_text())["pid"], signal.SIGKILL)
                except (OSError, ValueError, KeyError):
                    pass
        if shutil.which("dockerd") and os.geteuid() == 0:
            proc, dsock, cid = start_dockerd(tmp)
            try:
                rows["dockerd GET /containers/json"] = hammer(dsock, [("GET", "/containers/json")], args.clients,
                                                              args.requests)
                rows[f"dockerd GET /containers/json at {args.rate:g}/s"] = hammer_raw(
                    dsock, "/containers/json", args.clients, args.requests * 2, args.rate)
                rows["dockerd POST pause+unpause"] = hammer(
                    dsock, [("POST", f"/containers/{cid}/pause"), ("POST", f"/containers/{cid}/unpause")],
                    args.clients, args.requests // 4)
            finally:
                subprocess.run(["/usr/bin/docker", "-H", f"unix://{dsock}", "rm", "-f", cid], capture_output=True)
                proc.terminate()
                proc.wait(timeout=60)
                subprocess.run(["umount", "-R", "-l", str(Path(dsock).parent)], capture_output=True)
                shutil.rmtree(Path(dsock).parent, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{args.clients} concurrent clients:")
    print(f"  {'':44} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for k, r in rows.items():
        print(f"  {k:44} {r['requests']:8} {r['rps']:8} {r['p50_ms']:8} {r['p99_ms']:8} {r['errors']:6}")
        if r["first_error"]:
            print(f"    first error: {r['first_error']}")
    g, d = rows.get("virtkitd GET /vms"), rows.get("dockerd GET /containers/json")
    o = rows.get(f"virtkitd GET /vms at {args.rate:g}/s")
    if g and d and o:
        print(f"GET: virtkitd {g['rps'] / d['rps']:.2f}x dockerd's requests/s at capacity; p99 {o['p99_ms']} ms "
              f"at {args.rate:g} requests/s from {args.clients} clients (goal: at least dockerd's rate, p99 under "
              f"20 ms: {'met' if g['rps'] >= d['rps'] and o['p99_ms'] < 20 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
