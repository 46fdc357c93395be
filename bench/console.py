"""Console benchmark: an emulated device against paravirtual ones doing the same job, on virtkit and QEMU.

The guest (the default Linux 6.1 + busybox initramfs) writes ``--kib`` KiB to each of its consoles and
times it with busybox ``time``:

- ``ttyS0``: the emulated NS16550A UART (one register store per byte, interrupt-driven);
- ``hvc0``: the SBI console (legacy ``console_putchar``, one SBI call per byte): on virtkit with
  ``--bios builtin`` a hypercall into the VMM (served inside the core), under OpenSBI (virtkit's
  default firmware and QEMU's) a trap into firmware that writes the UART;
- ``hvc1``: virtio-console (buffers handed over through a virtqueue).

A second table takes Linux out of the way: a bare-metal S-mode program (``bench/guest/consoles.c``) writes
64 KiB through the UART's registers, through SBI legacy ``console_putchar`` (a call per byte) and through
SBI DBCN ``console_write`` (a call per 4 KiB buffer, where the SBI has it: virtkit's builtin SBI does,
Debian's OpenSBI 1.1 does not), on virtkit ``--bios builtin`` and on QEMU with OpenSBI.

    .venv/bin/python bench/console.py [--kib 512] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from virtkit.images import default_guest
from virtkit.images.initramfs import exec_command_line
from virtkit.images.qemu import qemu_argv

DEVICES = ("ttyS0", "hvc0", "hvc1")


def guest_command(kib: int) -> str:
    """Write ``kib`` KiB to each console, printing ``dev NAME`` and busybox time's report for each."""
    return (f"for d in {' '.join(DEVICES)}; do echo dev $d; time sh -c \"head -c {kib * 1024} /dev/zero | "
            f"tr '\\\\0' x > /dev/$d\"; done 2>&1")


def parse(text: str) -> dict[str, float]:
    """Seconds per device from the guest's output."""
    out: dict[str, float] = {}
    for dev, mins, secs in re.findall(r"dev (\w+)\r?\n(?:x*)real\s+(\d+)m\s*([\d.]+)s", text.replace("x" * 64, "")):
        out[dev] = int(mins) * 60 + float(secs)
    return out


def run_virtkit(cmd: str, bios: str) -> dict[str, float]:
    p = subprocess.run([sys.executable, "-m", "virtkit.cli", "run", "--bios", bios, "--virtio-console", "--json",
                        "--exec", cmd, "--timeout", "600"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return parse(json.loads(p.stdout)["output"])


def run_qemu(cmd: str) -> dict[str, float]:
    g = default_guest(progress=False)
    argv = qemu_argv(g.kernel, g.initrd, f"console=ttyS0 {exec_command_line(cmd)}", g.firmware, memory="128M")
    argv += ["-chardev", "null,id=vc", "-device", "virtio-serial-device", "-device", "virtconsole,chardev=vc"]
    p = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    return parse(p.stdout)


GUEST = Path(__file__).resolve().parent / "guest"
LINK = Path(__file__).resolve().parent.parent / "tests" / "sbi" / "link.ld"
FW = "/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_jump.bin"


def bare_metal() -> dict[str, dict[str, float]]:
    """MiB/s per method of the bare-metal S-mode program, on virtkit (builtin SBI) and QEMU (OpenSBI)."""
    out = Path(tempfile.mkdtemp(prefix="vkcons")) / "consoles.elf"
    subprocess.run(["riscv64-linux-gnu-gcc", "-march=rv64gc", "-mabi=lp64d", "-mcmodel=medany", "-O2",
                    "-ffreestanding", "-nostdlib", "-nostartfiles", "-fno-pic", "-static", "-Wl,--no-relax",
                    "-Wl,--build-id=none", "-T", str(LINK), str(GUEST / "start.S"), str(GUEST / "consoles.c"),
                    "-o", str(out)], check=True, capture_output=True)
    runs = {
        "virtkit --bios builtin": [sys.executable, "-m", "virtkit.cli", "run", "--bios", "builtin", "--kernel",
                                   str(out), "--mem", "64M", "--timeout", "120"],
        "qemu-system-riscv64 (OpenSBI)": ["qemu-system-riscv64", "-M", "virt", "-m", "64M", "-bios", FW, "-kernel",
                                          str(out), "-nographic", "-monitor", "none"],
    }
    res: dict[str, dict[str, float]] = {}
    for name, argv in runs.items():
        p = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
        res[name] = {m: int(n) / (1 << 20) / (int(t) / 10e6)
                     for m, n, t in re.findall(r"^RESULT (\S+) (\d+) (\d+)", p.stdout, re.M)}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kib", type=int, default=512)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    cmd = guest_command(args.kib)
    rows = {"virtkit --bios builtin": run_virtkit(cmd, "builtin"), "virtkit (OpenSBI)": run_virtkit(cmd, "default"),
            "qemu-system-riscv64 (OpenSBI)": run_qemu(cmd)}
    bm = bare_metal()
    if args.json:
        print(json.dumps({"kib": args.kib, "seconds": rows, "bare_metal_mib_per_s": bm}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{args.kib} KiB written to each console (guest-timed, MiB/s)")
    t.add_column("")
    for d in DEVICES:
        t.add_column(d, justify="right")
    q = rows["qemu-system-riscv64 (OpenSBI)"]
    for name, r in rows.items():
        cells = []
        for d in DEVICES:
            s = r.get(d)
            if s is None:
                cells.append("-")
                continue
            rate = args.kib / 1024 / max(s, 0.005)
            ratio = f" ({q[d] / max(s, 0.005):.2f}x QEMU)" if d in q and name != "qemu-system-riscv64 (OpenSBI)" else ""
            cells.append(f"{rate:.1f}{ratio}")
        t.add_row(name, *cells)
    Console(width=140).print(t)
    b = Table(title="bare-metal S-mode program, 64 KiB per method (MiB/s)")
    methods = ("uart16550", "sbi-putchar", "sbi-dbcn")
    b.add_column("")
    for m in methods:
        b.add_column(m, justify="right")
    for name, r in bm.items():
        b.add_row(name, *[f"{r[m]:.2f}" if m in r else "not offered" for m in methods])
    Console(width=140).print(b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
