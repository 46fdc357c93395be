"""The software RISC-V CPU engine (RV64IMAFDC, M/S/U, Sv39/Sv48, PMP, CLINT), compiled with Numba.

Importing this package does not import Numba: the engine runs an ahead-of-time compiled core
(:mod:`virtkit.engines.riscv.aot`) when one is built for the current sources, and only falls back
to the Numba JIT core (:func:`virtkit.engines.riscv.corecache.load_core`) when it is not. Importing it
installs the hook that keys the Numba cache on the core's sources (:mod:`~virtkit.engines.riscv.corecache`).

Modules: ``engine`` (the engine contract), ``coresel`` (which compiled core runs), ``core`` with ``decode``,
``mmu``, ``csr`` and ``fpu`` (the Numba interpreter), ``jit`` with ``jitcache`` and ``jitworker`` (the JIT
tier), ``aot``/``aotbuild`` (the ahead-of-time core), ``asm`` (the cross assembler for tests).
"""

from __future__ import annotations

from virtkit.engines.riscv import corecache as _corecache  # noqa: F401  (installs the Numba cache hook)


def create_engine(mem, cfg, *, reset_pc: int, clint_base: int = 0x0200_0000, sbi: bool = False,  # noqa: ANN001, ANN201
                  trap: bool = False, guest_ram: int | None = None):
    """The engine contract's factory (:mod:`virtkit.machine.engine`): a :class:`RiscvEngine` for ``cfg``
    (harts, CPU options, deterministic time, JIT threshold) over ``mem``; the board gives the reset address
    and CLINT base, ``sbi`` when the VMM is the SBI (``--bios builtin``), ``trap`` and the RAM the guest sees
    under trap and emulate (``--mode trap``)."""
    from virtkit.engines.riscv.engine import RiscvEngine
    from virtkit.machine.config import parse_cpu

    return RiscvEngine(mem, cfg.cpus, reset_pc=reset_pc, clint_base=clint_base, deterministic=cfg.deterministic,
                       jit=cfg.jit, sbi=sbi, h=parse_cpu(cfg.cpu)["h"], trap=trap, guest_ram=guest_ram)


def describe() -> dict:
    """What ``virtkit engine status`` prints for this engine: which compiled core a run would use."""
    from virtkit.engines.riscv import aot

    st = aot.status()
    return {"engine": "riscv", "kind": "software (interpreter + JIT)", "available": True,
            "core": "aot" if st.get("aot_ready") else "numba", "note": st.get("reason") or ""}
