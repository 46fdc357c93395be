"""The run loop's I/O thread and the terminal console's Ctrl-A escapes."""

import os
import threading

from tests.boards.test_boot_opensbi import FW_JUMP, payload_image
from virtkit.boards.riscv_virt import BoardConfig, RiscvVirt
from virtkit.boards.runner import TerminalConsole
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


def test_console_escapes(tmp_path):
    board = RiscvVirt(BoardConfig(kernel=payload_image(tmp_path / "Image", [0x6F]), firmware=str(FW_JUMP)))
    r, w = os.pipe()
    stats = []
    con = TerminalConsole(board, lambda: stats.append(1), fd=r)
    con.is_tty = True  # escapes only apply on a terminal
    try:
        os.write(w, b"ls\x01a\x01s\x01zq")
        con.on_input()
        assert board.uart.rx_pending == 4  # "ls", one literal Ctrl-A, "q"; unknown escape dropped
        assert bytes(board.uart.read(0, 1) for _ in range(4)) == b"ls\x01q"
        assert stats == [1]
        os.write(w, b"\x01x")
        con.on_input()
        res = board.vm.wait(0)
        assert board.vm._stop.is_set() and (res is None or res.reason == "stopped")
    finally:
        board.vm.close()
        os.close(r)
        os.close(w)
