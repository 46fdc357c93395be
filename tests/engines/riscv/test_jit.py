"""The JIT tier (engines/riscv/jit.py): native code must do exactly what the interpreter does.

Random programs run with the JIT off and with every block entry translated (threshold 1,
deterministic engine: synchronous translation); registers, memory and instruction counts must
match. Self-modifying code and device DMA over translated code must take effect at once.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from tests.helpers.jit import HOT, RAM_BASE, run
from virtkit.engines.riscv import asm
from virtkit.engines.riscv.engine import RiscvEngine
from virtkit.engines.riscv.jit import threshold_from_env
from virtkit.engines.riscv.jitcodegen import decode_region, region_ir
from virtkit.errors import ConfigError
from virtkit.machine.elf import load_elf
from virtkit.machine.memory import GuestMemory

pytestmark = pytest.mark.skipif(not asm.have_toolchain(), reason="needs riscv64-linux-gnu-gcc (gcc-riscv64-linux-gnu)")

DATA_REGS = [1, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29]
# x8 = loop counter, x9 = scratch base, x2 = dump base, x30/x31 = PASS macro
R_OPS = ["add", "sub", "sll", "slt", "sltu", "xor", "srl", "sra", "or", "and", "mul", "mulh", "mulhsu", "mulhu",
         "div", "divu", "rem", "remu", "addw", "subw", "sllw", "srlw", "sraw", "mulw", "divw", "divuw", "remw", "remuw"]
I_OPS = ["addi", "slti", "sltiu", "xori", "ori", "andi", "addiw"]
SH_OPS = [("slli", 63), ("srli", 63), ("srai", 63), ("slliw", 31), ("srliw", 31), ("sraiw", 31)]
LOADS = [("ld", 8), ("lw", 4), ("lwu", 4), ("lh", 2), ("lhu", 2), ("lb", 1), ("lbu", 1)]
STORES = [("sd", 8), ("sw", 4), ("sh", 2), ("sb", 1)]
BRANCHES = ["beq", "bne", "blt", "bge", "bltu", "bgeu"]
SPECIAL = [0, 1, -1, 2, -2, 63, 64, -(1 << 63), (1 << 63) - 1, -(1 << 31), (1 << 31) - 1, 0x80000000, 0xFFFFFFFF]


def random_program(seed: int, n: int = 160, iters: int = 40) -> str:
    """A loop of ``n`` random integer instructions (ALU, M, loads/stores, forward branches), run ``iters`` times."""
    rnd = random.Random(seed)
    lines = ["    .globl _start", "_start:", "    li x9, 0x6000", "    csrs mstatus, x9",  # FP on (mstatus.FS)
             "    la x9, scratch", "    la x2, dump", f"    li x8, {iters}"]
    for r in DATA_REGS:
        v = rnd.choice(SPECIAL) if rnd.random() < 0.5 else rnd.getrandbits(64) - (1 << 63)
        lines.append(f"    li x{r}, {v}")
    lines.append("loop:")
    label = 0
    pending: list[tuple[int, str]] = []  # (instructions left, label name)
    for _ in range(n):
        k = rnd.random()
        rd = rnd.choice(DATA_REGS + [0])
        rs1 = rnd.choice(DATA_REGS + [0])
        rs2 = rnd.choice(DATA_REGS + [0])
        if k < 0.35:
            lines.append(f"    {rnd.choice(R_OPS)} x{rd}, x{rs1}, x{rs2}")
        elif k < 0.5:
            lines.append(f"    {rnd.choice(I_OPS)} x{rd}, x{rs1}, {rnd.randint(-2048, 2047)}")
        elif k < 0.58:
            op, mx = rnd.choice(SH_OPS)
            lines.append(f"    {op} x{rd}, x{rs1}, {rnd.randint(0, mx)}")
        elif k < 0.61:
            lines.append(f"    lui x{rd}, {rnd.randint(0, 0xFFFFF)}")
        elif k < 0.62:
            lines.append(f"    auipc x{rd}, {rnd.randint(0, 0xFFFFF)}")
        elif k < 0.75:
            op, size = rnd.choice(LOADS)
            off = rnd.randrange(0, 2040, size) if rnd.random() < 0.9 else rnd.randrange(0, 2040)  # some misaligned
            lines.append(f"    {op} x{rd}, {off}(x9)")
        elif k < 0.87:
            op, size = rnd.choice(STORES)
            off = rnd.randrange(0, 2040, size) if rnd.random() < 0.9 else rnd.randrange(0, 2040)
            lines.append(f"    {op} x{rs2}, {off}(x9)")
        elif k < 0.89:  # instructions native code hands to the interpreter and then goes on after
            j = rnd.randrange(5)
            if j == 0:
                lines.append(f"    csrrw x{rd}, mscratch, x{rs1}")
            elif j == 1:
                lines.append(f"    addi x30, x9, {8 * rnd.randrange(8)}")  # x30 is free until PASS
                lines.append(f"    amoadd.d x{rd}, x{rs2}, (x30)")
            elif j == 2:
                lines.append(f"    fld f{rnd.randrange(8)}, {8 * rnd.randrange(64)}(x9)")
            elif j == 3:
                lines.append(f"    fadd.d f{rnd.randrange(8)}, f{rnd.randrange(8)}, f{rnd.randrange(8)}")
            else:
                lines.append(f"    fsd f{rnd.randrange(8)}, {8 * rnd.randrange(64)}(x9)")
        else:
            label += 1
            name = f"f{label}"
            lines.append(f"    {rnd.choice(BRANCHES)} x{rs1}, x{rs2}, {name}")
            pending.append((rnd.randint(1, 4), name))
        still = []
        for left, name in pending:
            if left <= 1:
                lines.append(f"{name}:")
            else:
                still.append((left - 1, name))
        pending = still
    for _, name in pending:
        lines.append(f"{name}:")
    lines += ["    addi x8, x8, -1", "    bnez x8, loop"]
    for i, r in enumerate(DATA_REGS):
        lines.append(f"    sd x{r}, {8 * i}(x2)")
    lines += ["    fence", "    PASS", ".data", ".align 12", "scratch: .fill 2048, 1, 0x5a", ".align 3",
              "dump: .fill 256, 1, 0"]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("seed", range(8))
def test_random_programs_match_the_interpreter(seed, tmp_path):
    """Registers, memory and the instruction count are the same with and without native code."""
    elf = asm.build(random_program(seed), tmp_path, f"rand{seed}")
    e0, m0, v0 = run(elf, jit=0)
    e1, m1, v1 = run(elf, jit=1)
    assert v0 == v1 == 1
    assert e1.stats()["jit_instructions"] > 0, "the JIT did not run any native code"
    assert e0.stats()["jit_instructions"] == 0
    assert e0.stats()["instructions"] == e1.stats()["instructions"]
    np.testing.assert_array_equal(e0.x, e1.x)
    np.testing.assert_array_equal(e0.f, e1.f)
    assert e0.read_csr(0, 0x340) == e1.read_csr(0, 0x340)  # mscratch
    assert bytes(m0.array) == bytes(m1.array)


SMC = """
    .globl _start
_start:
    li s0, 3000
1:  call f
    addi s0, s0, -1
    bnez s0, 1b
    li t0, 7
    bne a0, t0, bad
    # patch f: its first instruction becomes "li a0, 9" (addi a0, x0, 9)
    la t1, f
    la t2, patch
    lw t3, 0(t2)
    sw t3, 0(t1)
    fence.i
    call f
    li t0, 9
    bne a0, t0, bad2
    PASS
bad: FAIL 1
bad2: FAIL 2
    .align 8
f:  .option push
    .option norvc
    addi a0, x0, 7
    ret
    .option pop
patch: .option push
    .option norvc
    addi a0, x0, 9
    .option pop
"""


def test_self_modifying_code_takes_effect(tmp_path):
    """A store over translated code drops the translation: the patched instruction runs."""
    elf = asm.build(SMC, tmp_path, "smc")
    eng, _, v = run(elf, jit=1)
    assert v == 1, f"tohost={v:#x} (FAIL {v >> 1})"
    st = eng.stats()
    assert st["jit_instructions"] > 0
    assert st["jit"]["invalidations"] >= 1


def test_dma_over_translated_code_takes_effect(tmp_path):
    """Device DMA (GuestMemory.write) over translated code drops the translation."""
    elf = asm.build(HOT, tmp_path, "hot")
    mem = GuestMemory(16 << 20, RAM_BASE)
    img = load_elf(elf, mem)
    eng = RiscvEngine(mem, 1, reset_pc=img.entry, deterministic=True, jit=1)
    eng.tohost = img.symbols["tohost"]
    f = img.symbols["f"]
    assert eng.is_htif(eng.run(10_000_000))
    assert mem.read_u64(img.symbols["result"]) == 6000
    assert eng.stats()["jit_instructions"] > 0
    # "DMA" a new first instruction (addi a0, x0, 5) into f, rerun the program from the start
    mem.write_u32(f, (5 << 20) | (10 << 7) | 0x13)
    mem.write_u64(img.symbols["tohost"], 0)
    eng.set_pc(0, img.entry)
    assert eng.is_htif(eng.run(10_000_000))
    assert mem.read_u64(img.symbols["result"]) == 10000
    assert eng.stats()["jit"]["invalidations"] >= 1


SHARED = """
    .globl _start
_start:
    li s0, 3000
    la s1, counter
1:  ld t0, 0(s1)
    addi t0, t0, 1
    sd t0, 0(s1)
    addi s0, s0, -1
    bnez s0, 1b
    ld t0, 0(s1)
    li t1, 3000
    bne t0, t1, bad
    PASS
bad: FAIL 1
counter: .dword 0
"""


def test_code_and_data_in_one_chunk_stops_translating(tmp_path):
    """A loop storing next to its own code keeps invalidating; the JIT gives that chunk up, results stay right."""
    elf = asm.build(SHARED, tmp_path, "shared")
    eng, _, v = run(elf, jit=1)
    assert v == 1
    st = eng.stats()["jit"]
    assert st["invalidations"] >= 4
    assert st["refused"] >= 1


def test_jit_threshold_from_the_environment(monkeypatch):
    """$VIRTKIT_JIT: off, a number, or a clear error."""
    monkeypatch.setenv("VIRTKIT_JIT", "off")
    assert threshold_from_env() == 0
    monkeypatch.setenv("VIRTKIT_JIT", "12")
    assert threshold_from_env() == 12
    for bad in ("fast", "-3", "1.5"):
        monkeypatch.setenv("VIRTKIT_JIT", bad)
        with pytest.raises(ConfigError, match="VIRTKIT_JIT"):
            threshold_from_env()


def test_untranslatable_and_garbage_code_is_left_to_the_interpreter():
    """Random bytes decode into regions whose unsupported or illegal words are bail points, never errors."""
    rnd = np.random.default_rng(5)
    ram = rnd.integers(0, 256, 1 << 16, dtype=np.uint8)
    from virtkit.engines.riscv.coresel import ctab as _ctab

    ctab = _ctab()
    r16 = ram.view(np.uint16)
    for entry in range(0, 1 << 16, 262):
        insns = decode_region(r16, ctab, entry & ~1)
        assert all(entry & ~0xFFF <= i.off < (entry & ~0xFFF) + 4096 for i in insns.values())
        ok = [i for i in insns.values() if i.kind == "ok"]
        if ok:
            text, entries = region_ir("f", insns, entry & ~1, 1)
            assert "define i64 @f" in text and entries


def test_translations_are_kept_between_runs_and_damaged_ones_replaced(tmp_path, monkeypatch):
    """The persistent translation cache: a second run loads the regions; a corrupt file is translated again."""
    from virtkit.engines.riscv import jitcache as jitmod

    monkeypatch.setenv("VIRTKIT_JIT_CACHE", str(tmp_path / "cache"))
    elf = asm.build(HOT, tmp_path, "hot")
    e1, _, v1 = run(elf, jit=1)
    files = sorted(p for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert v1 == 1 and files
    for f in files:
        f.write_bytes(b"\x80garbage")
    e2, _, v2 = run(elf, jit=1)
    assert v2 == 1 and e2.stats()["jit_instructions"] > 0
    assert all(f.read_bytes() != b"\x80garbage" for f in files)  # replaced by fresh translations
    job = jitmod.Job(0, 0, bytes(4096))
    monkeypatch.setenv("VIRTKIT_JIT_CACHE", "off")
    assert jitmod.cache_root() is None and jitmod.load_region(jitmod.region_key(job, 1)) is jitmod.MISS


LONG = """
    .globl _start
_start:
    li s0, 200000000
1:  addi s1, s1, 3
    addi s0, s0, -1
    bnez s0, 1b
    PASS
"""


def test_cli_exits_cleanly_after_running_native_code(tmp_path):
    """`virtkit run --bios none` with the background JIT: native code ran, exit 0, nothing on stderr but notes."""
    import subprocess
    import sys

    elf = asm.build(LONG, tmp_path, "long")
    env = dict(__import__("os").environ, VIRTKIT_JIT="1", VIRTKIT_JIT_CACHE=str(tmp_path / "cache"))
    p = subprocess.run([sys.executable, "-m", "virtkit.cli", "run", "--bios", "none", "--kernel", str(elf), "--stats",
                        "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    noise = [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith("virtkit: note")]
    assert not noise, p.stderr
    import json

    stats = json.loads(p.stdout[p.stdout.find("{"):])
    assert stats["stats"]["jit_instructions"] > 0, stats  # code was linked in this process before it exited
