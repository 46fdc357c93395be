"""RV64IMC basics, ELF loading, HTIF and the ``virtkit run --bios none`` command."""

from __future__ import annotations

import json
import struct

import pytest

from tests.helpers import require_tool
from virtkit.cli import main
from virtkit.engines.riscv.asm import build
from virtkit.engines.riscv.baremetal import run_elf
from virtkit.errors import ImageError
from virtkit.machine.elf import load_elf, parse_elf
from virtkit.machine.memory import GuestMemory

HEAD = """
.section .text.init
.globl _start
_start:
"""


def run_asm(tmp_path, body: str, *, nharts: int = 1, max_insns: int = 2_000_000, name: str = "prog"):
    """Assemble ``body`` (after _start) and run it deterministically; return the BareMetalResult."""
    require_tool("riscv64-linux-gnu-gcc")
    elf = build(HEAD + body, tmp_path, name)
    return run_elf(elf, mem_size=4 << 20, nharts=nharts, max_instructions=max_insns, deterministic=True,
                   console=lambda b: None)


ARITH = r"""
    li a0, 0
    li a1, 1000
1:  addi a0, a0, 3
    addi a1, a1, -1
    bnez a1, 1b
    li t0, 3000
    bne a0, t0, fail
    li t0, -7
    li t1, 2
    div t2, t0, t1
    li t3, -3
    bne t2, t3, fail
    rem t2, t0, t1
    li t3, -1
    bne t2, t3, fail
    divu t2, t0, zero
    li t3, -1
    bne t2, t3, fail
    li t0, 1
    slli t0, t0, 63
    li t1, -1
    div t2, t0, t1
    bne t2, t0, fail
    rem t2, t0, t1
    bnez t2, fail
    li t0, -1
    mulhu t2, t0, t0
    li t3, -2
    bne t2, t3, fail
    mulh t2, t0, t0
    bnez t2, fail
    li t0, -2
    li t1, 3
    mulhsu t2, t0, t1
    li t3, -1
    bne t2, t3, fail
    li t0, 0x7fffffff
    addiw t1, t0, 1
    li t3, -0x80000000
    bne t1, t3, fail
    li t0, -1
    srliw t1, t0, 4
    li t3, 0x0fffffff
    bne t1, t3, fail
    sraiw t1, t0, 4
    bne t1, t0, fail
    srli t1, t0, 60
    li t3, 15
    bne t1, t3, fail
    li t0, -5
    li t1, 3
    sltu t2, t1, t0
    beqz t2, fail
    slt t2, t1, t0
    bnez t2, fail
    divw t2, t0, t1
    li t3, -1
    bne t2, t3, fail
    remuw t2, t0, t1
    li t3, 0xfffffffb % 3
    bne t2, t3, fail
    la t0, data
    ld t1, 0(t0)
    li t3, 0x1122334455667788
    bne t1, t3, fail
    lw t1, 4(t0)
    li t3, 0x11223344
    bne t1, t3, fail
    lwu t1, 0(t0)
    li t3, 0x55667788
    bne t1, t3, fail
    lb t1, 0(t0)
    li t3, -120
    bne t1, t3, fail
    lbu t1, 0(t0)
    li t3, 0x88
    bne t1, t3, fail
    lh t1, 0(t0)
    li t3, 0x7788
    bne t1, t3, fail
    ld t1, 1(t0)                 # misaligned: done in hardware
    li t3, 0x0011223344556677
    bne t1, t3, fail
    sd t3, 3(t0)
    ld t1, 3(t0)
    bne t1, t3, fail
    jal ra, func
    li t3, 42
    bne a0, t3, fail
here:
    auipc t0, 0
    la t1, here
    bne t0, t1, fail
    PASS
func:
    li a0, 42
    ret
fail:
    FAIL 2
.data
.align 3
data: .dword 0x1122334455667788
.dword 0
.dword 0
"""

COMPRESSED = r"""
    .option rvc
    la sp, stack_top
    c.li a0, 5
    c.addi a0, 7
    c.li a1, 12
    bne a0, a1, fail
    c.mv a2, a0
    c.add a2, a0
    li t0, 24
    bne a2, t0, fail
    c.slli a2, 2
    li t0, 96
    bne a2, t0, fail
    c.srli a2, 3
    li t0, 12
    bne a2, t0, fail
    c.lui a3, 1
    li t0, 4096
    bne a3, t0, fail
    la s0, data
    c.ld a4, 0(s0)
    c.lw a5, 0(s0)
    li t0, -2
    bne a4, t0, fail
    bne a5, t0, fail
    c.addi16sp sp, -64
    c.addi4spn s1, sp, 16
    addi t0, sp, 16
    bne s1, t0, fail
    c.sub a0, a1
    c.bnez a0, fail
    c.beqz a0, 1f
    j fail
1:  c.j 2f
    j fail
2:  la t1, 3f
    c.jalr t1
    j fail
3:  addi a0, sp, 0
    c.addiw a0, 1
    c.sdsp a1, 8(sp)
    c.ldsp a2, 8(sp)
    bne a1, a2, fail
    PASS
fail:
    FAIL 3
.data
.align 3
data: .dword -2
.space 256
stack_top:
"""


def test_rv64im_arith_loads_misaligned(tmp_path):
    res = run_asm(tmp_path, ARITH)
    assert res.reason == "exit"
    assert res.exit_code == 0


def test_compressed(tmp_path):
    res = run_asm(tmp_path, COMPRESSED)
    assert res.exit_code == 0


def test_fail_code_reported(tmp_path):
    res = run_asm(tmp_path, "    FAIL 7\n")
    assert res.exit_code == 7


def test_htif_console_putchar_and_syscall(tmp_path):
    body = r"""
    la t5, tohost
    la t4, fromhost
    li t0, (1 << 56) | (1 << 48) | 'h'
    sd t0, 0(t5)
1:  ld t1, 0(t4)
    beqz t1, 1b
    sd zero, 0(t4)
    li t0, (1 << 56) | (1 << 48) | 'i'
    sd t0, 0(t5)
2:  ld t1, 0(t4)
    beqz t1, 2b
    sd zero, 0(t4)
    la t0, magic
    sd t0, 0(t5)
3:  ld t1, 0(t4)
    beqz t1, 3b
    PASS
.data
.align 6
magic: .dword 64, 1, msg, 4, 0, 0, 0, 0
msg: .ascii "!ok\n"
"""
    res = run_asm(tmp_path, body)
    assert res.exit_code == 0
    assert res.output == b"hi!ok\n"


def test_cli_run_bios_none_pass_and_fail(tmp_path, capsys):
    require_tool("riscv64-linux-gnu-gcc")
    ok = build(HEAD + "    PASS\n", tmp_path / "ok")
    bad = build(HEAD + "    FAIL 5\n", tmp_path / "bad")
    assert main(["run", "--bios", "none", "--kernel", str(ok), "--mem", "4M"]) == 0
    assert main(["run", "--bios", "none", "--kernel", str(bad), "--mem", "4M"]) == 1
    assert "FAIL: test 5" in capsys.readouterr().err
    assert main(["run", "--bios", "none", "--kernel", str(ok), "--mem", "4M", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["result"] == "PASS" and doc["instructions"] > 0
    assert main(["run", "--bios", "none", "--kernel", str(ok), "--mem", "4M", "--stats"]) == 0
    assert "MIPS" in capsys.readouterr().err


def test_cli_timeout_and_bad_flags(tmp_path, capsys):
    require_tool("riscv64-linux-gnu-gcc")
    loop = build(HEAD + "1: j 1b\n", tmp_path)
    assert main(["run", "--bios", "none", "--kernel", str(loop), "--mem", "4M", "--max-insns", "1000"]) == 2
    assert "TIMEOUT" in capsys.readouterr().err
    for argv in (["--mem", "12Q"], ["--mem", "0"], ["--cpus", "0"], ["--max-insns", "-1"]):
        assert main(["run", "--bios", "none", "--kernel", str(loop), *argv]) == 1
        err = capsys.readouterr().err
        assert err.startswith("virtkit: error:") and "Traceback" not in err
    assert main(["run", "--bios", "none"]) == 1
    assert main(["run", "--bios", "none", "--kernel", str(tmp_path / "missing.elf")]) == 1
    assert "does not exist" in capsys.readouterr().err


def _elf(machine=243, cls=2, paddr=0x8000_0000, filesz=4, memsz=4, phoff=64, extra=b"\x13\0\0\0") -> bytes:
    ident = b"\x7fELF" + bytes([cls, 1, 1]) + bytes(9)
    hdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, paddr, phoff, 0, 0, 64, 56, 1, 64, 0, 0)
    ph = struct.pack("<IIQQQQQQ", 1, 5, 120, paddr, paddr, filesz, memsz, 4)
    return hdr + ph + extra


def test_elf_valid_and_malformed():
    mem = GuestMemory(1 << 16, 0x8000_0000)
    img = load_elf(_elf(), mem)
    assert img.entry == 0x8000_0000 and mem.read_u32(0x8000_0000) == 0x13
    cases = {
        "bad magic": b"\x7fELX" + _elf()[4:],
        "64-bit": _elf(cls=1),
        "not RISC-V": _elf(machine=62),
        "outside RAM": _elf(paddr=0x1000),
        "truncated": _elf()[:100],
        "past the end": _elf(filesz=4096, memsz=4096),
        "exceeds": _elf(filesz=8, memsz=4),
        "not an ELF": b"\x7fELF",
    }
    for what, data in cases.items():
        with pytest.raises(ImageError, match=what):
            load_elf(data, mem)
    with pytest.raises(ImageError):
        parse_elf(_elf(phoff=10_000))
