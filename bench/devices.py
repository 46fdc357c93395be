"""Board and device benchmark: virtkit's riscv64-virt board vs ``qemu-system-riscv64 -M virt`` (TCG).

Both machines are given the same firmware, images and work in one run, and the median of
``--rounds`` runs (interleaved) is reported:

- ``opensbi``: OpenSBI fw_jump boots to its banner over the 16550 UART (about 3,400 MMIO
  accesses), hands over to a tiny S-mode payload, and that payload powers off through sifive_test.
  The time is measured from process start to exit.
- ``blk-read`` / ``blk-write`` (needs the default guest built, ``virtkit images build``): Linux
  boots and ``dd`` moves ``--blk-mib`` MiB between ``/dev/vda`` (virtio-blk, raw image) and
  ``/dev/null``. The guest measures the time itself from ``/proc/uptime`` (0.01 s resolution).

Usage: python bench/devices.py [--rounds 3] [--blk-mib 32] [--skip-linux] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

FW = Path("/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_jump.bin")
PAYLOAD = [0x001002B7, 0x00005337, 0x55530313, 0x0062A023, 0x0000006F]  # poweroff via sifive_test
PY = sys.executable


def payload(path: Path) -> Path:
    hdr = bytearray(64)
    struct.pack_into("<I", hdr, 0, 0x0400006F)
    struct.pack_into("<Q", hdr, 16, 1 << 20)
    hdr[48:56] = b"RISCV\0\0\0"
    hdr[56:60] = b"RSC\x05"
    path.write_bytes(bytes(hdr) + struct.pack(f"<{len(PAYLOAD)}I", *PAYLOAD))
    return path


def timed(argv: list[str], timeout: float = 3600) -> tuple[float, str]:
    t = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)
    dt = time.monotonic() - t
    if p.returncode not in (0,):
        raise RuntimeError(f"{argv[0]} exited {p.returncode}: {(p.stderr or p.stdout)[-500:]}")
    return dt, p.stdout


def bench_opensbi(rounds: int, tmp: Path) -> list[dict]:
    img = payload(tmp / "payload.Image")
    vk = [PY, "-m", "virtkit.cli", "run", "--bios", str(FW), "--kernel", str(img), "--mem", "128M", "--no-rng"]
    qm = ["qemu-system-riscv64", "-M", "virt", "-m", "128M", "-nographic", "-bios", str(FW), "-kernel", str(img)]
    timed(vk)  # warm the Numba cache
    v, vrun, q = [], [], []
    for _ in range(rounds):
        dt, out = timed([*vk, "--json"])
        v.append(dt)
        vrun.append(json.loads(out.strip().splitlines()[-1])["seconds"])
        q.append(timed(qm)[0])
    return [{"work": "OpenSBI banner + poweroff (process start to exit)", "unit": "s", "virtkit": statistics.median(v),
             "qemu": statistics.median(q), "lower_is_better": True},
            {"work": "  same, virtkit VM run only (no start-up) vs QEMU whole", "unit": "s",
             "virtkit": statistics.median(vrun), "qemu": statistics.median(q), "lower_is_better": True}]


SECONDS = re.compile(r"bench-seconds ([\d.]+) ([\d.]+)")


def guest_seconds(out: str) -> float:
    m = SECONDS.search(out)
    if not m:
        raise RuntimeError(f"guest printed no timing: {out[-800:]}")
    return float(m.group(2)) - float(m.group(1))


def bench_blk(rounds: int, tmp: Path, mib: int) -> list[dict]:
    from virtkit.images import default_guest, exec_append

    g = default_guest(progress=False)
    disk = tmp / "disk.raw"
    disk.write_bytes(b"\xa5" * (mib << 20))
    cmds = {
        "blk-read": f"dd if=/dev/vda of=/dev/null bs=64k count={mib * 16} 2>/dev/null",
        "blk-write": f"dd if=/dev/zero of=/dev/vda bs=64k count={mib * 16} conv=fsync 2>/dev/null",
    }
    rows = []
    for name, dd in cmds.items():
        cmd = f"a=$(cut -d' ' -f1 /proc/uptime); {dd}; b=$(cut -d' ' -f1 /proc/uptime); echo bench-seconds $a $b"
        vk = [PY, "-m", "virtkit.cli", "run", "--kernel", str(g.kernel), "--initrd", str(g.initrd), "--bios",
              str(g.firmware), "--mem", "256M", "--disk", str(disk), "--exec", cmd]
        qm = ["qemu-system-riscv64", "-M", "virt", "-m", "256M", "-nographic", "-bios", str(g.firmware),
              "-kernel", str(g.kernel), "-initrd", str(g.initrd), "-append", "console=ttyS0 " + exec_append(cmd),
              "-drive", f"file={disk},format=raw,if=none,id=d0", "-device", "virtio-blk-device,drive=d0"]
        v, q = [], []
        for _ in range(rounds):
            v.append(mib / guest_seconds(timed(vk)[1]))
            q.append(mib / guest_seconds(timed(qm)[1]))
        rows.append({"work": f"{name} {mib} MiB (dd bs=64k, guest-timed)", "unit": "MiB/s",
                     "virtkit": statistics.median(v), "qemu": statistics.median(q), "lower_is_better": False})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--blk-mib", type=int, default=32)
    ap.add_argument("--skip-linux", action="store_true", help="only the firmware workload")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows += bench_opensbi(args.rounds, tmp)
        if not args.skip_linux:
            try:
                rows += bench_blk(args.rounds, tmp, args.blk_mib)
            except Exception as err:  # report what ran; say why the rest did not
                print(f"blk benchmark skipped: {err}", file=sys.stderr)
    for r in rows:
        r["ratio"] = r["virtkit"] / r["qemu"] if r["lower_is_better"] else r["qemu"] / r["virtkit"]
    if args.json:
        print(json.dumps(rows))
        return 0
    t = Table(title=f"riscv64-virt board: virtkit vs QEMU TCG (median of {args.rounds})")
    for c in ("work", "unit", "virtkit", "qemu", "virtkit slower by"):
        t.add_column(c, justify="left" if c == "work" else "right")
    for r in rows:
        t.add_row(r["work"], r["unit"], f"{r['virtkit']:.2f}", f"{r['qemu']:.2f}", f"{r['ratio']:.1f}x")
    Console().print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
