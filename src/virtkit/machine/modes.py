"""One guest, every virtualization mode virtkit has, side by side: what ``virtkit modes`` runs and prints.

Each mode boots the same kernel and initramfs (the default guest unless given), runs one command and
powers off, in a fresh ``virtkit run --json`` process; the machine's counters say what the mode cost:
wall time, guest instructions, traps taken inside the guest, exits to the VMM by reason and what the
VMM spent per exit, SBI calls by extension (where the VMM sees them), MMIO exits by device.

The modes built so far:

- ``emulation``: every instruction emulated, OpenSBI in the guest's M-mode; an SBI call is a trap into
  firmware *inside* the emulated machine (the VMM never sees it: it is just more guest instructions).
- ``paravirt``: the same emulation with the SBI implemented by the VMM (``--bios builtin``): an SBI call
  is a hypercall; TIME, IPI and RFENCE are served in the compiled core, the rest are HYPERCALL exits.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from virtkit.errors import VirtkitError


@dataclass(frozen=True)
class Mode:
    """A way of running the guest: its name, one line saying what traps where, and the ``virtkit run`` flags."""

    name: str
    what: str
    flags: tuple[str, ...]


MODES = (
    Mode("emulation", "software CPU; OpenSBI in the guest's M-mode (SBI calls trap inside the guest)",
         ("--bios", "default")),
    Mode("paravirt", "software CPU; the VMM is the SBI (SBI calls are hypercalls)", ("--bios", "builtin")),
)


def mode(name: str) -> Mode:
    """The mode called ``name`` (VirtkitError naming the known ones otherwise)."""
    for m in MODES:
        if m.name == name:
            return m
    raise VirtkitError(f"unknown mode {name!r} (known: {', '.join(m.name for m in MODES)})")


def run_mode(m: Mode, command: str = "true", cpus: int = 1, kernel: str | None = None, initrd: str | None = None,
             firmware: str | None = None, timeout: float = 600) -> dict[str, Any]:
    """Boot the guest in mode ``m``, run ``command``, power off; the measures (VirtkitError when it fails)."""
    argv = [sys.executable, "-m", "virtkit.cli", "run", *m.flags, "--cpus", str(cpus), "--json", "--exec", command]
    if kernel:
        argv += ["--kernel", kernel]
    if initrd:
        argv += ["--initrd", initrd]
    if firmware and m.flags[-1] == "default":
        argv[argv.index("default")] = firmware
    t0 = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)
    wall = time.monotonic() - t0
    try:
        out = json.loads(p.stdout)
    except json.JSONDecodeError:
        raise VirtkitError(f"mode {m.name}: virtkit run failed: {(p.stderr.strip() or p.stdout)[-300:]}") from None
    if out.get("reason") != "poweroff" or out.get("command_exit_status") not in (0, None):
        raise VirtkitError(f"mode {m.name}: the guest ended with {out.get('reason')} "
                           f"(command status {out.get('command_exit_status')}): {out.get('message', '')}")
    return measures(m, out, wall)


def measures(m: Mode, out: dict[str, Any], wall: float) -> dict[str, Any]:
    """What one ``virtkit run --json`` result says about its mode."""
    st = out.get("stats", {})
    exits = {k: v for k, v in st.get("exits", {}).items() if v}
    secs = st.get("exit_seconds", {})
    cost = {k: round(secs.get(k, 0.0) / n * 1e6, 2) for k, n in exits.items() if k != "HALT" and n}
    handled = sum(n for k, n in exits.items() if k not in ("HALT", "BUDGET"))
    return {
        "mode": m.name, "what": m.what, "wall_seconds": round(wall, 3), "run_seconds": st.get("run_seconds"),
        "instructions": st.get("instructions", 0), "traps": st.get("traps", 0),
        "traps_by_cause": st.get("traps_by_cause", {}), "exits": exits,
        "exits_total": handled, "exit_cost_us": cost, "sbi_calls": st.get("sbi_calls", {}),
        "sbi_in_core": st.get("sbi_in_core", {}), "mmio": st.get("mmio", {}),
        "mmio_without_exit": st.get("fast_mmio_reads", 0) + st.get("fast_mmio_writes", 0),
        "output": out.get("output", ""),
    }


def compare(names: list[str] | None = None, command: str = "true", cpus: int = 1, runs: int = 1,
            **images: str | None) -> list[dict[str, Any]]:
    """Every mode (or ``names``), ``runs`` times each in turn; per mode the run with the median wall time."""
    chosen = [mode(n) for n in names] if names else list(MODES)
    results: dict[str, list[dict[str, Any]]] = {m.name: [] for m in chosen}
    for _ in range(max(1, runs)):
        for m in chosen:
            results[m.name].append(run_mode(m, command, cpus, **images))
    return [median_run(results[m.name]) for m in chosen]


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run (of :func:`run_mode`'s) with the median wall time."""
    return sorted(runs, key=lambda r: r["wall_seconds"])[len(runs) // 2]
