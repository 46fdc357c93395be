"""The engine's Python interface: bad arguments, host-clock time, GIL release, Numba cache key."""

from __future__ import annotations

import struct
import threading
import time

import pytest

from virtkit.devices.htif import Htif
from virtkit.engines.riscv.corecache import _source_hash, cache_dir
from virtkit.engines.riscv.engine import ExitReason, RiscvEngine
from virtkit.errors import ConfigError
from virtkit.machine.memory import GuestMemory

LOOP = struct.pack("<I", 0x0000006F)  # j .


def _engine(**kw) -> tuple[GuestMemory, RiscvEngine]:
    mem = GuestMemory(1 << 16, 0x8000_0000)
    mem.write(0x8000_0000, LOOP)
    return mem, RiscvEngine(mem, **kw)


def test_bad_configuration_is_a_clear_error():
    mem = GuestMemory(1 << 16, 0x8000_0000)
    with pytest.raises(ConfigError, match="harts"):
        RiscvEngine(mem, 0)
    eng = RiscvEngine(mem)
    with pytest.raises(ConfigError, match="overlaps RAM"):
        eng.add_mmio_region(0x8000_0000, 0x1000)
    with pytest.raises(ConfigError, match="bad MMIO region"):
        eng.add_mmio_region(0x1000_0000, 0)
    with pytest.raises(ConfigError, match="not in RAM"):
        eng.tohost = 0x1000
    with pytest.raises(ValueError):
        eng.set_irq(0, 7, True)
    with pytest.raises(ValueError):
        eng.read_csr(0, 0x7C0)
    with pytest.raises(RuntimeError):
        eng.complete_mmio_read(0)


def test_time_follows_the_host_clock_monotonically():
    _, eng = _engine()
    eng.run(1000)
    t1 = eng.mtime
    time.sleep(0.01)
    eng.run(1000)
    t2 = eng.mtime
    assert t2 > t1 > 0
    assert eng.read_csr(0, 0xC01) >= t2  # the time CSR reads the CLINT's mtime


def test_deterministic_time_follows_instructions():
    _, a = _engine(deterministic=True)
    _, b = _engine(deterministic=True)
    a.run(100_000)
    b.run(100_000)
    assert a.mtime == b.mtime > 0


def test_run_releases_the_gil_and_request_exit_stops_it():
    _, eng = _engine(deterministic=True)
    budget = 10**12  # hours of work: only request_exit() can end it
    result = {}
    th = threading.Thread(target=lambda: result.setdefault("ex", eng.run(budget)))
    th.start()
    while not eng.stats()["per_hart"][0] and th.is_alive():
        time.sleep(0.01)  # Python keeps running here and sees the core's progress
    eng.request_exit()
    th.join(timeout=600)
    assert not th.is_alive()
    assert result["ex"].reason is ExitReason.BUDGET
    assert 0 < eng.stats()["instructions"] < budget


def test_htif_rejects_bad_syscall_pointer_without_crashing():
    mem = GuestMemory(1 << 16, 0x8000_0000)
    out = []
    h = Htif(mem, 0x8000_1000, 0x8000_1040, console=out.append)
    assert h.handle(0x10) is None  # pointer outside RAM: a message, no exception
    assert b"bad syscall block" in b"".join(out)
    assert h.handle(0xFF << 56) is None  # unknown device: acknowledged and ignored
    assert h.handle((5 << 1) | 1) == 5


def test_numba_cache_is_keyed_by_the_compiled_sources(monkeypatch, tmp_path):
    monkeypatch.setenv("VIRTKIT_NUMBA_CACHE", str(tmp_path))
    d = cache_dir()
    assert d.parent == tmp_path and d.name == _source_hash()
    assert len(d.name) == 16
