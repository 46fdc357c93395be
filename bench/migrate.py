"""Live-migration benchmark: the same running Linux guest migrated by virtkit and by QEMU, in one run.

Both peers boot the default guest (OpenSBI + Linux + busybox initramfs, ``--mem`` of RAM) to its shell on a
source process, start a target process waiting for the migration on 127.0.0.1, start the same dirtying
workload in the guest (a shell loop copying a ``--dirty-mib`` file of non-zero bytes over another in the
initramfs's tmpfs, that is guest RAM, as fast as the guest copies memory),
and migrate at each bandwidth cap (``--bandwidth``: 128 MiB/s, unlimited, and 16 MiB/s, a link the guest's
dirtying outruns: QEMU with its defaults does not converge there, virtkit's auto-converge throttles the vCPU):

- virtkit: ``virtkit run --incoming`` and ``virtkit migrate --json`` (total time and downtime as it reports);
- QEMU: ``-incoming tcp:...`` and QMP ``migrate`` with ``max-bandwidth`` and ``downtime-limit`` (the same goal
  as virtkit's ``--downtime``, ``--downtime-ms``, default QEMU's 300; QEMU's default: no auto-converge);
  ``query-migrate``'s ``total-time`` and ``downtime``. QEMU gets ``--qemu-timeout``
  seconds (default 60) before the run is counted as not finishing.

With ``--postcopy`` both peers switch to post-copy after the first pass (virtkit ``migrate --postcopy``;
QEMU: the ``postcopy-ram`` capability on both ends and ``migrate-start-postcopy`` once the first pass is
done, as libvirt's ``--postcopy-after-precopy``), so the rows compare post-copy with post-copy.

After each migration the target's console is checked to answer (the guest runs there).

    .venv/bin/python bench/migrate.py [--mem 256M] [--dirty-mib 32] [--downtime-ms 300] \\
        [--bandwidth 128M,0,16M] [--postcopy] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from snapshot import PROMPT, Console, qmp  # noqa: E402

WORKLOAD = ("mkdir -p /tmp/w; yes 0123456789abcdef | head -c {nbytes} > /tmp/w/src; "
            "(while :; do cp /tmp/w/src /tmp/w/f; done) &")


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def answers(c: Console) -> bool:
    """Whether the migrated guest's console answers within a minute (recorded, not fatal)."""
    try:
        c.responsive(60)
        return True
    except RuntimeError:
        return False


def start_workload(c: Console, mib: int) -> None:
    c.p.stdin.write((WORKLOAD.format(nbytes=mib << 20) + "\n").encode())  # type: ignore[union-attr]
    c.p.stdin.flush()  # type: ignore[union-attr]
    c.responsive(300)  # the source file is written (the prompt answers after it)
    time.sleep(1.0)  # let the copy loop reach its steady state


def bench_qemu(guest, mem: str, mib: int, bandwidth: int | None, timeout: float, work: Path,
               downtime_ms: int, postcopy: bool = False) -> dict:
    from virtkit.images.qemu import qemu_argv

    argv = qemu_argv(guest.kernel, guest.initrd, "console=ttyS0", guest.firmware, memory=mem)
    qsock, dsock = str(work / "qmp.sock"), str(work / "qmp-dst.sock")
    port = free_port()
    src = Console([*argv, "-qmp", f"unix:{qsock},server=on,wait=off"])
    dst = Console([*argv, "-qmp", f"unix:{dsock},server=on,wait=off", "-incoming",
                   "defer" if postcopy else f"tcp:127.0.0.1:{port}"])
    caps = {"execute": "migrate-set-capabilities",
            "arguments": {"capabilities": [{"capability": "postcopy-ram", "state": True}]}}
    try:
        if postcopy:
            for _ in range(100):
                if os.path.exists(dsock):
                    break
                time.sleep(0.1)
            qmp(dsock, caps, {"execute": "migrate-incoming", "arguments": {"uri": f"tcp:127.0.0.1:{port}"}})
        src.wait_for(PROMPT)
        src.responsive()
        start_workload(src, mib)
        params = {"max-bandwidth": bandwidth or (1 << 40), "downtime-limit": downtime_ms}
        if postcopy:
            params["max-postcopy-bandwidth"] = bandwidth or 0
            qmp(qsock, caps)
        qmp(qsock, {"execute": "migrate-set-parameters", "arguments": params},
            {"execute": "migrate", "arguments": {"uri": f"tcp:127.0.0.1:{port}"}})
        deadline = time.monotonic() + timeout
        st: dict = {}
        switched = False
        while time.monotonic() < deadline:
            st = qmp(qsock, {"execute": "query-migrate"})[0]["return"]
            if st.get("status") in ("completed", "failed", "cancelled"):
                break
            if postcopy and not switched and st.get("ram", {}).get("dirty-sync-count", 0) >= 2:
                qmp(qsock, {"execute": "migrate-start-postcopy"})  # the first pass is done
                switched = True
            time.sleep(0.05)
        if st.get("status") != "completed":
            qmp(qsock, {"execute": "migrate_cancel"})
            return {"finished": False, "status": st.get("status"), "total_s": None, "downtime_ms": None,
                    "mib_sent": st.get("ram", {}).get("transferred", 0) / 2**20}
        return {"finished": True, "target_answers": answers(dst), "total_s": st["total-time"] / 1000,
                "downtime_ms": float(st["downtime"]), "mib_sent": st["ram"]["transferred"] / 2**20}
    finally:
        src.kill()
        dst.kill()


def bench_virtkit(guest, mem: str, mib: int, bandwidth: int | None, timeout: float, work: Path,
                  downtime_ms: int, postcopy: bool = False) -> dict:
    env = dict(os.environ, VIRTKIT_RUN_DIR=str(work / "run"))
    vk = [sys.executable, "-m", "virtkit.cli"]
    port = free_port()
    src = Console([*vk, "run", "--name", "mig-src", "--mem", mem, "--kernel", str(guest.kernel), "--initrd",
                   str(guest.initrd), "--bios", str(guest.firmware), "--append", "console=ttyS0"], env)
    dst = Console([*vk, "run", "--incoming", f"tcp:127.0.0.1:{port}", "--token", "benchtoken", "--name",
                   "mig-dst"], env)
    try:
        src.wait_for(PROMPT)
        src.responsive()
        start_workload(src, mib)
        cmd = [*vk, "migrate", "mig-src", f"tcp:127.0.0.1:{port}", "--token", "benchtoken", "--json",
               "--downtime", f"{downtime_ms}ms"]
        if bandwidth:
            cmd += ["--bandwidth", str(bandwidth // (1 << 20))]
        if postcopy:
            cmd.append("--postcopy")
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout + 60)
        st = json.loads(p.stdout) if p.stdout.strip() else {"state": "failed", "error": p.stderr}
        if os.environ.get("VK_BENCH_LOG"):
            print("\n".join(st.get("log", [])), file=sys.stderr)
        if st.get("state") != "completed":
            return {"finished": False, "status": st.get("error"), "total_s": None, "downtime_ms": None,
                    "mib_sent": st.get("bytes_sent", 0) / 2**20}
        return {"finished": True, "target_answers": answers(dst), "total_s": st["total_seconds"],
                "downtime_ms": st["downtime"] * 1000, "mib_sent": st["bytes_sent"] / 2**20,
                "rounds": st["round"], "throttle": st["throttle"], "fetched": st.get("postcopy_requests", 0)}
    finally:
        src.kill()
        dst.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mem", default="256M", help="guest RAM (default 256M)")
    ap.add_argument("--downtime-ms", type=int, default=300,
                    help="the downtime goal given to both peers (default 300, QEMU's default)")
    ap.add_argument("--dirty-mib", type=int, default=32, help="MiB the guest rewrites in a loop (default 32)")
    ap.add_argument("--bandwidth", default="128M,0,16M", help="comma-separated caps in MiB/s (0 = unlimited)")
    ap.add_argument("--qemu-timeout", type=float, default=60.0, help="seconds QEMU gets to finish (default 60)")
    ap.add_argument("--postcopy", action="store_true", help="both peers switch to post-copy after the first pass")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    args = ap.parse_args(argv)
    if shutil.which("qemu-system-riscv64") is None:
        print("bench/migrate.py needs qemu-system-riscv64 (Debian qemu-system-misc)", file=sys.stderr)
        return 1
    from virtkit.images import default_guest
    from virtkit.units import parse_size

    guest = default_guest(progress=sys.stderr.isatty())
    caps = [parse_size(c, what="--bandwidth", default_unit="M") or None for c in args.bandwidth.split(",")]
    rows = []
    for cap in caps:
        with tempfile.TemporaryDirectory(prefix="vk-bench-mig-") as tmp:
            v = bench_virtkit(guest, args.mem, args.dirty_mib, cap, args.qemu_timeout, Path(tmp), args.downtime_ms,
                              args.postcopy)
        with tempfile.TemporaryDirectory(prefix="vk-bench-mig-") as tmp:
            q = bench_qemu(guest, args.mem, args.dirty_mib, cap, args.qemu_timeout, Path(tmp), args.downtime_ms,
                           args.postcopy)
        rows.append({"bandwidth": cap, "virtkit": v, "qemu": q})
    result = {"mem": args.mem, "dirty_mib": args.dirty_mib, "postcopy": args.postcopy,
              "downtime_goal_ms": args.downtime_ms, "rows": rows,
              "load_average": os.getloadavg()[0]}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    from rich.console import Console as RichConsole
    from rich.table import Table

    t = Table(title=f"{'post-copy' if args.postcopy else 'live'} migration of a {args.mem} Linux guest rewriting "
              f"{args.dirty_mib} MiB of tmpfs in a loop, downtime goal {args.downtime_ms} ms")
    for col in ("link cap", "peer", "finished", "target answers", "total s", "downtime ms", "MiB sent", "notes"):
        t.add_column(col, justify="left" if col in ("peer", "notes", "link cap") else "right")
    for r in rows:
        cap = f"{r['bandwidth'] // 2**20} MiB/s" if r["bandwidth"] else "unlimited"
        for peer in ("virtkit", "qemu"):
            x = r[peer]
            notes = (f"{x.get('rounds')} rounds, throttle {x.get('throttle', 0):.0%}"
                     + (f", {x.get('fetched')} pages on demand" if args.postcopy else "")
                     if peer == "virtkit" and x["finished"] else ("" if x["finished"] else str(x.get("status"))[:40]))
            t.add_row(cap, peer, "yes" if x["finished"] else "no",
                      {True: "yes", False: "NO"}.get(x.get("target_answers"), "-"),
                      "-" if x["total_s"] is None else f"{x['total_s']:.2f}",
                      "-" if x["downtime_ms"] is None else f"{x['downtime_ms']:.0f}", f"{x['mib_sent']:.0f}", notes)
    RichConsole(width=max(RichConsole().width, 110)).print(t)
    print(f"load average {result['load_average']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
