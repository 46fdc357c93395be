"""RISC-V F and D extensions: the compute half of every floating-point instruction (stub).

The core (``core.py``) does FP loads/stores and the ``mstatus.FS`` check; it calls
:func:`fp_exec` for OP-FP (0x53) and the fused multiply-adds (0x43, 0x47, 0x4B, 0x4F).
"""

from numba import njit

ILLEGAL = 1 << 31


@njit(cache=True, nogil=True)
def fp_exec(insn, frm, x, f):  # pragma: no cover - replaced by the soft-float implementation
    """Execute one FP compute instruction; return accrued fflags, or ILLEGAL."""
    return ILLEGAL
