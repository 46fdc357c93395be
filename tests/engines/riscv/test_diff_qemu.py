"""Differential tests: the same bare-metal programs on virtkit and on QEMU must print the same bytes.

Each isa/diff_*.c program prints a signature (results of many instructions on pseudo-random and
edge inputs, FP results and flags in every rounding mode, CSR state after traps) through the HTIF
console; the two outputs are compared byte for byte.
"""

from __future__ import annotations

import pytest

from tests.helpers import isa_harness as harness  # noqa: E402
from tests.helpers import require_tool

PROGRAMS = sorted(p.name for p in harness.ISA_DIR.glob("diff_*.c"))


def _first_difference(a: str, b: str) -> str:
    for i, (la, lb) in enumerate(zip(a.splitlines(), b.splitlines(), strict=False), 1):
        if la != lb:
            return f"line {i}:\n  virtkit: {la}\n  qemu:    {lb}"
    return f"lengths differ: virtkit {len(a)} chars, qemu {len(b)} chars"


@pytest.mark.parametrize("program", PROGRAMS)
def test_same_output_as_qemu(program: str) -> None:
    """virtkit and qemu-system-riscv64 -M spike print identical signatures and both exit 0."""
    if not harness.have_cross_compiler():
        pytest.skip(f"needs {harness.CROSS_CC} (Debian package gcc-riscv64-linux-gnu)")
    require_tool(harness.QEMU)
    elf = harness.build(program)
    ref = harness.run_qemu(elf)
    assert ref.code == 0, "QEMU: " + harness.describe(ref)
    assert ref.console.rstrip().endswith("end"), "QEMU output is incomplete"
    missing = harness.virtkit_missing()
    if missing:
        pytest.skip(missing)
    got = harness.run_virtkit(elf)
    assert got.code == 0, "virtkit: " + harness.describe(got)
    assert got.console == ref.console, _first_difference(got.console, ref.console)
