"""The engine's dirty log (live migration): every page a guest store, an atomic, native (JIT) code or device
DMA writes is logged once the log is cleared; pages only read are not."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from tests.helpers.rvenc import S0, S1, T1, T2, addi, jal0, load, store
from virtkit.engines.riscv.engine import RiscvEngine
from virtkit.machine.memory import GuestMemory

RAM = 0x8000_0000


def auipc(rd, imm20):
    return (imm20 << 12) | (rd << 7) | 0x17


def program(mem):
    code = [
        auipc(S0, 0x10),           # s0 = RAM + 0x10000 (page 16)
        auipc(S1, 0x20),           # s1 = RAM + 0x20004 (page 32)
        addi(T1, 0, 1),
        store(3, T1, S0, 0),       # loop: page 16 written
        load(3, T2, S1, 0),        #       page 32 only read
        addi(T1, T1, 1),
        jal0(-12),
    ]
    mem.write(RAM, b"".join(struct.pack("<I", c) for c in code))


@pytest.mark.parametrize("jit", [0, 1])
def test_stores_are_logged_after_every_clear(jit):
    mem = GuestMemory(1 << 20, RAM)
    program(mem)
    eng = RiscvEngine(mem, 1, deterministic=True, jit=jit)
    try:
        eng.dirty_log_clear()
        eng.run(20_000)
        d = eng.dirty_log_fetch()
        assert np.flatnonzero(d).tolist() == [16]  # written; page 32 read only, the code page untouched
        for _ in range(3):  # fast-path stores (TLB hits, native code) are logged again after each clear
            eng.run(20_000)
            assert np.flatnonzero(eng.dirty_log_fetch()).tolist() == [16]
        if jit:
            assert eng.jit.stats()["regions"] >= 1  # the loop ran as native code meanwhile
        mem.write(RAM + 0x5_0000, b"dma")  # a device's DMA
        mem.view(RAM + 0x6_0FFF, 2)  # a writable view spanning two pages
        eng.run(10)
        assert np.flatnonzero(eng.dirty_log_fetch()).tolist() == [16, 0x50, 0x60, 0x61]
    finally:
        eng.close()


def test_the_log_lives_outside_guest_ram():
    mem = GuestMemory(64 << 10, RAM)
    assert mem.dirty.size == 16 and not mem.contains(RAM + mem.size, 1)
    mem.write(RAM + 4096 * 3, b"x")
    assert mem.dirty.tolist() == [0, 0, 0, 1] + [0] * 12
