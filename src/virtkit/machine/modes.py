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
- ``trap``: full virtualization by trap and emulate (``--mode trap``): the guest kernel runs deprivileged in
  U-mode; every privileged instruction traps to a monitor compiled beside the core, which emulates it against
  the guest's virtual supervisor state, and the guest's page tables are shadowed (``engines/riscv/trapmon.py``).
- ``nested``: hardware-assisted virtualization, one level down: the CPU has the H extension
  (``--cpu rv64,h=on``), the guest (on the builtin SBI) boots, its KVM runs the *same* kernel and initramfs as
  a guest of its own (``kvm-hello``, :mod:`virtkit.images.nested`), and that inner guest runs the command.
  Its SBI calls are ecalls from VS-mode that the outer kernel's KVM serves, its memory arrives through
  G-stage (guest-page) faults; the counters are the outer machine's, the inner guest's traps among them.
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
    #: the command runs in a KVM guest of the guest (the H extension)
    nested: bool = False


MODES = (
    Mode("emulation", "software CPU; OpenSBI in the guest's M-mode (SBI calls trap inside the guest)",
         ("--bios", "default")),
    Mode("paravirt", "software CPU; the VMM is the SBI (SBI calls are hypercalls)", ("--bios", "builtin")),
    Mode("trap", "trap and emulate: the kernel runs in U-mode, a monitor emulates what traps (shadow page tables)",
         ("--mode", "trap")),
    Mode("nested", "H extension: the guest's KVM runs the same guest, which runs the command",
         ("--cpu", "rv64,h=on", "--mem", "256M", "--bios", "builtin"), nested=True),
)
#: the inner guest's init prints ``virtkit-exec-begin`` and ``virtkit-exit-status: N`` around the command; on
#: the way out they become ``nested-...`` (the outer console's reader ends the outer command at its own)
NESTED_TAG = "nested-"


def mode(name: str) -> Mode:
    """The mode called ``name`` (VirtkitError naming the known ones otherwise)."""
    for m in MODES:
        if m.name == name:
            return m
    raise VirtkitError(f"unknown mode {name!r} (known: {', '.join(m.name for m in MODES)})")


def run_mode(m: Mode, command: str = "true", cpus: int = 1, kernel: str | None = None, initrd: str | None = None,
             firmware: str | None = None, timeout: float = 600) -> dict[str, Any]:
    """Boot the guest in mode ``m``, run ``command``, power off; the measures (VirtkitError when it fails)."""
    inner = command
    if m.nested:
        command, initrd = _nested(command, kernel, initrd)
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
    if m.nested:
        out["output"] = _inner_output(out.get("output", ""), inner)
    return measures(m, out, wall)


def _nested(command: str, kernel: str | None, initrd: str | None) -> tuple[str, str]:
    """The outer guest's command (kvm-hello boots the inner guest, whose markers are renamed) and its
    initramfs (the given or default one, with the nested kit carrying the same kernel and initramfs)."""
    import tempfile
    from pathlib import Path

    from virtkit.images.nested import initrd_with_kit, nested_linux_command

    if not kernel or not initrd:
        from virtkit.images import default_guest

        g = default_guest(progress=False)
        kernel, initrd = kernel or str(g.kernel), initrd or str(g.initrd)
    dest = Path(tempfile.gettempdir()) / f"virtkit-nested-{Path(initrd).stat().st_mtime_ns}.cpio.gz"
    initrd_with_kit(Path(initrd), dest, kernel=Path(kernel))
    outer = (f"set -o pipefail; {nested_linux_command(command)} 2>&1 | "
             f"sed -e 's/virtkit-\\(exec-begin\\|exit-status\\)/{NESTED_TAG}\\1/'")
    return outer, str(dest)


def _inner_output(output: str, command: str) -> str:
    """The inner guest's command output from the outer command's; VirtkitError when it did not end well."""
    lines = output.replace("\r", "").split("\n")
    try:
        begin = lines.index(f"{NESTED_TAG}exec-begin")
        end = next(i for i, line in enumerate(lines) if line.startswith(f"{NESTED_TAG}exit-status: "))
    except (ValueError, StopIteration):
        raise VirtkitError(f"mode nested: the inner guest did not run {command!r}: {output[-500:]}") from None
    status = lines[end].rsplit(" ", 1)[-1]
    if status != "0":
        raise VirtkitError(f"mode nested: {command!r} ended with status {status} in the inner guest")
    return "\n".join(lines[begin + 1:end]) + "\n"


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
        "monitor": st.get("monitor", {}),
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
