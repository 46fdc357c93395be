"""The KVM engine (``--engine kvm``): x86-64 guests on the host CPU through ``/dev/kvm``.

Modules: ``api`` (the KVM ioctls and structures through ``ctypes`` and ``fcntl.ioctl``), ``engine`` (the
engine contract over them: vCPU threads, exits, interrupts, dirty log, state), ``host`` (what kind of KVM
this host has: hardware, or the paravirtual ``kvm_pvm``). The board is ``boards/x86_64.py``.
"""

from __future__ import annotations

from typing import Any


def create_engine(mem: Any, cfg: Any, **board: Any) -> Any:
    """The engine contract's factory: a :class:`~virtkit.engines.kvm.engine.KvmEngine` with ``cfg.cpus``
    vCPUs over ``mem`` (the board says whether the in-kernel irqchip is wanted)."""
    from virtkit.engines.kvm.engine import KvmEngine

    return KvmEngine(mem, cfg.cpus, irqchip=board.get("irqchip", True), cpu=cfg.cpu)


def describe() -> dict:
    """What ``virtkit engine status`` prints: the host's kind of KVM."""
    from virtkit.engines.kvm.host import kind

    h = kind()
    return {"engine": "kvm", "kind": f"hardware-assisted ({h['kind']})", "available": bool(h["usable"]),
            "host": h["kind"], "module": h["module"], "cpu_virtualization": h["cpu_virtualization"],
            "note": h["note"]}
