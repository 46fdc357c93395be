"""Unmodified OpenSBI fw_jump booting on the riscv64-virt board with the software engine.

The "kernel" is a tiny S-mode payload in a valid Linux Image header: it powers the machine off
through the sifive_test device, so the whole path firmware -> FDT -> UART -> PLIC/CLINT ->
S-mode handover -> poweroff is exercised without needing the Linux image.
"""

import threading

import pytest

from tests.helpers.machines import virt
from tests.helpers.opensbi import FAIL_7, FW_JUMP, POWEROFF, payload_image


class Console:
    def __init__(self):
        self.out = bytearray()
        self.seen = threading.Event()

    def __call__(self, data):
        self.out += data
        if b"Boot HART MEDELEG" in self.out:
            self.seen.set()

    @property
    def text(self):
        return self.out.decode(errors="replace")


@pytest.fixture(autouse=True)
def need_firmware():
    if not FW_JUMP.exists():
        pytest.skip("needs Debian package opensbi")


@pytest.mark.slow
@pytest.mark.slow
@pytest.mark.parametrize("cpus", [1, 2])
def test_opensbi_banner_then_poweroff(tmp_path, cpus):
    con = Console()
    board = virt(con, kernel=payload_image(tmp_path / "Image", POWEROFF), firmware=str(FW_JUMP),
                                  cpus=cpus)
    res = board.run(timeout=600)
    assert res.reason == "poweroff", (res, con.text[-2000:])
    assert res.exit_status == 0
    t = con.text
    assert "OpenSBI v" in t
    assert "Platform Name             : riscv-virtio,virtkit" in t
    assert f"Platform HART Count       : {cpus}" in t
    assert "Domain0 Next Address      : 0x0000000080200000" in t
    assert "Boot HART Base ISA        : rv64imafdc" in t
    assert res.stats["mmio"]["uart0"] > 0 and res.stats["mmio"]["sifive_test"] == 1


@pytest.mark.slow
def test_guest_failure_code_is_reported(tmp_path):
    board = virt(Console(), kernel=payload_image(tmp_path / "Image", FAIL_7), firmware=str(FW_JUMP))
    res = board.run(timeout=600)
    assert (res.reason, res.code, res.exit_status) == ("fail", 7, 7)


@pytest.mark.slow
def test_stop_from_host_while_guest_spins(tmp_path):
    con = Console()
    spin = [0x0000006F]
    board = virt(con, kernel=payload_image(tmp_path / "Image", spin), firmware=str(FW_JUMP))
    board.vm.start()
    assert con.seen.wait(600), con.text
    board.vm.stop()
    res = board.vm.wait(60)
    board.vm.close()
    assert res is not None and res.reason == "stopped"
