"""PLIC register behaviour: priorities, enables, thresholds, claim/complete, MEIP/SEIP outputs."""

import pytest

from virtkit.devices.plic import CONTEXT_BASE, ENABLE_BASE, PENDING_BASE, Plic, plic_size


class Harts:
    def __init__(self):
        self.mip = {}

    def set_irq(self, hart, bit, level):
        self.mip[(hart, bit)] = level


def make(nharts=2):
    h = Harts()
    return Plic(nharts, h.set_irq), h


def ctx_reg(ctx, reg):
    return CONTEXT_BASE + 0x1000 * ctx + reg


def test_size_matches_qemu_virt():
    assert plic_size(1) == 0x202000
    assert plic_size(2) == 0x204000
    assert plic_size(8) == 0x210000  # QEMU's VIRT_PLIC_SIZE(16)


def test_claim_complete_cycle_drives_seip():
    p, h = make()
    p.write(10 * 4, 4, 1)  # priority of source 10
    p.write(ENABLE_BASE + 0x80 * 1, 4, 1 << 10)  # context 1 = hart 0 S-mode
    p.write(ctx_reg(1, 0), 4, 0)
    line = p.line(10)
    line(True)
    assert h.mip[(0, 9)] == 1 and (0, 11) not in h.mip
    assert p.read(PENDING_BASE, 4) == 1 << 10
    assert p.read(ctx_reg(1, 4), 4) == 10
    assert h.mip[(0, 9)] == 0  # claimed: no longer pending
    assert p.read(ctx_reg(1, 4), 4) == 0  # nothing else to claim
    line(False)
    p.write(ctx_reg(1, 4), 4, 10)
    assert h.mip[(0, 9)] == 0


def test_level_still_high_at_complete_re_pends():
    p, h = make()
    p.write(1 * 4, 4, 7)
    p.write(ENABLE_BASE, 4, 1 << 1)  # context 0 = hart 0 M-mode
    p.set_level(1, True)
    assert h.mip[(0, 11)] == 1
    assert p.read(ctx_reg(0, 4), 4) == 1
    assert h.mip[(0, 11)] == 0
    p.write(ctx_reg(0, 4), 4, 1)  # device still asserting
    assert h.mip[(0, 11)] == 1


def test_threshold_masks_and_priority_orders():
    p, h = make()
    for s, prio in ((3, 2), (5, 6)):
        p.write(s * 4, 4, prio)
    p.write(ENABLE_BASE + 0x80 * 3, 4, (1 << 3) | (1 << 5))  # hart 1 S-mode
    p.write(ctx_reg(3, 0), 4, 5)
    p.set_level(3, True)
    assert h.mip.get((1, 9), 0) == 0  # priority 2 <= threshold 5
    p.set_level(5, True)
    assert h.mip[(1, 9)] == 1
    assert p.read(ctx_reg(3, 4), 4) == 5
    p.write(ctx_reg(3, 0), 4, 0)
    assert p.read(ctx_reg(3, 4), 4) == 3


def test_priority_zero_never_interrupts_and_source0_is_absent():
    p, h = make()
    p.write(ENABLE_BASE, 4, 0xFFFFFFFF)
    assert p.read(ENABLE_BASE, 4) == 0xFFFFFFFE
    p.set_level(4, True)
    assert h.mip.get((0, 11), 0) == 0
    p.write(0, 4, 7)
    assert p.read(0, 4) == 0


def test_registers_read_back_and_priority_bits_masked():
    p, _ = make()
    p.write(7 * 4, 4, 0xFF)
    assert p.read(7 * 4, 4) == 7
    p.write(ENABLE_BASE + 0x80 * 2 + 4, 4, 0xABCD)
    assert p.read(ENABLE_BASE + 0x80 * 2 + 4, 4) == 0xABCD
    p.write(ENABLE_BASE + 0x80 * 2 + 8, 4, 0xFFFFFFFF)  # sources 64..95 (+96 in word 3)
    assert p.read(ENABLE_BASE + 0x80 * 2 + 8, 4) == 0xFFFFFFFF
    p.write(ENABLE_BASE + 0x80 * 2 + 12, 4, 0xFFFFFFFF)
    assert p.read(ENABLE_BASE + 0x80 * 2 + 12, 4) == 1  # only source 96 exists there


def test_complete_of_unclaimed_or_bogus_source_is_ignored():
    p, h = make()
    p.write(ENABLE_BASE, 4, 1 << 2)
    p.write(2 * 4, 4, 1)
    for v in (0, 2, 97, 0xFFFFFFFF):
        p.write(ctx_reg(0, 4), 4, v)
    p.set_level(2, True)
    assert h.mip[(0, 11)] == 1


def test_hostile_offsets_do_not_crash():
    p, _ = make(1)
    for off in list(range(0, 0x3000, 4)) + [0x1FFFFC, 0x200000, 0x201004, 0x3FFFFC, 0x5FFFFC]:
        p.write(off, 4, 0xFFFFFFFF)
        p.read(off, 4)
    with pytest.raises(ValueError):
        p.set_level(0, True)
    with pytest.raises(ValueError):
        p.line(97)
