"""End to end: a bare-metal C program exercising F/D through the whole engine, checked against QEMU.

``test_fpu_e2e.c`` first checks fsrm/fsflags/frcsr behaviour (static vs dynamic rounding, flag
accumulation, a reserved frm trapping) and exits with the failing case number; then it prints one
checksum of results and fflags per (instruction, rounding mode) over special and pseudo-random
operands. virtkit must exit 0 and print exactly what qemu-system-riscv64 prints.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import isa_harness as harness
from tests.helpers import require_tool

HERE = Path(__file__).resolve().parent

SOURCE = HERE / "test_fpu_e2e.c"


def _build() -> Path:
    """Compile the program with the isa/ crt and library (cached)."""
    if not harness.have_cross_compiler():
        pytest.skip(f"needs {harness.CROSS_CC} (Debian package gcc-riscv64-linux-gnu)")
    return harness.build(SOURCE)


def _virtkit(elf: Path) -> harness.RunResult:
    """Run on virtkit's engine (skip while the engine is missing)."""
    missing = harness.virtkit_missing()
    if missing:
        pytest.skip(missing)
    return harness.run_virtkit(elf)


def test_fpu_program_on_virtkit() -> None:
    """The CSR checks pass and the sweep completes on virtkit (virtkit run --bios none --kernel)."""
    result = _virtkit(_build())
    assert result.code == 0, "virtkit " + harness.describe(result)
    assert result.console.endswith("done\n")


def test_fpu_program_matches_qemu() -> None:
    """Every per-instruction, per-rounding-mode checksum of results and flags equals QEMU's."""
    elf = _build()
    require_tool(harness.QEMU)
    ref = harness.run_qemu(elf)
    assert ref.code == 0, "QEMU " + harness.describe(ref)
    got = _virtkit(elf)
    assert got.code == 0, "virtkit " + harness.describe(got)
    want_lines = ref.console.splitlines()
    got_lines = got.console.splitlines()
    assert len(want_lines) > 250
    differ = [f"qemu: {w}  virtkit: {g}" for w, g in zip(want_lines, got_lines, strict=False) if w != g]
    assert not differ, "checksums differ from QEMU:\n" + "\n".join(differ[:20])
    assert got_lines == want_lines
