"""virtkit's own RISC-V ISA conformance suite: every program in isa/ must pass on QEMU and on virtkit.

Each program is a bare-metal test (isa/*.S) that exits through HTIF with 0 or the number of the
first failing case; smp_* programs run with two harts.  The QEMU run proves the test itself; the
virtkit run checks the engine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import isa_harness as harness  # noqa: E402
from tests.helpers import require_tool

PROGRAMS = sorted(p.name for p in harness.ISA_DIR.glob("*.S") if p.name != "crt.S" and not p.name.startswith("diff_"))

def _build(name: str) -> Path:
    if not harness.have_cross_compiler():
        pytest.skip(f"needs {harness.CROSS_CC} (Debian package gcc-riscv64-linux-gnu)")
    return harness.build(name)

@pytest.mark.parametrize("program", PROGRAMS)
def test_isa_on_qemu(program: str) -> None:
    """The reference: the test program passes on qemu-system-riscv64 -M spike."""
    elf = _build(program)

    require_tool(harness.QEMU)
    result = harness.run_qemu(elf, harts=harness.harts_for(program))
    assert result.code == 0, f"{program} on QEMU " + harness.describe(result)

@pytest.mark.parametrize("program", PROGRAMS)
def test_isa_on_virtkit(program: str) -> None:
    """The same program passes on virtkit's RISC-V engine (virtkit run --bios none --kernel)."""
    elf = _build(program)
    missing = harness.virtkit_missing()
    if missing:
        pytest.skip(missing)
    result = harness.run_virtkit(elf, harts=harness.harts_for(program))
    assert result.code == 0, f"{program} on virtkit " + harness.describe(result)


@pytest.mark.parametrize("program", PROGRAMS)
def test_isa_on_virtkit_jit(program: str) -> None:
    """The same program passes with the JIT translating every block entry on first sight.

    Threshold 1 and a deterministic engine (regions are translated synchronously), so every
    translatable instruction of the program runs as native code at least once.
    """
    elf = _build(program)
    missing = harness.virtkit_missing()
    if missing:
        pytest.skip(missing)
    result = harness.run_virtkit(elf, harts=harness.harts_for(program), jit=1, deterministic=True)
    assert result.code == 0, f"{program} on virtkit with the JIT " + harness.describe(result)


def test_cli_runs_isa_program_and_reports_failing_case() -> None:
    """`virtkit run --bios none --kernel` exits 0 on a passing program and names the failing case."""
    missing = harness.virtkit_missing()
    if missing:
        pytest.skip(missing)
    ok = harness.run_virtkit_cli(_build("rv64ui_arith.S"))
    assert ok.code == 0, harness.describe(ok)
    bad = harness.run_virtkit_cli(_build("selftest/fail7.S"))
    assert bad.code not in (0, None)
    assert "7" in bad.stderr
    assert "selftest: case 7 must fail" in bad.console
    assert "Traceback" not in bad.stderr

def test_harness_reports_failing_case_number() -> None:
    """A deliberately failing program exits with its case number on QEMU (the harness itself works)."""
    elf = _build("selftest/fail7.S")

    require_tool(harness.QEMU)
    result = harness.run_qemu(elf)
    assert result.code == 7
    assert "selftest" in result.console


def test_hostile_trap_storm_is_stopped_by_the_budget() -> None:
    """A guest whose trap handler address faults loops in traps; virtkit returns at its budget."""
    missing = harness.virtkit_missing()
    if missing:
        pytest.skip(missing)
    from virtkit.engines.riscv.baremetal import run_elf

    res = run_elf(_build("hostile/trap_storm.S"), max_instructions=2_000_000, console=lambda b: None)
    assert res.exit_code is None
    assert res.reason == "budget"


def test_hostile_htif_commands_do_not_stop_the_emulator() -> None:
    """Unknown HTIF devices, a syscall block outside RAM and garbage values are survived; exit 0 still works."""
    missing = harness.virtkit_missing()
    if missing:
        pytest.skip(missing)
    result = harness.run_virtkit(_build("hostile/htif_garbage.S"), max_instructions=10_000_000)
    assert result.code == 0, harness.describe(result)
