"""Boot benchmark: the same OpenSBI + Linux kernel + initramfs on virtkit's RISC-V board and on
`qemu-system-riscv64 -M virt`, in one run.

Measures wall time from process start to the guest's /init (``virtkit.bench=init`` prints
``virtkit-init-reached`` and powers off) and to the interactive shell prompt, and prints a rich
table with the virtkit/QEMU ratio (``--json`` for scripts). If virtkit cannot boot the guest yet,
its row says "not available: <reason>" and QEMU is still measured.

    .venv/bin/python bench/boot.py [--runs N] [--warmup N] [--jit-cache warm|cold] [--timeout S] [--json]
                                   [--skip-virtkit]

The peers take turns boot by boot. ``--warmup`` boots (default 1) are not counted: they fill the
host's page cache for both and virtkit's persistent JIT cache (``~/.cache/virtkit/jit``, which a
later boot preloads); ``--jit-cache cold`` gives every virtkit boot an empty cache instead.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from virtkit.errors import VirtkitError
from virtkit.images import INIT_REACHED, Guest, default_guest
from virtkit.images.qemu import PROMPT, qemu_argv, run_console

APPEND = "console=ttyS0"
MEMORY = "128M"  # guest RAM on both peers


@dataclass
class PeerResult:
    """Timings of one peer: lists of seconds per run, or the reason it could not be measured."""

    name: str
    init: list[float] = field(default_factory=list)
    init_total: list[float] = field(default_factory=list)
    shell: list[float] = field(default_factory=list)
    error: str = ""

    def median(self, what: str) -> float | None:
        """Median of one measurement, None when there is none."""
        vals = getattr(self, what)
        return statistics.median(vals) if vals else None


def virtkit_argv(guest: Guest, append: str) -> list[str]:
    """``virtkit run`` booting the guest, or VirtkitError saying why it cannot (yet)."""
    try:
        importlib.import_module("virtkit.commands.run")
    except ModuleNotFoundError as err:
        raise VirtkitError("`virtkit run` does not exist yet") from err
    help_text = subprocess.run([sys.executable, "-m", "virtkit.cli", "run", "--help"], capture_output=True,
                               text=True).stdout
    for flag in ("--kernel", "--initrd", "--append"):
        if flag not in help_text:
            raise VirtkitError(f"`virtkit run` has no {flag} option yet")
    argv = [sys.executable, "-m", "virtkit.cli", "run", "--kernel", str(guest.kernel), "--initrd", str(guest.initrd),
            "--append", append]
    if "--mem" in help_text:
        argv += ["--mem", MEMORY]
    if "--firmware" in help_text:
        argv += ["--firmware", str(guest.firmware)]
    elif "--bios" in help_text:
        argv += ["--bios", str(guest.firmware)]
    return argv


def last_line(text: str) -> str:
    """The last non-empty console line, for a one-line failure reason."""
    lines = [t.strip() for t in text.replace("\r", "").splitlines() if t.strip()]
    return lines[-1][:100] if lines else "(no output)"


def boot_pair(res: PeerResult, argvs: tuple[list[str], list[str]], timeout: float, env: dict[str, str] | None,
              keep: bool) -> None:
    """One boot to init and one to the shell; their times go into ``res`` when ``keep`` (not a warm-up),
    the first failure into ``res.error`` with its reason."""
    init_argv, shell_argv = argvs
    run = run_console(init_argv, timeout=timeout, marks=[INIT_REACHED], env=env)
    if INIT_REACHED not in run.marks:
        refused = [t for t in run.output.splitlines() if t.startswith("virtkit: error:")]
        if refused and not run.timed_out:
            res.error = f"not available: {refused[-1].removeprefix('virtkit: error:').strip()}"
            return
        why = "timed out" if run.timed_out else f"exit {run.returncode}"
        res.error = f"failed to reach init ({why}): {last_line(run.output)}"
        return
    if keep:
        res.init.append(run.marks[INIT_REACHED])
        res.init_total.append(run.seconds)
    run = run_console(shell_argv, timeout=timeout, marks=[PROMPT], replies={PROMPT: "exit\n"}, env=env)
    if PROMPT.pattern not in run.marks:
        why = "timed out" if run.timed_out else f"exit {run.returncode}"
        res.error = f"failed to reach the shell ({why}): {last_line(run.output)}"
        return
    if keep:
        res.shell.append(run.marks[PROMPT.pattern])


def fmt(v: float | None) -> str:
    """Seconds with 2 decimals, or a dash."""
    return "-" if v is None else f"{v:.2f} s"


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b when both exist."""
    return None if a is None or b is None or b == 0 else a / b


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table (or JSON)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1, help="boots per peer and measurement (median reported)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed per boot")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.add_argument("--skip-virtkit", action="store_true", help="measure QEMU only")
    ap.add_argument("--warmup", type=int, default=1,
                    help="boots per peer before measuring, not counted (host page cache; virtkit's JIT cache)")
    ap.add_argument("--jit-cache", choices=("warm", "cold"), default="warm",
                    help="virtkit's persistent JIT cache: the user's (warm, after --warmup) or a fresh one per boot")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.timeout <= 0 or args.warmup < 0:
        ap.error("--runs and --timeout must be positive, --warmup at least 0")
    # virtkit's own bytecode, as an installed package has it: with PYTHONDONTWRITEBYTECODE set, every
    # start would compile ~40 modules from source (~0.1 s) that QEMU does not pay for
    import compileall

    import virtkit

    compileall.compile_dir(str(Path(virtkit.__file__).parent), quiet=2)
    try:
        guest = default_guest(progress=not args.json)
    except VirtkitError as err:
        print(f"bench/boot.py: error: {err}", file=sys.stderr)
        return 1

    def qemu(append: str) -> list[str]:
        return qemu_argv(guest.kernel, guest.initrd, append, guest.firmware, memory=MEMORY)

    def virtkit(append: str) -> list[str]:
        if args.skip_virtkit:
            raise VirtkitError("skipped (--skip-virtkit)")
        return virtkit_argv(guest, append)

    tmp = tempfile.TemporaryDirectory(prefix="virtkit-bench-jit-")
    fresh = itertools.count()

    def virtkit_env() -> dict[str, str] | None:
        return {"VIRTKIT_JIT_CACHE": f"{tmp.name}/{next(fresh)}"} if args.jit_cache == "cold" else None

    peers = []  # (result, (init argv, shell argv), extra environment per boot)
    for name, make_argv, env_for in (("qemu-system-riscv64 -M virt", qemu, lambda: None),
                                     ("virtkit run", virtkit, virtkit_env)):
        res, argvs = PeerResult(name), ([], [])
        try:
            argvs = (make_argv(f"{APPEND} virtkit.bench=init"), make_argv(APPEND))
        except VirtkitError as err:
            res.error = f"not available: {err}"
        peers.append((res, argvs, env_for))
    # the peers take turns, boot by boot, so a machine that speeds up or slows down hits both alike
    for i in range(args.warmup + args.runs):
        for res, argvs, env_for in peers:
            if not res.error:
                boot_pair(res, argvs, args.timeout, env_for(), keep=i >= args.warmup)
    tmp.cleanup()
    results = [res for res, _, _ in peers]
    q, v = results
    rows = {
        "boot to init (virtkit-init-reached)": "init",
        "boot to init + poweroff (process exit)": "init_total",
        "boot to shell prompt": "shell",
    }
    if args.json:
        out = {
            "guest": {"kernel": str(guest.kernel), "initrd": str(guest.initrd), "firmware": str(guest.firmware)},
            "runs": args.runs,
            "warmup": args.warmup,
            "jit_cache": args.jit_cache,
            "peers": [{"name": r.name, "error": r.error, **{k: r.median(k) for k in rows.values()},
                       "samples": {k: getattr(r, k) for k in rows.values()}} for r in results],
            "ratio_virtkit_over_qemu": {k: ratio(v.median(k), q.median(k)) for k in rows.values()},
        }
        print(json.dumps(out, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Boot: OpenSBI + Linux {guest.kernel.parent.name} + busybox initramfs "
                        f"(median of {args.runs}, {args.warmup} warm-up, JIT cache {args.jit_cache})")
    table.add_column("measure")
    table.add_column(q.name, justify="right")
    table.add_column(v.name, justify="right")
    table.add_column("virtkit / qemu", justify="right")
    for label, key in rows.items():
        r = ratio(v.median(key), q.median(key))
        table.add_row(label, cell(q, key), cell(v, key), "-" if r is None else f"{r:.1f}x")
    console = Console(width=None if sys.stdout.isatty() else 130)
    console.print(table)
    for peer in results:
        if peer.error:
            console.print(f"[yellow]{peer.name}[/yellow]: {peer.error}")
    return 0


def cell(peer: PeerResult, key: str) -> str:
    """A table cell: the median and the sample count when runs failed, or why there is none."""
    vals = getattr(peer, key)
    if not vals:
        return "not available" if peer.error.startswith("not available") else "failed (see below)"
    return fmt(peer.median(key)) + (f" (n={len(vals)})" if peer.error else "")


if __name__ == "__main__":
    sys.exit(main())
