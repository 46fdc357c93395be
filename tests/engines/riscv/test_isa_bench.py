"""bench/cpu.py: rejects bad options with a one-line error, and a tiny run agrees with QEMU."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.helpers import isa_harness as harness  # noqa: E402
from tests.helpers import require_tool

BENCH = Path(__file__).resolve().parents[3] / "bench" / "cpu.py"


@pytest.fixture(scope="module")
def cpu():
    """bench/cpu.py loaded as a module."""
    spec = importlib.util.spec_from_file_location("bench_cpu", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look the module up
    spec.loader.exec_module(mod)
    return mod


def test_unknown_workload_is_a_clear_error(cpu, capsys):
    assert cpu.main(["--only", "crc32,nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown workload(s) nope" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("scale", ["0", "-1", "5000"])
def test_bad_scale_is_a_clear_error(cpu, capsys, scale):
    assert cpu.main(["--scale", scale]) == 2
    assert "--scale must be" in capsys.readouterr().err


def test_non_numeric_scale_is_rejected_by_argparse(cpu):
    with pytest.raises(SystemExit) as e:
        cpu.main(["--scale", "fast"])
    assert e.value.code == 2


def test_workloads_build_and_agree_on_qemu(cpu):
    """Every workload compiles and prints its checksum on QEMU (proves the C sources)."""
    require_tool(cpu.QEMU, harness.CROSS_CC)
    for name in cpu.WORKLOADS:
        ck = cpu.run_qemu(cpu.build(name, 1))[0]
        assert len(ck) == 16, name


@pytest.mark.slow
def test_tiny_run_matches_qemu_json(cpu, capsys):
    require_tool(cpu.QEMU, harness.CROSS_CC)
    missing = harness.virtkit_missing()
    if missing:
        pytest.skip(missing)
    assert cpu.main(["--only", "crc32,interp", "--scale", "0.01", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["workload"] for r in out["rows"]] == ["crc32", "interp"]
    assert all(r["ok"] and r["instructions"] > 0 for r in out["rows"])


@pytest.mark.parametrize("value", ["fast", "-2", "1.5"])
def test_bad_jit_option_is_a_clear_error(cpu, capsys, value):
    assert cpu.main(["--jit", value]) == 2
    err = capsys.readouterr().err
    assert "--jit must be" in err and "Traceback" not in err


@pytest.mark.slow
def test_workload_with_the_jit_and_without_matches_qemu(cpu, capsys):
    """crc32 with every block entry a translation candidate (threshold 1) and with the interpreter alone:
    the same checksum as QEMU; the JSON says which share ran as native code (0 without the JIT)."""
    require_tool(cpu.QEMU, harness.CROSS_CC)
    for jit in ("1", "off"):
        assert cpu.main(["--only", "crc32", "--scale", "0.1", "--jit", jit, "--json"]) == 0
        row = json.loads(capsys.readouterr().out)["rows"][0]
        assert row["ok"] and 0.0 <= row["native"] <= 1.0, row
    assert row["native"] == 0.0
