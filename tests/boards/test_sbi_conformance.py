"""The project's SBI conformance probe (``tests/sbi/``): an S-mode program that calls every SBI extension it
finds, checks return codes and errors for bad arguments (unknown extensions and functions, hart masks
beyond the harts, a started hart started again, an unknown reset type), HSM state changes on a second
hart, timer and IPI delivery, retentive suspend, garbage calls, and ends with SRST; DBCN and SUSP where the
SBI has them. It runs on virtkit's riscv64-virt and on ``qemu-system-riscv64 -M virt``, both with Debian's
OpenSBI, and both must pass every check: the suite is proven on QEMU, and it is the yardstick for the SBI
virtkit implements itself (``--bios builtin``), which must pass the same checks and those of DBCN and SUSP."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers import require_tool, virtkit

SRC = Path(__file__).resolve().parent.parent / "sbi"
FW = Path("/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_jump.bin")


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    require_tool("riscv64-linux-gnu-gcc")
    if not FW.exists():
        pytest.skip(f"{FW} is missing (Debian package opensbi)")
    out = tmp_path_factory.mktemp("sbi") / "sbi.elf"
    p = subprocess.run(["riscv64-linux-gnu-gcc", "-march=rv64gc", "-mabi=lp64d", "-mcmodel=medany", "-O2",
                        "-ffreestanding", "-nostdlib", "-nostartfiles", "-fno-pic", "-static", "-Wl,--no-relax",
                        "-Wl,--build-id=none", "-T", str(SRC / "link.ld"), str(SRC / "start.S"), str(SRC / "sbi.c"),
                        "-o", str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return out


def results(output: str) -> tuple[list[str], str]:
    checks = re.findall(r"^SBI-CHECK (ok|FAIL) (.*?) \(", output, re.M)
    done = re.search(r"^SBI-SUITE done (\d+) passed (\d+) failed", output, re.M)
    assert done, output[-2000:]
    failed = [name for verdict, name in checks if verdict != "ok"]
    assert not failed and done.group(2) == "0", failed
    return [name for _, name in checks], done.group(1)


def test_sbi_probe_passes_on_virtkit_and_on_qemu(probe):
    require_tool("qemu-system-riscv64")
    p = virtkit("run", "--bios", str(FW), "--kernel", str(probe), "--mem", "64M", "--cpus", "2", timeout=120)
    assert p.returncode == 0, p.stderr
    mine, n = results(p.stdout)
    q = subprocess.run(["qemu-system-riscv64", "-M", "virt", "-smp", "2", "-m", "64M", "-bios", str(FW), "-kernel",
                        str(probe), "-nographic", "-monitor", "none"], capture_output=True, text=True, timeout=120)
    theirs, m = results(q.stdout)
    assert mine == theirs and int(n) >= 30  # the same checks, all passed, on both
    assert {"hsm: hart_start", "time: the timer interrupt arrives", "ipi: the software interrupt arrives"} <= set(mine)


def test_the_builtin_sbi_passes_the_probe_and_more(probe):
    p = virtkit("run", "--bios", "builtin", "--kernel", str(probe), "--mem", "64M", "--cpus", "2", timeout=120)
    assert p.returncode == 0, p.stderr
    mine, _ = results(p.stdout)
    q = virtkit("run", "--bios", str(FW), "--kernel", str(probe), "--mem", "64M", "--cpus", "2", timeout=120)
    theirs, _ = results(q.stdout)
    assert set(theirs) < set(mine)  # every check OpenSBI passes, and DBCN's and SUSP's
    assert {"dbcn: console_write", "susp: refused while another hart runs",
            "susp: resumed at resume_addr with a0 = hart id, a1 = opaque"} <= set(mine)
    assert "SBI-DBCN written through the debug console" in p.stdout
