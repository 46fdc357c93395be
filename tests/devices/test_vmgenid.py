"""The VM generation ID device: the guest reads 16 bytes at any width; a new generation changes them and
pulses the interrupt; the ID survives save/restore (a migration keeps it); malformed records are refused;
a snapshot taken before the device existed still restores (with a fresh ID)."""

from __future__ import annotations

import pytest

from tests.helpers.guests import COUNTING, Out
from tests.helpers.machines import virt
from tests.helpers.opensbi import payload_image
from virtkit.devices.vmgenid import VmGenId
from virtkit.machine.state import StateError


def test_reads_at_every_width_and_new_generations():
    edges = []
    g = VmGenId(edges.append)
    first = g.guid
    assert len(first) == 16
    assert g.read(0, 8) | g.read(8, 8) << 64 == int.from_bytes(first, "little")
    assert g.read(3, 1) == first[3] and g.read(14, 2) == int.from_bytes(first[14:16], "little")
    assert g.read(15, 4) == first[15] and g.read(16, 8) == 0 and g.read(0xFF8, 8) == 0
    g.write(0, 8, 0)  # read-only
    assert g.guid == first
    second = g.new_generation()
    assert second != first and g.guid == second and edges == [True, False] and g.generations == 1


def test_save_restore_keeps_the_id_and_refuses_bad_records():
    a, b = VmGenId(), VmGenId()
    b.restore(a.save())
    assert b.guid == a.guid
    for bad in ({"kind": "vmgenid", "version": 1, "guid": "zz"}, {"kind": "vmgenid", "version": 1, "guid": "00" * 8},
                {"kind": "vmgenid", "version": 1, "guid": "00" * 17}, {"kind": "vmgenid", "version": 9, "guid": "00"}):
        with pytest.raises(StateError):
            b.restore(bad)
    assert b.guid == a.guid


def test_the_board_exposes_it_and_old_snapshots_still_restore(tmp_path):
    img = tmp_path / "c.img"
    payload_image(img, COUNTING)
    m = virt(Out(), kernel=str(img), firmware=None, mem_mib=16, rng=False)
    try:
        gen = m.device("vmgenid")
        assert m.vm.bus.read(0x10_2000, 8) == int.from_bytes(gen.guid[:8], "little")
        assert b"microsoft,vmgenid" in m.board.dump_dtb()
        state = m.save_state()
        del state["devices"]["vmgenid"]  # what virtkit wrote before this device existed
        before = gen.guid
        m.restore_state(state)
        assert gen.guid == before
        m.new_generation()
        assert gen.guid != before
    finally:
        m.vm.close()
