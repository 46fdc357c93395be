"""Integration: Debian's unmodified OpenSBI fw_jump.bin boots on the engine and prints its banner.

A tiny 16550 stub (THR writes collected, LSR always ready) stands in for the board's UART;
the S-mode payload at 0x8020_0000 prints through the legacy SBI console call and parks.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import require_tool
from virtkit.engines.riscv.asm import build
from virtkit.engines.riscv.engine import ExitReason, RiscvEngine
from virtkit.machine.elf import load_elf
from virtkit.machine.memory import GuestMemory

FW = Path("/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_jump.bin")
UART = 0x1000_0000
DTS = """/dts-v1/;
/ {
    #address-cells = <2>;
    #size-cells = <2>;
    compatible = "riscv-virtio";
    model = "virtkit-test";
    chosen { stdout-path = "/soc/serial@10000000"; };
    memory@80000000 { device_type = "memory"; reg = <0x0 0x80000000 0x0 0x8000000>; };
    cpus {
        #address-cells = <1>;
        #size-cells = <0>;
        timebase-frequency = <10000000>;
        cpu0: cpu@0 {
            device_type = "cpu"; reg = <0>; status = "okay"; compatible = "riscv";
            riscv,isa = "rv64imafdc"; mmu-type = "riscv,sv48";
            cpu0_intc: interrupt-controller { #interrupt-cells = <1>; interrupt-controller;
                compatible = "riscv,cpu-intc"; };
        };
    };
    soc {
        #address-cells = <2>;
        #size-cells = <2>;
        compatible = "simple-bus";
        ranges;
        clint@2000000 {
            compatible = "sifive,clint0", "riscv,clint0";
            reg = <0x0 0x2000000 0x0 0x10000>;
            interrupts-extended = <&cpu0_intc 3 &cpu0_intc 7>;
        };
        serial@10000000 {
            compatible = "ns16550a";
            reg = <0x0 0x10000000 0x0 0x100>;
            clock-frequency = <3686400>;
        };
    };
};
"""

PAYLOAD = r"""
.section .text.init
.globl _start
_start:
    csrr t0, sstatus          # only legal in S-mode or above
    la s0, msg
1:  lbu a0, 0(s0)
    beqz a0, 2f
    li a7, 1                  # legacy SBI console_putchar
    ecall
    addi s0, s0, 1
    j 1b
2:  wfi
    j 2b
msg: .asciz "payload in S-mode\n"
"""


class Uart16550Stub:
    """Just enough of a 16550 for firmware output: THR collects bytes, LSR says 'ready'."""

    def __init__(self) -> None:
        self.out = bytearray()

    def read(self, off: int) -> int:
        return 0x60 if off == 5 else 0

    def write(self, off: int, value: int) -> None:
        if off == 0:
            self.out.append(value & 0xFF)


@pytest.mark.slow
def test_opensbi_banner_and_s_mode_payload(tmp_path):
    if not FW.exists():
        pytest.skip("needs Debian package opensbi")
    require_tool("dtc", "riscv64-linux-gnu-gcc")
    (tmp_path / "t.dts").write_text(DTS)
    subprocess.run(["dtc", "-I", "dts", "-O", "dtb", "-o", str(tmp_path / "t.dtb"), str(tmp_path / "t.dts")],
                   check=True, capture_output=True)
    payload = build(PAYLOAD, tmp_path, "payload", base=0x8020_0000)  # fw_jump's FW_JUMP_ADDR
    mem = GuestMemory(128 << 20, 0x8000_0000)
    mem.write(0x8000_0000, FW.read_bytes())
    assert load_elf(payload, mem).entry == 0x8020_0000
    dtb = (tmp_path / "t.dtb").read_bytes()
    dtb_addr = 0x8000_0000 + (120 << 20)
    mem.write(dtb_addr, dtb)
    eng = RiscvEngine(mem, 1, deterministic=True)
    eng.add_mmio_region(UART, 0x100)
    eng.set_reg(0, 11, dtb_addr)
    uart = Uart16550Stub()
    for _ in range(200_000):
        ex = eng.run(5_000_000)
        if ex.reason is ExitReason.MMIO_READ:
            eng.complete_mmio_read(uart.read(ex.addr - UART))
        elif ex.reason is ExitReason.MMIO_WRITE:
            uart.write(ex.addr - UART, ex.value)
        elif ex.reason is ExitReason.HALT:  # the payload parks in wfi after printing
            break
    text = uart.out.decode(errors="replace")
    assert "OpenSBI" in text, text
    assert "Platform Name" in text and "virtkit-test" in text, text
    assert "payload in S-mode" in text, text
    assert eng.priv(0) == 1  # parked in the payload's wfi, in S-mode
