"""NIC benchmark: the emulated OpenCores MAC (``model=ethoc``) against virtio-net, doing the same job.

A network namespace on a virtkit switch serves ``--mib`` MiB over HTTP; the default guest (Linux 6.1, its
own driver for each NIC) fetches it with busybox ``wget`` and times it with ``time``; then sends as much
back with ``nc``. Both NICs sit on the same switch port type, so the difference is the device model: register-level
buffer descriptors and an interrupt per frame (ethoc) against descriptor rings in shared memory
(virtio-net). Needs root (namespaces, veth).

QEMU is not run beside it: its ``opencores_eth`` is wired only into the Xtensa and OpenRISC boards, not
user-creatable on ``-M virt``, so there is no same-machine peer for the emulated NIC.

    sudo .venv/bin/python bench/nic.py [--mib 16] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

SINK = r"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.78.0.1", 5001)); s.listen(1)
c, _ = s.accept(); got = 0
while True:
    d = c.recv(65536)
    if not d: break
    got += len(d)
print(got, flush=True)
"""


def guest_command(mib: int) -> str:
    """Receive the blob over HTTP (busybox wget), then send as much to the sink (busybox nc), each timed."""
    return ("ip addr add 10.78.0.2/24 dev eth0 && ip link set eth0 up && sleep 1 && "
            "echo rx; time wget -q -O /dev/null http://10.78.0.1:8000/blob; "
            f"echo tx; time sh -c 'head -c {mib << 20} /dev/zero | nc 10.78.0.1 5001'")


def parse(text: str) -> dict[str, float]:
    out = {}
    for what, mins, secs in re.findall(r"^(rx|tx)\n(?:.*\n)*?real\s+(\d+)m\s*([\d.]+)s", text, re.M):
        out[what] = int(mins) * 60 + float(secs)
    return out


def run(model: str, mib: int, switch: str, ns: object, env: dict, www: str) -> dict[str, float]:
    """One guest with a ``model`` NIC: both transfers; seconds each."""
    http = ns.popen(sys.executable, "-m", "http.server", "--bind", "10.78.0.1", "--directory", www, "8000",
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = ns.popen(sys.executable, "-c", SINK, stdout=subprocess.PIPE, text=True)
    try:
        nic = f"switch:{switch},vlan=7,model={model}"
        p = subprocess.run([sys.executable, "-m", "virtkit.cli", "run", "--net", nic, "--json", "--timeout", "600",
                            "--exec", guest_command(mib)], capture_output=True, text=True, env=env,
                           stdin=subprocess.DEVNULL)
        out = json.loads(p.stdout)
        got = int(server.communicate(timeout=60)[0].strip() or 0)
    finally:
        server.kill()
        http.kill()
    if got != mib << 20:
        raise RuntimeError(f"{model}: the sink got {got} bytes, not {mib << 20}")
    res: dict[str, float] = parse(out["output"])
    if len(res) != 2:
        raise RuntimeError(f"{model}: the guest did not finish both transfers: {out['output'][-400:]}")
    mmio = out["stats"]["mmio"]
    res["nic_exits"] = sum(n for k, n in mmio.items() if k.startswith("ethoc") or k.endswith("virtio-net"))
    res["plic_exits"] = mmio.get("plic", 0)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=16)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/nic.py needs root (network namespaces)", file=sys.stderr)
        return 2
    from virtkit.network import control
    from virtkit.network.netns import Netns

    d = tempfile.mkdtemp(prefix="vkb")
    os.environ["VIRTKIT_NET_DIR"] = d
    env = dict(os.environ)
    tag = f"{os.getpid() % 10000}"
    ns = Netns(f"vkb{tag}")
    try:
        control.create("nicb")
        outside = ns.veth("eth0", f"vkb{tag}h", "10.78.0.1/24")
        control.request("nicb", "port_add", spec=f"host:{outside}", access=7)
        www = tempfile.mkdtemp(prefix="vkbw")
        with open(os.path.join(www, "blob"), "wb") as f:
            f.write(os.urandom(args.mib << 20))
        rows = {m: run(m, args.mib, "nicb", ns, env, www) for m in ("ethoc", "virtio")}
        shutil.rmtree(www, ignore_errors=True)
    finally:
        for row in control.list_switches():
            if row["running"]:
                control.stop(row["name"])
        ns.close()
        shutil.rmtree(d, ignore_errors=True)
    rates = {m: {k: round(args.mib / r[k], 2) for k in ("rx", "tx")} for m, r in rows.items()}
    if args.json:
        print(json.dumps({"mib": args.mib, "runs": rows, "mib_per_s": rates}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{args.mib} MiB over TCP, guest <-> namespace on a virtkit switch (MiB/s)")
    for c in ("NIC", "receive", "send", "NIC register exits", "per MiB", "PLIC exits"):
        t.add_column(c, justify="left" if c == "NIC" else "right")
    for m, r in rates.items():
        n = rows[m]["nic_exits"]
        t.add_row({"ethoc": "ethoc (emulated)", "virtio": "virtio-net (paravirtual)"}[m], f"{r['rx']:.1f}",
                  f"{r['tx']:.1f}", f"{n:,}", f"{n / (2 * args.mib):,.0f}", f"{rows[m]['plic_exits']:,}")
    Console(width=120).print(t)
    print(f"virtio-net / ethoc: receive {rates['virtio']['rx'] / rates['ethoc']['rx']:.1f}x, "
          f"send {rates['virtio']['tx'] / rates['ethoc']['tx']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
