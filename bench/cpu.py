"""CPU benchmark: CPU-bound bare-metal workloads on virtkit's RISC-V engine and on QEMU TCG, in one run.

Each workload (C sources in ``bench/cpu/``: CRC-32, SHA-256, quicksort, integer matrix multiply, a
bytecode interpreter, a double-precision kernel) is compiled once with the cross compiler (-O2) and
the same ELF runs on virtkit (in this process, ``baremetal.run_elf``) and on
``qemu-system-riscv64 -M spike -bios none``. Both must print the same checksum. The table shows
instructions retired (virtkit's counter), virtkit's time and MIPS, QEMU's wall time and the ratio.
virtkit's Numba compile / cache-load time is measured separately (a first tiny run) and is not part
of any workload time. Goal (from the issue): >= 100 MIPS and <= 3x QEMU's wall time.

    .venv/bin/python bench/cpu.py [--scale F] [--only crc32,qsort] [--micro] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from virtkit.errors import VirtkitError
from virtkit.images.demo import _cache_root, build_baremetal, build_demo

BENCH_DIR = Path(__file__).resolve().parent / "cpu"
QEMU = "qemu-system-riscv64"
# iterations per workload: roughly 20-70 million instructions each
WORKLOADS = {"crc32": 100, "sha256": 40, "qsort": 20, "matmul": 30, "interp": 20, "dgemm": 30}
# --micro: one instruction kind per program (bench/cpu/micro.c), 16 per loop iteration
MICRO = ["add", "ld", "sd", "branch", "mul", "divu", "c.addi", "csrr", "amoadd.d", "fadd.d", "fmul.d", "fmadd.d",
         "fdiv.d", "fld"]
MICRO_ITERS = 300  # x 1000 loop iterations x 16 instructions = 4.8 M instructions of the kind
GOAL_MIPS = 100.0
GOAL_RATIO = 3.0
CHECKSUM = re.compile(r"(\w+) checksum ([0-9a-f]{16})")


@dataclass
class Row:
    """One workload's measurements on both peers."""

    workload: str
    iterations: int
    instructions: int = 0
    virtkit_s: float = 0.0
    mips: float = 0.0
    qemu_s: float = 0.0
    ratio: float = 0.0
    virtkit_cpu_s: float = 0.0
    qemu_cpu_s: float = 0.0
    cpu_mips: float = 0.0
    cpu_ratio: float = 0.0
    virtkit_checksum: str = ""
    qemu_checksum: str = ""
    native: float = 0.0  # share of the instructions run as JIT-compiled native code
    error: str = ""

    @property
    def ok(self) -> bool:
        """Both peers ran and agree."""
        return not self.error and self.virtkit_checksum != "" and self.virtkit_checksum == self.qemu_checksum


def build(name: str, iterations: int) -> Path:
    """Compile one workload with its iteration count into the cache."""
    out = _cache_root() / "bench-cpu" / f"{name}-{iterations}.elf"
    return build_baremetal([BENCH_DIR / f"{name}.c"], out, opt="-O2", defines=[f"ITERS={iterations}"])


def build_micro(kind: int, iterations: int) -> Path:
    """Compile the micro-benchmark for one instruction kind."""
    out = _cache_root() / "bench-cpu" / f"micro{kind}-{iterations}.elf"
    return build_baremetal([BENCH_DIR / "micro.c"], out, opt="-O2", defines=[f"ITERS={iterations}", f"KIND={kind}"])


def measure_micro() -> list[dict]:
    """virtkit's ns per instruction for each kind (a profile of the engine's per-instruction cost)."""
    out = []
    for kind, name in enumerate(MICRO):
        _, insns, vs, vc = run_virtkit(build_micro(kind, MICRO_ITERS))
        out.append({"instruction": name, "instructions": insns, "virtkit_ns": vs / insns * 1e9,
                    "virtkit_mips": insns / vs / 1e6, "virtkit_cpu_ns": vc / insns * 1e9})
    return out


def print_micro(rows: list[dict]) -> None:
    """Rich table of the per-instruction costs, relative to a plain add."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title="virtkit instruction cost: 16 x the same instruction per loop iteration (+3 loop instructions)")
    for col in ("instruction", "instructions", "ns/insn (wall)", "MIPS (wall)", "ns/insn (CPU)", "x add (CPU)"):
        t.add_column(col, justify="left" if col == "instruction" else "right")
    base = rows[0]["virtkit_cpu_ns"] if rows and rows[0]["virtkit_cpu_ns"] else 1.0
    for r in rows:
        t.add_row(r["instruction"], f"{r['instructions']:,}", f"{r['virtkit_ns']:.1f}", f"{r['virtkit_mips']:.1f}",
                  f"{r['virtkit_cpu_ns']:.1f}", f"{r['virtkit_cpu_ns'] / base:.1f}")
    Console(width=max(120, Console().width)).print(t)


def checksum_of(text: str) -> str:
    """The checksum a workload printed, '' if none."""
    m = CHECKSUM.search(text)
    return m.group(2) if m else ""


def engine_load_seconds() -> float:
    """Import the engine, run the demo once and start the JIT's translator process: the engine's load time
    (core cache load, translator start-up), kept out of the workloads."""
    t0 = time.perf_counter()
    from virtkit.engines.riscv.baremetal import run_elf

    run_elf(build_demo(), console=lambda b: None, max_instructions=50_000_000)
    from virtkit.engines.riscv.jitworker import warm_up

    warm_up()  # the JIT's translator process has imported LLVM (part of the engine's start, like the core)
    return time.perf_counter() - t0


def run_virtkit(elf: Path, jit: int | None = None) -> tuple[str, int, float, float, float]:
    """Run on virtkit's engine: (checksum, instructions retired, wall seconds, CPU seconds of this process,
    share of instructions run as native code). ``jit``: the JIT threshold (0 = interpreter only)."""
    from virtkit.engines.riscv.baremetal import run_elf

    cpu0 = time.process_time()
    res = run_elf(elf, console=lambda b: None, max_instructions=20_000_000_000, jit=jit)
    cpu = time.process_time() - cpu0
    if res.exit_code != 0:
        raise VirtkitError(f"virtkit: {elf.name} ended with {res.exit_code} ({res.reason})")
    native = res.stats.get("jit_instructions", 0) / res.instructions if res.instructions else 0.0
    return checksum_of(res.output.decode(errors="replace")), res.instructions, res.seconds, cpu, native


def run_qemu(elf: Path, timeout: float = 600) -> tuple[str, float, float]:
    """Run on QEMU TCG (spike machine, -bios none): (checksum, wall seconds, CPU seconds; both with start-up)."""
    cmd = [QEMU, "-M", "spike", "-bios", "none", "-kernel", str(elf), "-display", "none", "-serial", "stdio",
           "-monitor", "none"]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    if p.returncode != 0:
        raise VirtkitError(f"QEMU: {elf.name} exited with {p.returncode}: {p.stderr.decode(errors='replace')[:200]}")
    return checksum_of(p.stdout.decode(errors="replace")), dt, cpu


def measure(names: list[str], scale: float, jit: int | None = None) -> tuple[list[Row], float, float]:
    """Run every workload on both peers; also return engine load time and QEMU's start-up time."""
    load_s = engine_load_seconds()
    qemu_start = run_qemu(build("crc32", 0))[1]
    rows = []
    for name in names:
        row = Row(name, max(1, round(WORKLOADS[name] * scale)))
        try:
            elf = build(name, row.iterations)
            row.virtkit_checksum, row.instructions, row.virtkit_s, row.virtkit_cpu_s, row.native = run_virtkit(elf, jit)
            row.qemu_checksum, row.qemu_s, row.qemu_cpu_s = run_qemu(elf)
            row.mips = row.instructions / row.virtkit_s / 1e6 if row.virtkit_s else 0.0
            row.ratio = row.virtkit_s / row.qemu_s if row.qemu_s else 0.0
            row.cpu_mips = row.instructions / row.virtkit_cpu_s / 1e6 if row.virtkit_cpu_s else 0.0
            row.cpu_ratio = row.virtkit_cpu_s / row.qemu_cpu_s if row.qemu_cpu_s else 0.0
            if row.virtkit_checksum != row.qemu_checksum:
                row.error = "checksums differ"
        except (VirtkitError, subprocess.TimeoutExpired) as err:
            row.error = str(err)
        rows.append(row)
    return rows, load_s, qemu_start


def print_table(rows: list[Row], load_s: float, qemu_start: float) -> None:
    """A rich table of the results with totals and the goal verdict."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title="CPU: virtkit RISC-V engine vs qemu-system-riscv64 (TCG), same ELF")
    cols = [("workload", "left"), ("iters", "right"), ("instructions", "right"), ("virtkit s", "right"),
            ("MIPS", "right"), ("QEMU s", "right"), ("virtkit/QEMU", "right"), ("CPU-time MIPS", "right"),
            ("CPU-time ratio", "right"), ("native", "right"), ("checksum", "left")]
    for col, just in cols:
        t.add_column(col, justify=just)
    for r in rows:
        if r.error and not r.virtkit_s:
            t.add_row(r.workload, str(r.iterations), *["-"] * 8, f"[red]{r.error}[/red]")
            continue
        ck = f"{r.virtkit_checksum} ok" if r.ok else f"[red]{r.error}[/red]"
        t.add_row(r.workload, str(r.iterations), f"{r.instructions:,}", f"{r.virtkit_s:.2f}", f"{r.mips:.1f}",
                  f"{r.qemu_s:.2f}", f"{r.ratio:.1f}x", f"{r.cpu_mips:.1f}", f"{r.cpu_ratio:.1f}x",
                  f"{r.native:.0%}", ck)
    good = [r for r in rows if r.virtkit_s and r.qemu_s]
    if good:
        insns = sum(r.instructions for r in good)
        vs = sum(r.virtkit_s for r in good)
        qs = sum(r.qemu_s for r in good)
        vc = sum(r.virtkit_cpu_s for r in good)
        qc = sum(r.qemu_cpu_s for r in good)
        t.add_row("[b]total[/b]", "", f"{insns:,}", f"{vs:.2f}", f"{insns / vs / 1e6:.1f}", f"{qs:.2f}",
                  f"{vs / qs:.1f}x", f"{insns / vc / 1e6:.1f}" if vc else "-", f"{vc / qc:.1f}x" if qc else "-", "",
                  "")
    con = Console(width=max(150, Console().width))
    con.print(t)
    con.print(f"virtkit engine compile/cache-load (not in the times above): {load_s:.2f} s; "
              f"QEMU start-up (included in QEMU s): {qemu_start:.2f} s. CPU-time columns use process CPU time "
              "(virtkit: this process, QEMU: the child), which a loaded machine distorts less than wall time; the "
              "JIT's translator process is not in virtkit's CPU time. native: share of instructions run as "
              "JIT-compiled host code (the rest interpreted).")
    if good:
        mips = insns / vs / 1e6
        ratio = vs / qs
        met = mips >= GOAL_MIPS and ratio <= GOAL_RATIO
        con.print(f"goal >= {GOAL_MIPS:.0f} MIPS and <= {GOAL_RATIO:.0f}x QEMU (wall time): "
                  + ("[green]met[/green]" if met else f"[yellow]not met[/yellow] ({mips:.1f} MIPS, {ratio:.1f}x)"))


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the benchmark, print the table (or JSON); non-zero if a checksum differs."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every workload's iterations (default 1)")
    ap.add_argument("--only", default="", help="comma-separated workloads (default: all)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--micro", action="store_true", help="also measure per-instruction cost (profile of the engine)")
    ap.add_argument("--jit", default=None, help="JIT hotness threshold, or 'off' for the interpreter alone "
                    "(default: the engine's default or $VIRTKIT_JIT)")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        print(f"bench/cpu.py: error: unknown workload(s) {', '.join(unknown)}; known: {', '.join(WORKLOADS)}",
              file=sys.stderr)
        return 2
    if not 0 < args.scale <= 1000:
        print(f"bench/cpu.py: error: --scale must be in (0, 1000]: {args.scale}", file=sys.stderr)
        return 2
    if shutil.which(QEMU) is None:
        print(f"bench/cpu.py: error: {QEMU} not found (Debian package qemu-system-misc)", file=sys.stderr)
        return 2
    jit = None
    if args.jit is not None:
        from virtkit.engines.riscv.jit import parse_threshold
        from virtkit.errors import ConfigError

        try:
            jit = parse_threshold(args.jit, "--jit")
        except ConfigError as err:
            print(f"bench/cpu.py: error: {err}", file=sys.stderr)
            return 2
    try:
        rows, load_s, qemu_start = measure(names, args.scale, jit)
        micro = measure_micro() if args.micro else []
    except VirtkitError as err:
        print(f"bench/cpu.py: error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"rows": [asdict(r) | {"ok": r.ok} for r in rows], "engine_load_seconds": load_s,
                          "qemu_startup_seconds": qemu_start, "goal": {"mips": GOAL_MIPS, "ratio": GOAL_RATIO},
                          "micro": micro}))
    else:
        print_table(rows, load_s, qemu_start)
        if micro:
            print_micro(micro)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
