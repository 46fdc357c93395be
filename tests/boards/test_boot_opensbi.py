"""Unmodified OpenSBI fw_jump booting on the riscv64-virt board with the software engine.

The "kernel" is a tiny S-mode payload in a valid Linux Image header: it powers the machine off
through the sifive_test device, so the whole path firmware -> FDT -> UART -> PLIC/CLINT ->
S-mode handover -> poweroff is exercised without needing the Linux image.
"""

import struct
import threading
from pathlib import Path

import pytest

from virtkit.boards.riscv_virt import BoardConfig, RiscvVirt

FW_JUMP = Path("/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_jump.bin")

J_PLUS_64 = 0x0400006F  # jal x0, +64: skip the Image header
POWEROFF = [0x001002B7, 0x00005337, 0x55530313, 0x0062A023, 0x0000006F]  # *(u32*)0x100000 = 0x5555; j .
FAIL_7 = [0x001002B7, 0x00073337, 0x33330313, 0x0062A023, 0x0000006F]  # 0x3333 | 7 << 16


def payload_image(path: Path, body: list[int]) -> str:
    hdr = bytearray(64)
    struct.pack_into("<I", hdr, 0, J_PLUS_64)
    struct.pack_into("<Q", hdr, 16, 1 << 20)
    hdr[48:56] = b"RISCV\0\0\0"
    hdr[56:60] = b"RSC\x05"
    path.write_bytes(bytes(hdr) + struct.pack(f"<{len(body)}I", *body))
    return str(path)


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
    board = RiscvVirt(BoardConfig(kernel=payload_image(tmp_path / "Image", POWEROFF), firmware=str(FW_JUMP),
                                  cpus=cpus), console=con)
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
    board = RiscvVirt(BoardConfig(kernel=payload_image(tmp_path / "Image", FAIL_7), firmware=str(FW_JUMP)),
                      console=Console())
    res = board.run(timeout=600)
    assert (res.reason, res.code, res.exit_status) == ("fail", 7, 7)


@pytest.mark.slow
def test_stop_from_host_while_guest_spins(tmp_path):
    con = Console()
    spin = [0x0000006F]
    board = RiscvVirt(BoardConfig(kernel=payload_image(tmp_path / "Image", spin), firmware=str(FW_JUMP)),
                      console=con)
    board.vm.start()
    assert con.seen.wait(600), con.text
    board.vm.stop()
    res = board.vm.wait(60)
    board.vm.close()
    assert res is not None and res.reason == "stopped"
