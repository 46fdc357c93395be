"""The run loop's MMIO exit path: routing to the right device, unmapped accesses, batched console
output reaching the console in order (also when the guest idles or powers off mid-line).

The guests are a few hand-encoded RV64 instructions run by the real software engine."""

import struct
import threading
import time

import pytest

from tests.helpers.machines import virt
from tests.helpers.opensbi import payload_image
from tests.helpers.rvenc import POWEROFF, S0, S1, T0, T1, T2, WFI, addi, andi, beq, jal0, load, lui, putc, store
from virtkit.devices.sifive_test import SifiveTest
from virtkit.devices.uart16550 import Uart16550
from virtkit.machine.bus import Bus
from virtkit.machine.memory import GuestMemory
from virtkit.machine.vm import Vm


def test_encoder_matches_known_instructions():
    assert lui(T0, 0x100) == 0x001002B7 and store(2, T1, T0, 0) == 0x0062A023 and jal0(0) == 0x6F
    assert jal0(-4) == 0xFFDFF06F and addi(T1, T1, 0x555) == 0x55530313
    assert beq(T2, 0, -8) == 0xFE038CE3 and andi(T2, T2, 1) == 0x0013F393


class Console:
    """The board's console sink: every call kept; an event when ``want`` has arrived."""

    def __init__(self, want=b""):
        self.calls = []
        self.want = want
        self.seen = threading.Event()

    def __call__(self, data):
        self.calls.append(bytes(data))
        if self.want and self.want in self.out:
            self.seen.set()

    @property
    def out(self):
        return b"".join(self.calls)


def board(tmp_path, body, console):
    return virt(console, kernel=payload_image(tmp_path / "Image", body), firmware=None, mem_mib=32, rng=False)


def test_output_without_newline_reaches_console_while_guest_idles(tmp_path):
    """The guest prints "abc" (no newline) and waits for an interrupt forever: the bytes must not stay buffered."""
    con = Console(want=b"abc")
    b = board(tmp_path, [lui(T0, 0x10000), *putc("a"), *putc("b"), *putc("c"), WFI, jal0(-4)], con)
    b.vm.start()
    try:
        assert con.seen.wait(60), con.out
        assert b.vm.wait(0) is None  # still running: idling, not powered off
        assert con.out == b"abc"
        assert b.serial.tx_bytes == 3
    finally:
        b.vm.stop()
        b.vm.wait(30)
        b.vm.close()


def test_prompt_shows_while_guest_busy_polls_for_input_then_key_is_echoed(tmp_path):
    """Prompt, then LSR polled in a loop (no WFI, no budget exit): the prompt must still reach the console."""
    con = Console(want=b"> ")
    body = [lui(T0, 0x10000), *putc(">"), *putc(" "),
            load(4, T2, T0, 5), andi(T2, T2, 1), beq(T2, 0, -8),  # until LSR.DR
            load(4, T1, T0, 0), store(0, T1, T0, 0),               # echo RBR
            *POWEROFF]
    b = board(tmp_path, body, con)
    b.vm.start()
    try:
        assert con.seen.wait(60), con.out
        polled = b.vm.engine.stats()["fast_mmio_reads"]  # LSR polls are served from the UART's shadow
        time.sleep(0.05)
        assert b.vm.wait(0) is None and b.vm.engine.stats()["fast_mmio_reads"] > polled  # still polling
        b.serial.feed(b"k")
        res = b.vm.wait(60)
        assert res is not None and res.reason == "poweroff"
        assert con.out == b"> k"
    finally:
        b.vm.close()


def test_output_flushed_when_guest_powers_off_mid_line(tmp_path):
    con = Console()
    b = board(tmp_path, [lui(T0, 0x10000), *putc("b"), *putc("y"), *putc("e"), *POWEROFF], con)
    res = b.run(60)
    assert res.reason == "poweroff"
    assert con.out == b"bye"
    # no THR write exits: the engine buffers them all (they only transmit, and re-assert THRE when handed
    # over), and the power-off's exit hands them to the UART first
    assert res.stats["mmio"].get("uart0", 0) == 0 and res.stats["fast_mmio_writes"] == 3


def test_many_lines_every_byte_in_order_in_few_calls(tmp_path):
    """2,000 characters through LSR polling + THR writes arrive intact, in far fewer sink calls than bytes."""
    n = 2000
    # straight-line code: read LSR, write THR, for each character; a newline every 50
    text = bytes((ord("a") + i % 26) if i % 50 != 49 else 10 for i in range(n))
    body = [lui(T0, 0x10000)]
    for ch in text:
        body += [load(4, T2, T0, 5), addi(T1, 0, ch), store(0, T1, T0, 0)]
    body += POWEROFF
    con = Console()
    b = board(tmp_path, body, con)
    res = b.run(120)
    assert res.reason == "poweroff"
    assert con.out == text
    assert len(con.calls) < n // 10
    # every access happened, in order, nearly all without an exit (coalesced MMIO)
    assert res.stats["mmio"]["uart0"] + res.stats["fast_mmio_reads"] + res.stats["fast_mmio_writes"] == 2 * n
    assert res.stats["mmio"]["uart0"] <= 2


class Ram4:
    """A device with 4-byte cells, to see which device an access reached."""

    def __init__(self, tag):
        self.tag = tag
        self.cells = {}

    def read(self, offset, size):
        return self.cells.get(offset, self.tag)

    def write(self, offset, size, value):
        self.cells[offset] = value


def test_accesses_reach_the_right_device_and_unmapped_reads_are_zero():
    """Alternating devices (the loop caches the last region), an engine region with no device behind it."""
    from virtkit.engines.riscv.engine import RiscvEngine

    mem = GuestMemory(1 << 20, 0x8000_0000)
    eng = RiscvEngine(mem, 1, reset_pc=0x8000_0000)
    bus = Bus()
    a, c = Ram4(0xA), Ram4(0xC)
    regions = [(0x1000_0000, 0x100, a, "a"), (0x1000_0100, 0x100, c, "c"), (0x10_0000, 0x1000, None, "test")]
    vm = Vm(eng, bus)
    for base, size, dev, name in regions:
        bus.register(base, size, dev or SifiveTest(vm.power_event), name)
        eng.add_mmio_region(base, size)
    eng.add_mmio_region(0x2000_0000, 0x1000)  # the engine exits here, but no device answers
    prog = [
        lui(S0, 0x10000),                                   # s0 = device a; s0 + 0x100 = device c
        addi(T1, 0, 0x11), store(2, T1, S0, 0x10),          # a[0x10] = 0x11
        addi(T1, 0, 0x22), store(2, T1, S0, 0x110),         # c[0x10] = 0x22
        addi(T1, 0, 0x33), store(2, T1, S0, 0x14),          # a[0x14] = 0x33
        load(2, S1, S0, 0x10), store(3, S1, S0, 0x120),     # c[0x20] = a[0x10]
        load(2, S1, S0, 0x110), store(3, S1, S0, 0x20),     # a[0x20] = c[0x10]
        load(2, S1, S0, 0x118), store(3, S1, S0, 0x24),     # a[0x24] = c[0x18] (never written: tag 0xC)
        lui(T2, 0x20000), addi(S1, 0, 99), load(3, S1, T2, 8),  # s1 = unmapped read = 0
        store(3, S1, S0, 0x28), store(2, S1, T2, 0),        # a[0x28] = s1; unmapped write
        *POWEROFF,
    ]
    mem.write(0x8000_0000, struct.pack(f"<{len(prog)}I", *prog))
    res = vm.run(60)
    assert res.reason == "poweroff", res
    assert a.cells == {0x10: 0x11, 0x14: 0x33, 0x20: 0x22, 0x24: 0xC, 0x28: 0}
    assert c.cells == {0x10: 0x22, 0x20: 0x11}
    assert bus.unhandled == 2
    assert res.stats["mmio"] == {"a": 6, "c": 4, "test": 1} and res.stats["mmio_unhandled"] == 2


def test_a_failing_console_stops_the_vm_with_a_message(tmp_path):
    def broken(data):
        raise BrokenPipeError("console gone")

    b = board(tmp_path, [lui(T0, 0x10000), *putc("x"), WFI, jal0(-4)], broken)
    res = b.run(60)
    assert res.reason == "error" and "console gone" in res.message
    # nothing vanished: a failing closer is reported too
    b2 = board(tmp_path, [*POWEROFF], Console())

    def failing_close():
        raise OSError("disk flush failed")

    b2.vm.closers.append(("disk x", failing_close))
    res2 = b2.run(60)
    assert res2.reason == "poweroff" and any("disk flush failed" in e for e in res2.errors)


def test_unbuffered_uart_on_a_vm_still_delivers_each_byte():
    """A Vm built without flushers (another board) and an unbuffered UART: per-byte delivery as before."""
    from virtkit.engines.riscv.engine import RiscvEngine

    mem = GuestMemory(1 << 20, 0x8000_0000)
    eng = RiscvEngine(mem, 1, reset_pc=0x8000_0000)
    bus = Bus()
    vm = Vm(eng, bus)
    con = Console()
    for base, size, dev, name in [(0x1000_0000, 0x100, Uart16550(con), "uart"),
                                  (0x10_0000, 0x1000, SifiveTest(vm.power_event), "test")]:
        bus.register(base, size, dev, name)
        eng.add_mmio_region(base, size)
    prog = [lui(T0, 0x10000), *putc("o"), *putc("k"), *POWEROFF]
    mem.write(0x8000_0000, struct.pack(f"<{len(prog)}I", *prog))
    assert vm.run(60).reason == "poweroff"
    assert con.calls == [b"o", b"k"]


def _mmio_engine(prog):
    from virtkit.engines.riscv.engine import RiscvEngine

    mem = GuestMemory(1 << 20, 0x8000_0000)
    eng = RiscvEngine(mem, 1, reset_pc=0x8000_0000)
    eng.add_mmio_region(0x1000_0000, 0x1000)
    mem.write(0x8000_0000, struct.pack(f"<{len(prog)}I", *prog))
    return eng


def test_run_raw_gives_the_same_exits_and_results_as_run():
    """The run loop's fast path: same reasons, addresses, sizes, values (unsigned), same completed loads."""
    prog = [
        lui(S0, 0x10000),
        addi(T1, 0, -2), store(3, T1, S0, 0x18),        # sd -2: value 0xFFFF_FFFF_FFFF_FFFE
        store(0, T1, S0, 0x7),                           # sb: 0xFE
        load(0, S1, S0, 0x5),                            # lb: sign-extended
        load(4, T2, S0, 0x5),                            # lbu: zero-extended
        load(3, T1, S0, 0x8),                            # ld
        WFI, jal0(-4),
    ]
    seen = {}
    for method in ("run", "run_raw"):
        eng = _mmio_engine(prog)
        call = getattr(eng, method)
        exits = []
        for _ in range(20):
            ex = call(100)
            exits.append((ex.reason.name, ex.vcpu, ex.addr, ex.size, ex.value))
            if ex.reason.name == "MMIO_READ":
                eng.complete_mmio_read({0x1000_0005: 0x80, 0x1000_0008: 0x8000_0000_0000_0001}[ex.addr])
            if ex.reason.name == "HALT":
                break
        seen[method] = (exits, eng.get_reg(0, S1), eng.get_reg(0, T2), eng.get_reg(0, T1), eng.stats()["exits"])
    assert seen["run_raw"] == seen["run"]
    exits, s1, t2, t1, _ = seen["run_raw"]
    assert ("MMIO_WRITE", 0, 0x1000_0018, 8, 0xFFFF_FFFF_FFFF_FFFE) in exits
    assert ("MMIO_WRITE", 0, 0x1000_0007, 1, 0xFE) in exits
    assert (s1, t2, t1) == (0xFFFF_FFFF_FFFF_FF80, 0x80, 0x8000_0000_0000_0001)


def test_run_raw_insists_on_completing_a_read():
    eng = _mmio_engine([lui(S0, 0x10000), load(2, S1, S0, 0), WFI, jal0(-4)])
    ex = eng.run_raw(100)
    assert ex.reason.name == "MMIO_READ" and (ex.addr, ex.size) == (0x1000_0000, 4)
    assert "MMIO_READ" in repr(ex)
    with pytest.raises(RuntimeError, match="complete_read"):
        eng.run_raw(100)
    eng.complete_mmio_read(0xFFFF_FFFF)
    assert eng.get_reg(0, S1) == 0xFFFF_FFFF_FFFF_FFFF  # lw sign-extends
    assert eng.run_raw(100).reason.name == "HALT"
