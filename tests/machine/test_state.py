"""Every device and the engine own their state: save()/restore() round trips, versions, bad records.

The walker test imports every module under ``virtkit.devices`` and ``virtkit.engines`` and fails for
any device class (anything with guest ``read``/``write`` registers, every virtio device model) or
engine that lacks the state contract of :mod:`virtkit.machine.state`.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import struct

import pytest

import virtkit.devices
import virtkit.engines
from tests.helpers.virtio_driver import Driver
from virtkit.devices.goldfish_rtc import GoldfishRtc
from virtkit.devices.htif import Htif
from virtkit.devices.plic import Plic
from virtkit.devices.sifive_test import SifiveTest
from virtkit.devices.uart16550 import BREAK, IER_RDI, Uart16550
from virtkit.devices.virtio import mmio as M
from virtkit.devices.virtio.blk import VirtioBlk
from virtkit.devices.virtio.console import VirtioConsole
from virtkit.devices.virtio.device import VirtioDevice
from virtkit.devices.virtio.net import VirtioNet
from virtkit.devices.virtio.rng import VirtioRng
from virtkit.machine.memory import GuestMemory
from virtkit.machine.state import StateError, Stateful
from virtkit.storage.backend import RawFile

RAM = 0x8000_0000


def _classes(pkg) -> list[type]:
    out = []
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        mod = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(mod, inspect.isclass):
            if cls.__module__ == mod.__name__:
                out.append(cls)
    return out


def _is_device(cls: type) -> bool:
    if issubclass(cls, VirtioDevice):
        return True
    return callable(getattr(cls, "read", None)) and callable(getattr(cls, "write", None)) and \
        "offset" in inspect.signature(cls.write).parameters


def test_every_device_class_and_engine_has_state_methods():
    devices = [c for c in _classes(virtkit.devices) if _is_device(c)]
    engines = [c for c in _classes(virtkit.engines) if c.__name__.endswith("Engine") and hasattr(c, "run")]
    assert len(devices) >= 10 and engines, (devices, engines)  # the walk found them
    missing = [c.__qualname__ for c in devices + engines
               if not all(hasattr(c, a) for a in ("STATE_KIND", "STATE_VERSION", "save", "restore"))]
    assert not missing, f"no save()/restore() state contract: {missing}"
    kinds: dict[str, str] = {}
    for c in devices + engines:
        if c is VirtioDevice:
            continue
        assert c.STATE_KIND not in kinds, f"{c.__qualname__} and {kinds[c.STATE_KIND]} share {c.STATE_KIND!r}"
        kinds[c.STATE_KIND] = c.__qualname__
        assert isinstance(c.STATE_VERSION, int) and c.STATE_VERSION >= 1


def roundtrip(make, prepare=lambda d: None):
    """Save a prepared device, restore into a fresh one through JSON, and check the two save the same."""
    a = make()
    prepare(a)
    saved = a.save()
    b = make()
    b.restore(json.loads(json.dumps(saved)))
    assert b.save() == saved
    return a, b, saved


def test_uart_state_roundtrip_keeps_fifo_pending_input_and_line():
    levels = []
    a, b, saved = roundtrip(lambda: Uart16550(irq=levels.append), lambda u: (
        u.write(3, 1, 0x83), u.write(0, 1, 0x01), u.write(3, 1, 0x03),  # divisor latch 1
        u.write(7, 1, 0x5A), u.write(2, 1, 0x01), u.feed(b"hello"), u.send_break(b"o"), u.feed(b"x" * 20),
        u.write(1, 1, IER_RDI), u.pump()))
    assert saved["rx"] == list(b"hello") + [BREAK, ord("o")] + [ord("x")] * 9  # the 16-byte FIFO
    assert saved["host"] == [ord("x")] * 11  # the rest waits on the host side
    assert levels[-1] is True  # the restored UART drove its line to the saved level
    assert bytes(b.read(0, 1) for _ in range(5)) == b"hello"
    assert b.read(7, 1) == 0x5A


def test_plic_state_roundtrip_redrives_outputs():
    calls = []
    a = Plic(2, lambda h, bit, lvl: calls.append((h, bit, lvl)), 32)
    a.write(4 * 3, 4, 5)  # priority of source 3
    a.write(0x2000 + 0x80 * 1, 4, 1 << 3)  # context 1 (hart 0 S-mode) enables source 3
    a.set_level(3, True)
    saved = a.save()
    calls.clear()
    b = Plic(2, lambda h, bit, lvl: calls.append((h, bit, lvl)), 32)
    b.restore(json.loads(json.dumps(saved)))
    assert b.save() == saved and (0, 9, 1) in calls
    assert b.read(0x20_0000 + 0x1000 * 1 + 4, 4) == 3  # the claim returns the restored pending source


def test_rtc_test_device_and_htif_roundtrip():
    roundtrip(lambda: GoldfishRtc(clock=lambda: 10**18), lambda r: (
        r.write(0x04, 4, 1), r.write(0x00, 4, 2), r.write(0x10, 4, 1), r.write(0x0C, 4, 3)))
    roundtrip(lambda: SifiveTest(lambda k, c: None), lambda t: t.write(0, 4, 0x3333 | 7 << 16))
    mem = GuestMemory(1 << 20, RAM)
    roundtrip(lambda: Htif(mem, RAM), lambda h: h.handle(7))


def _blk(tmp_path, mem):
    """A virtio-blk device on its own new image (two devices may not share one: image locks)."""
    img = tmp_path / f"d{len(list(tmp_path.glob('d*.img')))}.img"
    img.write_bytes(bytes(1 << 20))
    return VirtioBlk(mem, RawFile(str(img)))


@pytest.mark.parametrize("kind", ["blk", "net", "rng", "console", "empty"])
def test_virtio_transport_and_device_roundtrip(tmp_path, kind):
    import socket

    from tests.helpers.netlink import SocketLink

    mem = GuestMemory(1 << 20, RAM)
    def nic():
        return VirtioNet(mem, SocketLink(socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)[0]), b"\x02" * 6)

    make_dev = {"blk": lambda: _blk(tmp_path, mem), "net": nic,
                "rng": lambda: VirtioRng(mem), "console": lambda: VirtioConsole(mem), "empty": lambda: None}[kind]
    a = M.MmioTransport(make_dev())
    if kind != "empty":
        d = Driver(mem, a)
        d.setup(len(a.device.queues))
        if kind == "blk":  # one request served: indices move
            d.add(0, [struct.pack("<IIQ", 0, 0, 0)], [512, 1])
            d.kick(0)
        elif kind == "console":
            a.device.feed(b"typed before the guest gave buffers")
    saved = a.save()
    b = M.MmioTransport(make_dev())
    b.restore(json.loads(json.dumps(saved)))
    assert b.save() == saved
    if kind == "blk":
        q = b.device.queues[0]
        assert q.ready and q.used_idx == 1 and q.last_avail == 1


def test_engine_state_roundtrip_and_equal_continuation():
    from virtkit.engines.riscv.engine import RiscvEngine

    def prog(mem):
        code = [0x00000293, 0x00128293, 0xFFDFF06F]  # li t0, 0; loop: addi t0, t0, 1; j loop
        mem.write(RAM, b"".join(struct.pack("<I", c) for c in code))

    mems = [GuestMemory(1 << 20, RAM) for _ in range(2)]
    for m in mems:
        prog(m)
    a = RiscvEngine(mems[0], 2, deterministic=True, jit=0)
    a.write_csr(0, 0x340, 0x1234)  # mscratch
    a.set_freg(1, 3, -5)
    a.run(1001)
    saved = a.save()
    b = RiscvEngine(mems[1], 2, deterministic=True, jit=0)
    b.restore(json.loads(json.dumps(saved)))
    assert b.save() == saved
    assert b.read_csr(0, 0x340) == 0x1234 and b.get_freg(1, 3) == (1 << 64) - 5 and b.mtime == a.mtime
    a.run(5000)
    b.run(5000)
    assert a.get_reg(0, 5) == b.get_reg(0, 5) > 1000 and a.pc(0) == b.pc(0)
    a.close()
    b.close()


def test_state_records_are_checked():
    u = Uart16550()
    good = u.save()
    for bad, msg in [
        ({**good, "kind": "plic"}, "state of a 'plic' given to a 'uart16550'"),
        ({**good, "version": 99}, "version 99 cannot be read"),
        ({k: v for k, v in good.items() if k != "lcr"}, "field 'lcr' is missing"),
        ({**good, "lcr": "3"}, "field 'lcr' must be an integer"),
        ({**good, "lcr": 256}, "outside [0, 255]"),
        ({**good, "thr_ipending": 1}, "must be true or false"),
        ({**good, "rx": list(range(17))}, "receive FIFO of 17 bytes"),
        ([], "must be an object"),
    ]:
        with pytest.raises(StateError, match=msg.replace("[", r"\[").replace("(", r"\(")):
            u.restore(bad)
    assert u.save() == good  # a rejected record changed nothing


def test_virtio_restore_refuses_other_device_or_bad_queue(tmp_path):
    mem = GuestMemory(1 << 20, RAM)
    blk = M.MmioTransport(_blk(tmp_path, mem))
    Driver(mem, blk).setup(1)
    rng = M.MmioTransport(VirtioRng(mem))
    with pytest.raises(StateError, match="state of a 'virtio-blk' given to a 'virtio-rng'"):
        rng.restore(blk.save())
    with pytest.raises(StateError, match="a device saved in a slot this machine leaves empty"):
        M.MmioTransport(None).restore(blk.save())
    s = blk.save()
    s["device"]["queues"][0]["desc"] = RAM + (1 << 20) - 8  # a ready ring that leaves RAM
    fresh = M.MmioTransport(_blk(tmp_path, mem))
    with pytest.raises(StateError, match="virtio-blk queue 0"):
        fresh.restore(s)


def test_stateful_protocol_matches():
    assert isinstance(Uart16550(), Stateful)
