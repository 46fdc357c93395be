"""What kind of KVM this host has: hardware virtualization (``vmx``/``svm`` in the CPU flags, ``kvm_intel`` /
``kvm_amd`` loaded), ``kvm_pvm`` (nested and paravirtual: no VT-x/AMD-V; ring-3 guest code runs natively,
ring-0 guest code is emulated by the host kernel at about two million instructions per second), or none.
``virtkit engine status`` and ``virtkit run --engine kvm --stats`` print it."""

from __future__ import annotations

import os
from pathlib import Path

DEVICE = "/dev/kvm"


def cpu_flags() -> set[str]:
    """The host CPU's flags (``/proc/cpuinfo``, first CPU)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def modules() -> list[str]:
    """The KVM modules loaded (or built in) on this host."""
    return [m for m in ("kvm_intel", "kvm_amd", "kvm_pvm", "kvm") if Path(f"/sys/module/{m}").exists()]


def kind() -> dict[str, str | bool]:
    """``{"kind": hardware|pvm|none, "module", "device", "usable", "note"}``: what ``--engine kvm`` will get."""
    flags, mods = cpu_flags(), modules()
    hw = "vmx" if "vmx" in flags else "svm" if "svm" in flags else ""
    module = next((m for m in mods if m != "kvm"), "kvm" if "kvm" in mods else "")
    exists = os.path.exists(DEVICE)
    usable = exists and os.access(DEVICE, os.R_OK | os.W_OK)
    if module == "kvm_pvm":
        k, note = "pvm", ("kvm_pvm: nested, paravirtual KVM without VT-x/AMD-V: ring-3 guest code runs natively, "
                          "ring-0 guest code is emulated by the host kernel (about 2 million instructions per "
                          "second), so a stock kernel boots slowly; small guests and user-mode work run well")
    elif module in ("kvm_intel", "kvm_amd"):
        k, note = "hardware", f"{module}: hardware virtualization ({hw or 'vmx/svm'})"
    else:
        k, note = "none", "no KVM module is loaded" if not exists else "KVM of an unknown kind"
    if not exists:
        note += f"; {DEVICE} is missing"
    elif not usable:
        note += f"; {DEVICE} is not readable and writable by this user (add it to the kvm group)"
    return {"kind": k, "module": module or "none", "cpu_virtualization": hw or "none", "device": DEVICE,
            "usable": usable, "note": note}
