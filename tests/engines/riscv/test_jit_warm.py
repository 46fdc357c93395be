"""The JIT's warm start: page indexes, preloading cached regions, successors, lost requests.

A region has many entries; the persistent cache finds it through its page whatever entry a later
run asks for first. Cached regions of the loaded images are installed before the guest asks (so a
guest that ran before starts native), long straight-line code asks for its continuation at once,
and an entry whose request was lost is asked for again.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.jit import HOT, RAM_BASE, run
from virtkit.engines.riscv import asm, jitcache, jitcodegen
from virtkit.engines.riscv import jit as jitmod
from virtkit.engines.riscv.consts import JT_KEY, jslot
from virtkit.engines.riscv.coresel import ctab as _ctab
from virtkit.engines.riscv.engine import RiscvEngine
from virtkit.errors import ConfigError
from virtkit.machine.elf import load_elf
from virtkit.machine.memory import GuestMemory

pytestmark = pytest.mark.skipif(not asm.have_toolchain(), reason="needs riscv64-linux-gnu-gcc (gcc-riscv64-linux-gnu)")


def cache_in(tmp_path, monkeypatch):
    monkeypatch.setenv("VIRTKIT_JIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VIRTKIT_JIT_PRELOAD", raising=False)


def run_background(elf, threshold: int) -> RiscvEngine:
    """``elf`` on a non-deterministic engine (background translator, preloading), loaded after the engine exists."""
    mem = GuestMemory(16 << 20, RAM_BASE)
    probe = GuestMemory(16 << 20, RAM_BASE)
    entry = load_elf(elf, probe).entry
    eng = RiscvEngine(mem, 1, reset_pc=entry, jit=threshold)
    img = load_elf(elf, mem)  # through GuestMemory.write: the JIT sees what was loaded
    eng.tohost = img.symbols["tohost"]
    for _ in range(2000):
        ex = eng.run(200_000)
        if eng.is_htif(ex):
            assert ex.value == 1
            return eng
    raise AssertionError("program did not finish")


def test_any_entry_of_a_cached_region_is_found_through_its_page(tmp_path, monkeypatch):
    cache_in(tmp_path, monkeypatch)
    elf = asm.build(HOT, tmp_path, "hot")
    e1, mem, _ = run(elf, jit=1)
    ram = mem.array
    found = 0
    for pkey_file in (tmp_path / "cache").rglob("pages/*/*"):
        idx = jitcache.read_page_index(pkey_file.name)
        by_region: dict[str, list[int]] = {}
        for entry, (key, _) in idx.items():
            if key is not None:
                by_region.setdefault(key, []).append(entry)
        for entries in by_region.values():
            for entry in entries:  # every entry, not only the one first asked for, finds the region
                page = entry & ~0xFFF
                job = jitcodegen.Job(page, entry, bytes(ram[page : page + 4096]))
                res = e1.jit._cached(job)
                assert isinstance(res, jitcodegen.Result) and entry in res.entries
                found += 1
    assert found > 1
    # another page content (another program at that place) does not match
    page = next(iter(idx)) & ~0xFFF
    assert e1.jit._cached(jitcodegen.Job(page, next(iter(idx)), bytes(4096))) is jitcache.MISS


def test_a_damaged_page_index_is_translated_again(tmp_path, monkeypatch):
    cache_in(tmp_path, monkeypatch)
    elf = asm.build(HOT, tmp_path, "hot")
    run(elf, jit=1)
    indexes = list((tmp_path / "cache").rglob("pages/*/*"))
    assert indexes
    for f in indexes:
        f.write_bytes(b"\x80 not a pickle")
    e2, _, v2 = run(elf, jit=1)
    assert v2 == 1 and e2.stats()["jit_instructions"] > 0 and e2.jit.translated > 0
    assert all(jitcache.read_page_index(f.name) for f in indexes)  # rewritten


def test_cached_regions_are_preloaded_before_the_guest_asks(tmp_path, monkeypatch):
    """With a threshold no block reaches, only preloaded regions can run native code."""
    cache_in(tmp_path, monkeypatch)
    elf = asm.build(HOT, tmp_path, "hot")
    run(elf, jit=1)  # fills the cache
    never = 1 << 40
    eng = run_background(elf, never)
    st = eng.stats()
    assert st["jit"]["preloaded"] > 0 and st["jit"]["translated"] == 0
    assert st["jit_instructions"] > 0
    monkeypatch.setenv("VIRTKIT_JIT_PRELOAD", "off")
    cold = run_background(elf, never).stats()
    assert cold["jit"]["preloaded"] == 0 and cold["jit_instructions"] == 0


def test_preload_with_an_empty_cache_does_nothing(tmp_path, monkeypatch):
    cache_in(tmp_path, monkeypatch)
    elf = asm.build(HOT, tmp_path, "hot")
    st = run_background(elf, 1 << 40).stats()
    assert st["jit"]["preloaded"] == 0 and st["jit_instructions"] == 0


@pytest.mark.parametrize("bad", ["maybe", "2", "of"])
def test_preload_env_bad_values_are_refused(monkeypatch, bad):
    monkeypatch.setenv("VIRTKIT_JIT_PRELOAD", bad)
    with pytest.raises(ConfigError, match="VIRTKIT_JIT_PRELOAD"):
        jitmod.preload_from_env()


def test_capped_region_and_page_end_name_their_successors(tmp_path):
    """Straight-line code longer than a region asks for its continuation; so does code running into the next page."""
    lines = ["    .globl _start", "_start:", "    .option norvc", *(["    addi x5, x5, 1"] * 1100), "    PASS"]
    elf = asm.build("\n".join(lines), tmp_path, "long")
    mem = GuestMemory(16 << 20, RAM_BASE)
    entry = load_elf(elf, mem).entry - RAM_BASE
    r16 = mem.array.view(np.uint16)
    page = entry & ~0xFFF
    succ: list[int] = []
    insns = jitcodegen.decode_region(r16[page >> 1 : (page >> 1) + 2048], _ctab(), entry - page, succ=succ)
    assert len(insns) == jitcodegen.MAX_REGION
    assert succ == [entry - page + 4 * jitcodegen.MAX_REGION]  # 4-byte instructions (norvc)
    # from the last region of the page, straight on into the next page
    last = page + 4096 - 4 * 10
    succ = []
    jitcodegen.decode_region(r16[page >> 1 : (page >> 1) + 2048], _ctab(), last - page, succ=succ)
    assert succ == [4096]


def test_an_entry_whose_request_was_lost_is_asked_for_again(tmp_path, monkeypatch):
    """The core asks again every REQ_AGAIN entries of a block that still runs interpreted."""
    cache_in(tmp_path, monkeypatch)
    src = HOT.replace("li s0, 2000", "li s0, 9000")
    elf = asm.build(src, tmp_path, "hot9k")
    mem = GuestMemory(16 << 20, RAM_BASE)
    img = load_elf(elf, mem)
    eng = RiscvEngine(mem, 1, reset_pc=img.entry, deterministic=True, jit=64)
    eng.tohost = img.symbols["tohost"]
    f = img.symbols["f"] - RAM_BASE
    slot = jslot(f)
    eng.jit.jhot[slot] = 65  # past the threshold: as if its request had been dropped
    for _ in range(200):
        ex = eng.run(2_000_000)
        if eng.is_htif(ex):
            break
    assert eng.is_htif(ex) and ex.value == 1
    assert eng.jit.jtab[JT_KEY, slot] == f


def test_the_preload_plan_is_saved_and_a_damaged_one_is_replanned(tmp_path, monkeypatch):
    """A run saves its preload plan (one file: the next start reads it instead of hashing every page);
    a damaged plan file only costs planning from the page indexes again."""
    cache_in(tmp_path, monkeypatch)
    elf = asm.build(HOT, tmp_path, "hot")
    run(elf, jit=1)
    run_background(elf, 1 << 40)
    plans = list((tmp_path / "cache").rglob("plans/*"))
    assert len(plans) == 1
    plan = __import__("pickle").loads(plans[0].read_bytes())
    assert plan and [o for o, *_ in plan] == sorted((o for o, *_ in plan), reverse=True)  # earliest wanted last
    plans[0].write_bytes(b"\x80 damaged")
    st = run_background(elf, 1 << 40).stats()
    assert st["jit"]["preloaded"] > 0 and st["jit_instructions"] > 0


def test_a_page_changed_after_planning_is_not_preloaded(tmp_path, monkeypatch):
    """The preload installs code compiled from the bytes its plan was checked on: a store in between
    (the guest, a device) makes the install refuse it, never run stale code."""
    cache_in(tmp_path, monkeypatch)
    elf = asm.build(HOT, tmp_path, "hot")
    run(elf, jit=1)
    mem = GuestMemory(16 << 20, RAM_BASE)
    probe = GuestMemory(16 << 20, RAM_BASE)
    entry = load_elf(elf, probe).entry
    eng = RiscvEngine(mem, 1, reset_pc=entry, jit=1 << 40)
    img = load_elf(elf, mem)
    f = img.symbols["f"] - RAM_BASE
    eng.jit.plan_preload()
    assert any(page == f & ~0xFFF for _, page, _, _ in eng.jit._preload)
    mem.array[f] ^= 0x10  # a store the JIT's invalidation cannot see yet: nothing is installed there
    while eng.jit.preload_some(64):
        pass
    assert eng.jit.jtab[JT_KEY, jslot(f)] != f
    assert eng.jit.stale > 0


def test_programs_sharing_a_load_layout_never_run_each_others_code(tmp_path, monkeypatch):
    """Two programs loaded the same way share a saved preload plan; every region is checked against
    the bytes it was compiled from, so each program computes its own result, run after run."""
    cache_in(tmp_path, monkeypatch)
    progs = {3: asm.build(HOT, tmp_path, "hot3"), 5: asm.build(HOT.replace("addi a0, x0, 3", "addi a0, x0, 5"),
                                                               tmp_path, "hot5")}
    for elf in progs.values():
        run(elf, jit=1)  # fills the cache for both
    for k in (3, 5, 3, 5, 3):
        mem = GuestMemory(16 << 20, RAM_BASE)
        img = load_elf(progs[k], GuestMemory(16 << 20, RAM_BASE))
        eng = RiscvEngine(mem, 1, reset_pc=img.entry, jit=1 << 40)
        load_elf(progs[k], mem)
        eng.tohost = img.symbols["tohost"]
        eng.jit.plan_preload()
        while eng.jit.preload_some(64):  # the whole plan (saved plan, then the page indexes), before the guest
            pass
        for _ in range(2000):
            ex = eng.run(200_000)
            if eng.is_htif(ex):
                break
        assert eng.is_htif(ex)
        got = int.from_bytes(mem.read(img.symbols["result"], 8), "little")
        assert got == k * 2000, f"program {k} computed {got}"
        assert eng.stats()["jit"]["preloaded"] > 0


def test_the_loads_a_plan_is_filed_under_are_those_before_the_start(tmp_path, monkeypatch):
    """Device DMA once the guest runs (a disk read into RAM) does not change which saved plan a run uses
    or writes: the next run, with the same images, must find it."""
    cache_in(tmp_path, monkeypatch)
    # as for a kernel: too many pages to plan before the first instruction, the translator thread plans
    # later (here: never, so the window where the guest runs unplanned stays open)
    monkeypatch.setattr(jitmod, "PRELOAD_SYNC_PAGES", 0)
    monkeypatch.setattr(jitmod, "_translator", lambda ref: None)
    elf = asm.build(HOT, tmp_path, "hot")
    mem = GuestMemory(16 << 20, RAM_BASE)
    img = load_elf(elf, GuestMemory(16 << 20, RAM_BASE))
    eng = RiscvEngine(mem, 1, reset_pc=img.entry, jit=1 << 40)
    load_elf(elf, mem)
    eng.tohost = img.symbols["tohost"]
    eng.run(1)  # starts the engine (and its preload)
    assert eng.jit.preloading()
    planned = eng.jit._plan_path()
    mem.write(RAM_BASE + (8 << 20), b"dma" * 100)  # a device writing guest RAM while it runs
    assert eng.jit._plan_path() == planned
