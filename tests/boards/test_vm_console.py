"""The run loop's I/O thread and the terminal console's Ctrl-A escapes."""

import os
import threading

from tests.helpers.machines import virt
from tests.helpers.opensbi import FW_JUMP, payload_image
from virtkit.machine.vm import IoLoop, RunResult


def test_ioloop_calls_readers_and_survives_a_failing_callback():
    loop = IoLoop()
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    got = []
    ev = threading.Event()

    def good():
        got.append(os.read(r1, 100))
        ev.set()

    def bad():
        os.read(r2, 100)
        raise RuntimeError("device bug")

    loop.add_reader(r1, good)
    loop.add_reader(r2, bad)
    loop.start()
    try:
        os.write(w2, b"x")
        os.write(w1, b"hello")
        assert ev.wait(30)
        assert got == [b"hello"]
        ev.clear()
        os.write(w2, b"y")
        os.write(w1, b"again")
        assert ev.wait(30) and got[-1] == b"again"
        assert any("device bug" in e for e in loop.errors)
    finally:
        loop.stop()
        for fd in (r1, w1, r2, w2):
            os.close(fd)


def test_run_result_exit_status():
    assert RunResult("poweroff").exit_status == 0
    assert RunResult("fail", 7).exit_status == 7
    assert RunResult("error", 1, "boom").exit_status == 1
    assert RunResult("timeout").exit_status == 1


def test_console_escapes_and_input_queue(tmp_path):
    """Ctrl-A escapes are split from what goes to the guest; input waits on the host until the driver is ready."""
    from virtkit.commands._terminal import EscapeReader

    board = virt(kernel=payload_image(tmp_path / "Image", [0x6F]), firmware=str(FW_JUMP))
    keys = []
    esc = EscapeReader(keys.append)
    try:
        data = esc.feed(b"ls\x01a\x01s\x01zq")
        assert data == b"ls\x01q" and keys == ["s", "z"]  # a literal Ctrl-A; unknown escapes are the caller's
        board.console.type(data)
        uart = board.serial
        assert uart.rx_pending == 4
        uart.pump()
        assert uart.read(5, 1) & 1 == 0  # receive interrupts off: nothing on the line yet (no byte lost to a reset)
        uart.write(1, 1, 1)  # the driver enables receive interrupts
        assert bytes(uart.read(0, 1) for _ in range(4)) == b"ls\x01q"
    finally:
        board.vm.close()


def test_break_reads_as_zero_with_bi():
    from virtkit.devices.uart16550 import LSR_BI, LSR_DR, Uart16550

    levels = []
    u = Uart16550(irq=levels.append)
    u.write(1, 1, 0x05)  # IER: receive data + line status interrupts
    u.send_break(b"o")
    u.pump()
    assert u.read(2, 1) & 0x0F == 0x06  # IIR: receiver line status first
    lsr = u.read(5, 1)
    assert lsr & LSR_BI and lsr & LSR_DR
    assert u.read(0, 1) == 0  # the break character
    assert u.read(5, 1) & LSR_BI == 0
    assert u.read(0, 1) == ord("o")
