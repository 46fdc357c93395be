"""The hypervisor extension (``--cpu rv64,h=on``) as a hypervisor uses it, checked by a bare-metal program of
the project's own (``hyp_program.py``): the H and VS CSRs and their WARL masks, two-stage translation (Sv39
over Sv39x4, superpages at both stages) with guest-page faults and their htval/mtval2/mtinst/GVA values,
implicit page-table accesses, delegation to HS and on to VS, HLV/HLVX/HSV, virtual-instruction exceptions
(VTVM, VTW, VTSR, VU-mode), VS-level interrupts, MPRV with MPV, htimedelta and hcounteren.

The same program runs on ``qemu-system-riscv64 -cpu rv64,h=true`` to prove it. Where QEMU 7.2 and the
privileged specification disagree, the specification wins and those checks run on virtkit only:
- an unsupported hgatp.MODE: QEMU stores it (the spec: hgatp's fields are WARL, unlike satp's write that
  is ignored), and it reads back hstatus bits that are not fields (WPRI);
- satp read in VS-mode with hstatus.VTVM=1 (the spec: virtual instruction; QEMU reads vsatp);
- sstatus and SRET in VU-mode (the spec: virtual instruction; QEMU: illegal instruction);
- HLVX on a page the G-stage does not make executable (the spec: executable "in both stages"; QEMU reads);
- HLV of a U page as VS-mode without vsstatus.SUM (the spec: vsstatus governs HLV; QEMU reads);
- hgatp under mstatus.TVM in HS-mode (the spec: illegal instruction; QEMU allows it).
"""

from __future__ import annotations

import numpy as np
import pytest
from hyp_program import HLVSUM, HLVX, PROGRAM, TVM, VTVM, VU, WARL

from tests.helpers import require_tool
from tests.helpers.isa_harness import run_qemu
from virtkit.engines.riscv.asm import build

HEAD = "\n.section .text.init\n.globl _start\n_start:\n"
SPEC_ONLY = {"{warl}": WARL, "{vtvm}": VTVM, "{vu}": VU, "{hlvx}": HLVX, "{hlvsum}": HLVSUM, "{tvm}": TVM}


def _program(spec_only: bool) -> str:
    prog = PROGRAM
    for mark, text in SPEC_ONLY.items():
        prog = prog.replace(mark, text if spec_only else "")
    return HEAD + prog


def _run(tmp_path, source: str, cpu: str = "rv64,h=on", jit: int = 0, name: str = "hyp"):
    from virtkit.engines.riscv.baremetal import run_elf

    require_tool("riscv64-linux-gnu-gcc")
    elf = build(source, tmp_path, name)
    return run_elf(elf, mem_size=4 << 20, max_instructions=2_000_000, deterministic=True, console=lambda b: None,
                   cpu=cpu, jit=jit)


@pytest.mark.parametrize("jit", [0, 1], ids=["interpreter", "jit"])
def test_the_hypervisor_extension(tmp_path, jit):
    res = _run(tmp_path, _program(spec_only=True), jit=jit)
    assert res.reason == "exit" and res.exit_code == 0, f"failing check {res.exit_code} (reason {res.reason})"


def test_the_program_on_qemu(tmp_path):
    require_tool("riscv64-linux-gnu-gcc", "qemu-system-riscv64")
    elf = build(_program(spec_only=False), tmp_path, "hyp")
    r = run_qemu(elf, cpu="rv64,h=true", timeout=60)
    assert r.code == 0, (r.code, r.console, r.stderr)


def test_the_extension_is_off_unless_asked(tmp_path):
    """Today's CPU unchanged: misa has no H (the program's check 2 fails) and the H CSRs are illegal."""
    res = _run(tmp_path, _program(spec_only=False), cpu="rv64")
    assert res.exit_code == 2
    res = _run(tmp_path, HEAD + r"""
    la t0, handler
    csrw mtvec, t0
    csrr t1, 0x600              # hstatus
    PASS
.align 2
handler:
    csrr t1, mcause
    li t2, 2
    bne t1, t2, other
    FAIL 3
other:
    FAIL 4
""", cpu="rv64", name="off")
    assert res.exit_code == 3


#: G-stage identity over the RAM, then VS-mode at a page of random words with every trap skipping the word
RANDOM = r"""
.option norvc
    la t0, mhandler
    csrw mtvec, t0
    li t0, -1
    csrw pmpaddr0, t0
    li t0, 0x1f
    csrw pmpcfg0, t0
    la t1, groot
    li t2, ((0x80000000 >> 12) << 10) | 0xdf
    sd t2, 16(t1)
    srli t1, t1, 12
    li t2, 8 << 60
    or t1, t1, t2
    csrw 0x680, t1
    la t0, vssetup
    csrw mepc, t0
    li t0, (1 << 11) | (1 << 39)
    csrs mstatus, t0
    mret
vssetup:
    la t0, {vector}
    csrw stvec, t0              # (the guest's vstvec: its own traps land in the random words too)
    j words
.align 2
mhandler:
    csrr t0, mepc
    addi t0, t0, 4
    csrw mepc, t0
    li t0, (1 << 11) | (1 << 39)
    csrs mstatus, t0            # back to VS-mode, whatever trapped
    mret
.align 12
words:
    .space 4096
.data
.align 14
groot: .space 16384
"""


@pytest.mark.parametrize("seed", range(4))
def test_random_instructions_in_vs_mode_never_break_the_host(tmp_path, seed):
    """Random words run as VS-mode code (with the G-stage over all of RAM, so they may rewrite anything of
    the guest's, the M-mode handler and the page tables included): the engine stops at its budget (or at
    whatever the guest ends with), its state in range, the host untouched."""
    from virtkit.engines.riscv import consts
    from virtkit.engines.riscv.engine import RiscvEngine
    from virtkit.machine.elf import load_elf
    from virtkit.machine.memory import GuestMemory

    require_tool("riscv64-linux-gnu-gcc")
    elf = build(HEAD + RANDOM.replace("{vector}", "words" if seed % 2 else "mhandler"), tmp_path, "rnd")
    mem = GuestMemory(1 << 20, 0x8000_0000)
    img = load_elf(elf, mem)
    words = img.symbols["words"]
    rng = np.random.default_rng(seed)
    mem.write(words, rng.integers(0, 1 << 32, 1024, dtype=np.uint64).astype(np.uint32).tobytes())
    eng = RiscvEngine(mem, 1, reset_pc=img.entry, deterministic=True, jit=0 if seed < 2 else 1, h=True)
    eng.tohost = img.symbols["tohost"]
    for _ in range(20):
        eng.run(50_000)
        prv, v = eng.priv(0), int(eng.hs[0, consts.HS_V])
        assert prv in (0, 1, 3) and v in (0, 1) and not (v and prv == 3)
    assert eng.stats()["instructions"] > 0


def test_a_snapshot_keeps_v_and_the_extension(tmp_path):
    """V and the H state travel in the engine's state; a restore into a CPU without H (or with a V the state
    cannot have) is refused with a message, and nothing of the target changes."""
    from virtkit.engines.riscv import consts
    from virtkit.engines.riscv.engine import RiscvEngine
    from virtkit.machine.memory import GuestMemory
    from virtkit.machine.state import StateError

    def engine(h: bool) -> RiscvEngine:
        return RiscvEngine(GuestMemory(1 << 16, 0x8000_0000), 1, deterministic=True, jit=0, h=h)

    a = engine(True)
    a.hs[0, consts.HS_PRIV], a.hs[0, consts.HS_V] = 1, 1
    a.write_csr(0, consts.HGATP, (8 << 60) | 0x80010)
    a.write_csr(0, consts.VSSTATUS, 2)
    st = a.save()
    assert st["harts"][0]["v"] == 1
    b = engine(True)
    b.restore(st)
    assert b.hs[0, consts.HS_V] == 1 and b.priv(0) == 1
    assert b.read_csr(0, consts.HGATP) == (8 << 60) | 0x80010 and b.read_csr(0, consts.VSSTATUS) & 2
    c = engine(False)
    with pytest.raises(StateError, match="H extension"):
        c.restore(st)
    assert c.hs[0, consts.HS_V] == 0 and c.priv(0) == 3
    bad = {**st, "harts": [{**st["harts"][0], "v": 2}]}
    with pytest.raises(StateError, match="'v'"):
        b.restore(bad)
    m = {**st, "harts": [{**st["harts"][0], "priv": 3}]}
    with pytest.raises(StateError, match="V = 1"):
        b.restore(m)
