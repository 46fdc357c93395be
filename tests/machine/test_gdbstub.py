"""The GDB remote stub (``virtkit run --gdb ... --gdb-wait``): Debian's ``gdb-multiarch`` is the client.

A student stops at the instruction that traps and looks at it: a breakpoint on the trap entry of the SBI
probe (an S-mode program with symbols) and of the Linux kernel (``handle_exception`` in the default
guest's vmlinux), ``scause`` and the privilege mode read, one instruction stepped, then the guest runs on to
its end. Malformed packets get errors and never stop the guest.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.boards.test_sbi_conformance import probe  # noqa: F401  (the probe ELF fixture)
from tests.helpers import BOOT_TIMEOUT, require_tool

GDB = "gdb-multiarch"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "virtkit.cli", "run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


def _listening(vm: subprocess.Popen) -> None:
    """Wait for the stub's "listening" line (connecting to find out would be a debugger session)."""
    line = vm.stderr.readline()
    assert "gdb stub listening on 127.0.0.1:" in line, line + vm.stderr.read()


def _gdb(binary: Path, port: int, *commands: str) -> str:
    cmd = [GDB, "-nx", "-batch", "-ex", "set pagination off", "-ex", "set confirm off", "-ex",
           f"target remote 127.0.0.1:{port}"]
    for c in commands:
        cmd += ["-ex", c]
    p = subprocess.run([*cmd, str(binary)], capture_output=True, text=True, timeout=300)
    return p.stdout + p.stderr


def _symbol(binary: Path, name: str) -> int:
    out = subprocess.run(["riscv64-linux-gnu-nm", str(binary)], capture_output=True, text=True, check=True).stdout
    m = re.search(rf"^([0-9a-f]+) \w {re.escape(name)}$", out, re.M)
    assert m, name
    return int(m.group(1), 16)


def test_gdb_breaks_on_the_trap_entry_reads_scause_steps_and_continues(probe):  # noqa: F811
    require_tool(GDB)
    port = _port()
    vm = _start("--bios", "builtin", "--kernel", str(probe), "--mem", "64M", "--cpus", "2",
                "--gdb", f"tcp::{port}", "--gdb-wait", "--timeout", "300")
    try:
        _listening(vm)
        entry = _symbol(probe, "trap_entry")
        out = _gdb(probe, port, "info threads", "p/x $pc", "break *trap_entry", "continue", "p/x $scause",
                   "p $priv", "p/x $pc", "stepi", "p/x $pc", "p/x $sp", "delete", "watch *(long *)&timer_irqs",
                   "continue", "p *(long *)&timer_irqs", "delete", "continue")
        stdout, stderr = vm.communicate(timeout=120)
    finally:
        vm.kill()
    assert "Thread 2" in out and "hart 1, S-mode, stopped" in out, out  # the second hart, STOPPED in HSM
    pcs = [int(v, 16) for v in re.findall(r"^\$\d+ = (0x[0-9a-f]+)$", out, re.M)]
    assert pcs[0] == 0x8020_0000, out  # held before the first instruction (the ELF's entry)
    assert "Breakpoint 1, " in out and "trap_entry" in out, out
    assert pcs[1] == (1 << 63) | 5, out  # scause: the supervisor timer interrupt the probe armed
    assert re.search(r"^\$\d+ = prv:1 \[Supervisor\]$|^\$\d+ = 1$", out, re.M), out
    assert pcs[2] == entry and pcs[3] in (entry + 2, entry + 4), out  # stepped over one instruction
    assert "Hardware watchpoint 2: *(long *)&timer_irqs" in out, out
    assert "Old value = 0" in out and "New value = 1" in out, out
    assert "exited normally" in out, out  # the guest ran to its end: SRST power-off
    assert vm.returncode == 0 and "SBI-SUITE done" in stdout and "0 failed" in stdout, stderr


@pytest.mark.slow
def test_gdb_breaks_in_the_linux_kernels_trap_entry(guest_images):
    require_tool(GDB)
    vmlinux = guest_images.kernel.parent / "vmlinux"
    if not vmlinux.exists():
        pytest.skip(f"{vmlinux} is missing (the kernel recipe keeps it)")
    port = _port()
    vm = _start("--kernel", str(guest_images.kernel), "--initrd", str(guest_images.initrd), "--bios",
                str(guest_images.firmware), "--gdb", f"tcp::{port}", "--timeout", BOOT_TIMEOUT,
                "--exec", "echo ready; sleep 3; echo after")
    try:
        assert vm.stdout.readline().strip() == "ready"  # the kernel has paging on: its addresses translate
        out = _gdb(vmlinux, port, "break handle_exception", "continue", "p/x $scause", "p $priv",
                   "stepi", "info symbol $pc", "delete", "detach")
        stdout, stderr = vm.communicate(timeout=300)
    finally:
        vm.kill()
    assert "Breakpoint 1, " in out and "handle_exception" in out, out
    cause = int(re.findall(r"^\$1 = (0x[0-9a-f]+)$", out, re.M)[0], 16)
    assert cause >> 63 or cause in (8, 12, 13, 15), out  # an interrupt, a system call or a page fault
    assert "handle_exception + " in out, out  # one instruction further, still in the trap entry
    assert vm.returncode == 0 and stdout.strip() == "after", stderr


def _packet(data: bytes) -> bytes:
    return b"$" + data + b"#" + b"%02x" % (sum(data) & 0xFF)


def _ask(s: socket.socket, data: bytes, raw: bool = False) -> bytes:
    s.sendall(data if raw else _packet(data))
    buf = b""
    while not re.search(rb"\$([^#]*)#..", buf) and not buf.startswith(b"-"):
        chunk = s.recv(65536)
        if not chunk:
            return buf
        buf += chunk
    m = re.search(rb"\$([^#]*)#..", buf)
    s.sendall(b"+")
    return m.group(1) if m else buf


def test_malformed_packets_get_errors_and_the_guest_runs_on(probe):  # noqa: F811
    port = _port()
    vm = _start("--bios", "builtin", "--kernel", str(probe), "--mem", "64M", "--gdb", f"tcp::{port}",
                "--gdb-wait", "--timeout", "300")
    try:
        _listening(vm)
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        assert _ask(s, b"$m80200000,4#00", raw=True) == b"-"  # a bad checksum is refused ('-')
        assert len(_ask(s, b"m80200000,4")) == 8  # 4 bytes in hex
        assert _ask(s, b"mzz,4") == b"E22"
        assert _ask(s, b"m10,4") == b"E14"  # not RAM, not mapped
        assert _ask(s, b"Hg99") == b"E22"  # no such thread
        assert _ask(s, b"p9999") == b"E45"
        assert _ask(s, b"P20=12") == b"E45"  # a register value of the wrong size
        assert _ask(s, b"Z0,10,4") == b"E14"
        assert _ask(s, b"M80200000,8:0011") == b"E22"  # the length and the data disagree
        assert _ask(s, b"Z2,80200000,0") == b"E22"  # a watchpoint of no bytes
        for i in range(4):
            assert _ask(s, b"Z2,%x,8" % (0x80200000 + 8 * i)) == b"OK"  # one debug trigger each
        assert _ask(s, b"Z3,80201000,8") == b"E01"  # none left
        assert _ask(s, b"z2,80200000,8") == b"OK" and _ask(s, b"Z3,80201000,8") == b"OK"
        assert _ask(s, b"qUnknownThing") == b""
        assert _ask(s, b"qXfer:features:read:nosuch.xml:0,100") == b"E00"
        assert _ask(s, b"qXfer:features:read:target.xml:0,ffff").startswith(b"l<?xml")
        s.sendall(b"$" + b"A" * 70000)  # a packet that never ends: the stub drops the client
        s.settimeout(30)
        assert s.recv(100) == b""  # closed
        s.close()
        stdout, stderr = vm.communicate(timeout=120)  # the stub let the guest run on when the client left
    finally:
        vm.kill()
    assert vm.returncode == 0 and "0 failed" in stdout, stderr


def test_random_packets_never_break_the_stub_or_the_guest(probe):  # noqa: F811
    """Hostile debuggers: random but well-framed packets (commands with garbage arguments) get some reply,
    the stub keeps serving, and the guest still runs to its end once the client leaves."""
    import random

    port = _port()
    vm = _start("--bios", "builtin", "--kernel", str(probe), "--mem", "64M", "--cpus", "2", "--gdb",
                f"tcp::{port}", "--gdb-wait", "--timeout", "300")
    rnd = random.Random(3)
    try:
        _listening(vm)
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        # (no kill or detach, and no memory or register writes: a debugger may legitimately wreck its guest;
        # malformed writes are in the test above)
        cmds = [b"g", b"p", b"m", b"Z0,", b"z0,", b"Z2,", b"z3,", b"H", b"T", b"qXfer:features:read:",
                b"qThreadExtraInfo,", b"vCont;s:", b"?", b"qC", b"qfThreadInfo"]
        for _ in range(400):
            c = rnd.choice(cmds)
            junk = bytes(rnd.choice(b"0123456789abcdefxyz,:;=-") for _ in range(rnd.randrange(0, 40)))
            reply = _ask(s, c + junk)
            assert isinstance(reply, bytes)
        assert len(_ask(s, b"g")) == 33 * 16  # still answering: x0-x31 and pc
        s.close()
        stdout, stderr = vm.communicate(timeout=120)
    finally:
        vm.kill()
    assert "0 failed" in stdout, stderr


def test_bad_gdb_addresses_are_refused():
    from tests.helpers import virtkit

    for addr, msg in (("tcp::99999", "expected tcp::PORT"), ("unix:", "unix: needs a path"), ("bogus", "expected")):
        p = virtkit("run", "--gdb", addr, "--exec", "true", timeout=120)
        assert p.returncode != 0 and msg in p.stderr, (addr, p.stderr)
    p = virtkit("run", "--gdb-wait", "--exec", "true")
    assert p.returncode != 0 and "--gdb-wait (-S) goes with --gdb" in p.stderr


STORE_LOOP = r"""
    .globl _start
_start:
    la s1, counter
1:  ld t0, 0(s1)
    addi t0, t0, 1
    sd t0, 0(s1)
    j 1b
.data
.align 12
counter: .dword 0
"""


def test_single_steps_pass_over_a_watched_store(tmp_path):
    """A step whose own store is watched lets the store happen (it would otherwise stop before it forever)."""
    require_tool("riscv64-linux-gnu-gcc")
    from virtkit.engines.riscv.asm import build

    elf = build(STORE_LOOP, tmp_path, "loop")
    counter = _symbol(elf, "counter")
    port = _port()
    vm = _start("--bios", "none", "--kernel", str(elf), "--gdb", f"tcp::{port}", "--gdb-wait", "--timeout", "120")
    try:
        _listening(vm)
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        assert _ask(s, b"Z2,%x,8" % counter) == b"OK"
        for _ in range(12):  # three trips round the loop
            assert _ask(s, b"vCont;s:1").startswith(b"T05")
        value = int.from_bytes(bytes.fromhex(_ask(s, b"m%x,8" % counter).decode()), "little")
        assert value >= 2, value
        s.sendall(_packet(b"k"))
        s.close()
        vm.wait(timeout=60)
    finally:
        vm.kill()
