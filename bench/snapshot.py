"""Snapshot benchmark: save and restore the same running Linux guest on virtkit and on QEMU, in one run.

Both boot the default guest (OpenSBI + Linux + busybox initramfs) with ``--mem`` of RAM to its shell,
then:

- **snapshot**: virtkit ``snapshot create`` (the VM pauses, RAM goes to a sparse file, it goes on) vs
  QEMU's QMP ``migrate`` to ``exec:cat > FILE`` (how ``virsh save`` and Proxmox's ``vmstate`` save a
  VM); time and size on disk;
- **restore to a responsive console**: a new process from the snapshot until the guest answers a line
  typed on its console: ``virtkit snapshot restore`` vs ``qemu-system-riscv64 -incoming 'exec:cat FILE'``;
- **restore to the first instruction inside a running process** (virtkit only: QEMU has no in-process
  restore of a whole machine short of ``loadvm`` on a qcow2 disk): ``restore_into`` on an existing
  machine of the same shape, memory verification off. Goal: at most 10 ms for 256 MiB.

    .venv/bin/python bench/snapshot.py [--mem 256M] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = b"virtkit:/# "
GOAL_MS = 10.0


class Console:
    """A child process whose console is its stdin/stdout."""

    def __init__(self, argv: list[str], env: dict | None = None) -> None:
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  env=env, start_new_session=True)
        os.set_blocking(self.p.stdout.fileno(), False)  # type: ignore[union-attr]
        self.out = bytearray()

    def wait_for(self, want: bytes, timeout: float = 300, since: int = 0) -> float:
        """Seconds since start when ``want`` appeared (after byte ``since`` of the output)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = os.read(self.p.stdout.fileno(), 65536)  # type: ignore[union-attr]
            except BlockingIOError:
                data = b""
            if data:
                self.out += data
                if want in self.out[since:]:
                    return time.monotonic() - self.t0
            elif self.p.poll() is not None:
                raise RuntimeError(f"{self.p.args[0]} exited: {bytes(self.out[-300:]).decode(errors='replace')}")
            else:
                time.sleep(0.002)
        raise RuntimeError(f"timed out waiting for {want!r}: {bytes(self.out[-300:]).decode(errors='replace')}")

    def responsive(self, timeout: float = 300) -> float:
        """Type ``echo`` lines until the guest answers one; seconds since start."""
        since = len(self.out)
        n = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n += 1
            self.p.stdin.write(f"echo ready-$((40+{n}))\n".encode())  # type: ignore[union-attr]
            self.p.stdin.flush()  # type: ignore[union-attr]
            try:
                return self.wait_for(f"ready-{40 + n}".encode(), 0.25, since)
            except RuntimeError as err:
                if "exited" in str(err):
                    raise
        raise RuntimeError("the guest never answered")

    def kill(self) -> None:
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except OSError:
            pass
        self.p.wait()


def qmp(sock_path: str, *cmds: dict) -> list[dict]:
    """Send QMP commands (after the capabilities handshake); the replies. Waits up to 2 s for a QEMU that
    has just started to create its socket."""
    s = socket.socket(socket.AF_UNIX)
    for _ in range(200):
        try:
            s.connect(sock_path)
            break
        except OSError:
            time.sleep(0.01)
    else:
        s.connect(sock_path)  # the error, if it still fails
    f = s.makefile("rwb")
    f.readline()  # greeting
    out = []
    for c in ({"execute": "qmp_capabilities"}, *cmds):
        f.write(json.dumps(c).encode() + b"\n")
        f.flush()
        while True:
            msg = json.loads(f.readline())
            if "return" in msg or "error" in msg:
                out.append(msg)
                break
    s.close()
    return out[1:]


def du(path: Path) -> int:
    """Bytes allocated on disk under ``path``."""
    if path.is_file():
        return path.stat().st_blocks * 512
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def bench_qemu(guest, mem: str, work: Path) -> dict:
    from virtkit.images.qemu import qemu_argv

    argv = qemu_argv(guest.kernel, guest.initrd, "console=ttyS0", guest.firmware, memory=mem)
    qsock = str(work / "qmp.sock")
    c = Console([*argv, "-qmp", f"unix:{qsock},server=on,wait=off"])
    try:
        c.wait_for(PROMPT)
        c.responsive()
        state = work / "qemu.state"
        t0 = time.monotonic()
        qmp(qsock, {"execute": "migrate", "arguments": {"uri": f"exec:cat > {state}"}})
        while True:
            st = qmp(qsock, {"execute": "query-migrate"})[0]["return"]
            if st.get("status") in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.002)
        save_s = time.monotonic() - t0
        if st["status"] != "completed":
            raise RuntimeError(f"QEMU migrate to file: {st}")
        downtime = st.get("downtime", save_s * 1000) / 1000  # QEMU runs until the last pass
    finally:
        c.kill()
    r = Console([*argv, "-incoming", f"exec:cat {state}"])
    try:
        ready = r.responsive()
    finally:
        r.kill()
    return {"save_s": save_s, "paused_s": downtime, "size": du(state), "restore_console_s": ready}


def bench_virtkit(guest, mem: str, work: Path, rounds: int) -> dict:
    env = dict(os.environ, VIRTKIT_RUN_DIR=str(work / "run"), VIRTKIT_SNAPSHOTS=str(work / "snaps"))
    vk = [sys.executable, "-m", "virtkit.cli"]
    c = Console([*vk, "run", "--name", "bench-snap", "--mem", mem, "--kernel", str(guest.kernel), "--initrd",
                 str(guest.initrd), "--bios", str(guest.firmware), "--append", "console=ttyS0"], env)
    try:
        c.wait_for(PROMPT)
        c.responsive()
        t0 = time.monotonic()
        p = subprocess.run([*vk, "snapshot", "create", "bench-snap", "s1", "--json"], env=env, capture_output=True,
                           text=True)
        save_s = time.monotonic() - t0
        if p.returncode:
            raise RuntimeError(f"virtkit snapshot create: {p.stderr}")
        reply = json.loads(p.stdout)
    finally:
        c.kill()
    bundle = work / "snaps" / "s1"
    r = Console([*vk, "snapshot", "restore", str(bundle), "--name", "bench-snap2", "--no-verify"], env)
    try:
        ready = r.responsive()
    finally:
        r.kill()
    # in-process: a machine of the same shape, restored in place again and again
    from virtkit.machine import snapshot
    from virtkit.machine.builder import Builder
    from virtkit.machine.config import MachineConfig

    man = snapshot.read_manifest(bundle)
    cfg = MachineConfig.from_dict(man["machine"])
    cfg.name = "bench-inproc"
    m = Builder(cfg, restoring=True).build()
    times = []
    try:
        for _ in range(max(rounds, 5)):
            times.append(snapshot.restore_into(m, bundle, verify_memory=False))
    finally:
        m.vm.close()
    return {"save_s": save_s, "paused_s": reply["paused_seconds"], "size": du(bundle),
            "restore_console_s": ready, "restore_inproc_ms": statistics.median(times) * 1000,
            "restore_inproc_samples_ms": [t * 1000 for t in times]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mem", default="256M", help="guest RAM on both peers (default 256M)")
    ap.add_argument("--rounds", type=int, default=3, help="repetitions (median reported)")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    args = ap.parse_args(argv)
    if shutil.which("qemu-system-riscv64") is None:
        print("bench/snapshot.py needs qemu-system-riscv64 (Debian qemu-system-misc)", file=sys.stderr)
        return 1
    from virtkit.images import default_guest

    guest = default_guest(progress=sys.stderr.isatty())
    rows: dict[str, list[dict]] = {"virtkit": [], "qemu": []}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="vk-bench-snap-") as tmp:
            rows["virtkit"].append(bench_virtkit(guest, args.mem, Path(tmp), args.rounds))
        with tempfile.TemporaryDirectory(prefix="vk-bench-snap-") as tmp:
            rows["qemu"].append(bench_qemu(guest, args.mem, Path(tmp)))
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0] if not m.endswith("samples_ms")}
           for k, v in rows.items()}
    result = {"mem": args.mem, "rounds": args.rounds, "median": med, "load_average": os.getloadavg()[0],
              "goal_inproc_ms": GOAL_MS, "goal_met": med["virtkit"]["restore_inproc_ms"] <= GOAL_MS}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    from rich.console import Console as RichConsole
    from rich.table import Table

    v, q = med["virtkit"], med["qemu"]
    t = Table(title=f"snapshot and restore of a running Linux guest, {args.mem} RAM, median of {args.rounds}")
    for col in ("measure", "virtkit", "QEMU", "virtkit/QEMU"):
        t.add_column(col, justify="left" if col == "measure" else "right")
    t.add_row("snapshot (CLI / QMP round trip), s", f"{v['save_s']:.3f}", f"{q['save_s']:.3f}",
              f"{v['save_s'] / q['save_s']:.2f}")
    t.add_row("  of which the guest is paused, s", f"{v['paused_s']:.3f}", f"{q['paused_s']:.3f}",
              f"{v['paused_s'] / q['paused_s']:.2f}" if q["paused_s"] else "-")  # QEMU reports whole ms
    t.add_row("snapshot size on disk, MiB", f"{v['size'] / 2**20:.1f}", f"{q['size'] / 2**20:.1f}",
              f"{v['size'] / q['size']:.2f}")
    t.add_row("new process to a responsive console, s", f"{v['restore_console_s']:.3f}",
              f"{q['restore_console_s']:.3f}", f"{v['restore_console_s'] / q['restore_console_s']:.2f}")
    t.add_row("in a running process, to the first instruction, ms", f"{v['restore_inproc_ms']:.2f}", "-", "-")
    RichConsole(width=max(RichConsole().width, 100)).print(t)
    print(f"goal: in-process restore of {args.mem} <= {GOAL_MS:.0f} ms: "
          f"{'met' if result['goal_met'] else 'not met'}; load average {result['load_average']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
