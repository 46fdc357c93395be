"""FPU benchmark: floating-point heavy bare-metal kernels on virtkit's RISC-V engine and on QEMU TCG.

The kernel (``bench/fpu/kernel.c``: fused multiply-add matrix product, square-root row norms,
divisions, conversions) is built in three variants: double precision in RNE (virtkit's
host-FPU fast path), double in RUP (always the integer soft-float) and single in RNE. The same
ELF runs on virtkit (in this process, ``baremetal.run_elf``, after a warm-up run so Numba's cache
load is not counted) and on ``qemu-system-riscv64 -M spike -bios none``; both must print the same
checksum of result bits and fflags. A second table times ``fp_exec`` alone per instruction
(ns per call from a compiled loop), fast path against soft-float.

    .venv/bin/python bench/fpu.py [--iters N] [--runs R] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from numba import njit
from rich.console import Console
from rich.table import Table

from virtkit.engines.riscv.fpu import fp_exec
from virtkit.images.demo import _cache_root, build_baremetal

HERE = Path(__file__).resolve().parent
QEMU = "qemu-system-riscv64"
VARIANTS = {"double-rne": ("double", 0), "double-rup": ("double", 3), "single-rne": ("float", 0)}
CHECKSUM = re.compile(r"checksum ([0-9a-f]{16})")


def build(name: str, iters: int) -> Path:
    """Compile one kernel variant (cached)."""
    real, rm = VARIANTS[name]
    out = _cache_root() / "bench" / f"fpu-{name}-{iters}.elf"
    return build_baremetal(
        [HERE / "fpu" / "kernel.c"], out, defines=[f"REAL={real}", f"RM={rm}", f"ITERS={iters}", f'NAME="{name}"']
    )


def run_virtkit(elf: Path) -> tuple[str, int, float]:
    """(checksum, instructions, seconds) of one in-process virtkit run."""
    from virtkit.engines.riscv.baremetal import run_elf

    res = run_elf(elf, console=lambda b: None, max_instructions=10_000_000_000)
    m = CHECKSUM.search(res.output.decode(errors="replace"))
    return (m.group(1) if m and res.exit_code == 0 else "?"), res.instructions, res.seconds


def run_qemu(elf: Path) -> tuple[str, float]:
    """(checksum, wall seconds) of one QEMU run."""
    cmd = [
        QEMU,
        "-M",
        "spike",
        "-bios",
        "none",
        "-kernel",
        str(elf),
        "-display",
        "none",
        "-serial",
        "stdio",
        "-monitor",
        "none",
    ]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, timeout=600, stdin=subprocess.DEVNULL)
    dt = time.perf_counter() - t0
    m = CHECKSUM.search(p.stdout.decode(errors="replace"))
    return (m.group(1) if m and p.returncode == 0 else "?"), dt


# ------------------------------------------------------------------------------------------------
# fp_exec alone


def _enc(f5: int, fmt: int, rs2: int = 2, rm: int = 0) -> int:
    return ((f5 << 2 | fmt) << 25) | (rs2 << 20) | (1 << 15) | (rm << 12) | (4 << 7) | 0x53


def _enc4(fmt: int, rm: int = 0) -> int:
    return (3 << 27) | (fmt << 25) | (2 << 20) | (1 << 15) | (rm << 12) | (4 << 7) | 0x43


MICRO = {
    "fadd.d": _enc(0, 1),
    "fmul.d": _enc(2, 1),
    "fdiv.d": _enc(3, 1),
    "fsqrt.d": _enc(0x0B, 1, rs2=0),
    "fmadd.d": _enc4(1),
    "fadd.s": _enc(0, 0),
    "fmul.s": _enc(2, 0),
    "fdiv.s": _enc(3, 0),
    "fmadd.s": _enc4(0),
    "feq.d": _enc(0x14, 1, rm=2),
    "fcvt.l.d": _enc(0x18, 1, rs2=2),
}


@njit(cache=True, nogil=True)
def _micro_loop(insn: int, frm: int, n: int, ops: np.ndarray) -> int:
    """Call fp_exec n times over a table of operands; return the OR of the flags."""
    x = np.zeros(32, np.int64)
    f = np.zeros(32, np.int64)
    acc = 0
    m = ops.shape[0] - 3
    for i in range(n):
        j = i % m
        f[1] = ops[j]
        f[2] = ops[j + 1]
        f[3] = ops[j + 2]
        acc |= fp_exec(insn, frm, x, f)
    return acc


def micro(n: int = 1_000_000) -> list[dict]:
    """ns per fp_exec call, in RNE (fast path for doubles) and RUP (soft-float), CPU time."""
    rng = np.random.default_rng(7)
    d = rng.uniform(0.5, 4.0, 1024)
    ops_d = d.view(np.int64).copy()
    ops_s = (d.astype(np.float32).view(np.uint32).astype(np.int64) | np.int64(-(1 << 32))).copy()
    rows = []
    for name, insn in MICRO.items():
        ops = ops_s if name.endswith(".s") else ops_d
        row = {"instruction": name}
        for label, rm in (("rne_ns", 0), ("rup_ns", 3)):
            insn_dyn = (insn & ~(7 << 12)) | ((2 if name == "feq.d" else 7) << 12)
            _micro_loop(insn_dyn, rm, 1000, ops)
            t0 = time.process_time()
            _micro_loop(insn_dyn, rm, n, ops)
            row[label] = (time.process_time() - t0) / n * 1e9
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run both peers on every variant and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=30, help="kernel iterations (about 0.45 M instructions each)")
    ap.add_argument("--runs", type=int, default=3, help="runs per peer; the median is reported")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    if args.iters <= 0 or args.runs <= 0:
        print("--iters and --runs must be positive", file=sys.stderr)
        return 2
    if shutil.which(QEMU) is None:
        print(f"{QEMU} not found (Debian package qemu-system-misc)", file=sys.stderr)
        return 2
    run_virtkit(build("double-rne", 1))  # warm-up: Numba cache load / compile
    rows = []
    for name in VARIANTS:
        elf = build(name, args.iters)
        vk = [run_virtkit(elf) for _ in range(args.runs)]
        qe = [run_qemu(elf) for _ in range(args.runs)]
        vs = statistics.median(r[2] for r in vk)
        qs = statistics.median(r[1] for r in qe)
        rows.append(
            {
                "workload": name,
                "instructions": vk[0][1],
                "virtkit_s": vs,
                "mips": vk[0][1] / vs / 1e6,
                "qemu_s": qs,
                "ratio": vs / qs,
                "checksum_match": vk[0][0] == qe[0][0] != "?",
            }
        )
    mrows = micro()
    if args.json:
        print(json.dumps({"kernels": rows, "fp_exec": mrows}, indent=2))
        return 0 if all(r["checksum_match"] for r in rows) else 1
    con = Console(width=120)
    t = Table(title=f"FP kernels: virtkit vs QEMU TCG (median of {args.runs})")
    cols = ("workload", "instructions", "virtkit s", "virtkit MIPS", "QEMU s (wall)", "virtkit/QEMU", "same result")
    for col in cols:
        t.add_column(col, justify="left" if col == "workload" else "right")
    for r in rows:
        t.add_row(
            r["workload"],
            f"{r['instructions']:,}",
            f"{r['virtkit_s']:.3f}",
            f"{r['mips']:.1f}",
            f"{r['qemu_s']:.3f}",
            f"{r['ratio']:.1f}x",
            "yes" if r["checksum_match"] else "NO",
        )
    con.print(t)
    m = Table(title="fp_exec alone: ns per call (CPU time, compiled loop)")
    for col in ("instruction", "RNE ns", "RUP ns (soft-float)", "RUP/RNE"):
        m.add_column(col, justify="left" if col == "instruction" else "right")
    for r in mrows:
        m.add_row(r["instruction"], f"{r['rne_ns']:.1f}", f"{r['rup_ns']:.1f}", f"{r['rup_ns'] / r['rne_ns']:.2f}")
    con.print(m)
    return 0 if all(r["checksum_match"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
