"""``--bios builtin``: no firmware in the guest, virtkit itself is the SBI (paravirtualization, KVM's model).

The kernel starts in S-mode on hart 0; the other harts are STOPPED until the kernel starts them through
HSM; set_timer, IPIs and remote fences are served inside the compiled core, every other call is a
HYPERCALL exit answered by ``virtkit.devices.sbi``; the guest powers off through SRST.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import run_guest_exec, virtkit
from virtkit.devices.sbi import Sbi
from virtkit.engines.riscv.engine import RiscvEngine
from virtkit.machine.memory import GuestMemory
from virtkit.machine.state import StateError


@pytest.mark.slow
def test_linux_boots_on_the_builtin_sbi_with_two_harts_and_powers_off_through_srst(guest_images):
    p = run_guest_exec(guest_images, "nproc; dmesg | grep -o 'SBI implementation ID=0x766b'; "
                       "dmesg | grep -c 'SBI HSM extension detected'; time -p true 2>&1 | grep -c real",
                       "--bios", "builtin", "--cpus", "2", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["reason"] == "poweroff" and out["exit_status"] == 0, out["message"]
    # (time reads the clock in U-mode: rdtime needs scounteren.TM, which the SBI implementation sets)
    assert out["output"].split("\n")[:4] == ["2", "SBI implementation ID=0x766b", "1", "1"], out["output"]
    assert "OpenSBI" not in out["console"]
    calls, inside = out["stats"]["sbi_calls"], out["stats"]["sbi_in_core"]
    assert calls["HSM"] >= 1 and calls["SRST"] == 1  # hart 1 started through HSM; the power-off was SRST's
    assert inside["TIME"] > 0 and inside["IPI"] > 0 and inside["RFENCE"] > 0  # the hot calls never left the core
    assert inside["legacy"] > 1000  # earlycon=sbi's putchar: a store to the UART's THR inside the core
    assert out["stats"]["exits"]["HYPERCALL"] == sum(v - inside.get(k, 0) for k, v in calls.items())
    assert out["stats"]["exits"]["HYPERCALL"] < 100
    assert out["stats"]["per_hart"][1] > 0


def test_builtin_sbi_needs_the_virt_board(tmp_path):
    prog = tmp_path / "p.elf"
    prog.write_bytes(b"\x7fELF")
    p = virtkit("run", "--board", "riscv64-spike", "--bios", "builtin", "--kernel", str(prog))
    assert p.returncode != 0 and "builtin SBI needs an S-mode kernel on riscv64-virt" in p.stderr


def _engine(sbi: bool, harts: int = 2) -> RiscvEngine:
    return RiscvEngine(GuestMemory(1 << 20, 0x8000_0000), harts, sbi=sbi)


def test_builtin_sbi_harts_start_in_s_mode_with_the_others_stopped():
    eng = _engine(True, 3)
    assert [eng.priv(h) for h in range(3)] == [1, 1, 1]
    assert [eng.hart_state(h) for h in range(3)] == ["running", "stopped", "stopped"]
    assert eng.read_csr(0, 0x303) == 0x222 and eng.read_csr(0, 0x302) & (1 << 9) == 0  # S ecalls stay with the VMM


def test_a_snapshot_keeps_whether_the_vmm_is_the_sbi():
    a = _engine(True)
    state = json.loads(json.dumps(a.save()))
    b = _engine(True)
    b.restore(state)
    again = b.save()
    assert b.hart_state(1) == "stopped" and again["harts"] == state["harts"] and again["sbi"] == 1
    with pytest.raises(StateError, match="restored into a machine without --bios builtin"):
        _engine(False).restore(state)
    bad = json.loads(json.dumps(state))
    bad["harts"][1]["wfi"] = 7
    with pytest.raises(StateError, match="wait state 7"):
        _engine(True).restore(bad)


class _Console:
    def __init__(self) -> None:
        self.out = bytearray()
        self.input = bytearray(b"hi")

    def emit(self, data: bytes) -> None:
        self.out += data

    def take_input(self, n: int) -> bytes:
        data, self.input[:] = bytes(self.input[:n]), self.input[n:]
        return data


def _sbi(harts: int = 2) -> tuple[Sbi, RiscvEngine, list]:
    eng = _engine(True, harts)
    events: list = []
    return Sbi(eng, _Console(), lambda kind, code: events.append((kind, code))), eng, events


M64 = (1 << 64) - 1


def call(sbi: Sbi, ext: int, fid: int, *a: int, hart: int = 0) -> tuple[int, ...]:
    args = (list(a) + [0] * 6)[:6]
    return sbi.hypercall(hart, (*[v & M64 for v in args], fid, ext))


def test_hsm_calls_move_harts_and_refuse_bad_ones():
    sbi, eng, _ = _sbi()
    assert call(sbi, 0x48534D, 2, 1) == (0, 1)  # STOPPED
    assert call(sbi, 0x48534D, 0, 1, 0x8000_1000, 0x5EED) == (0, 0)
    assert eng.hart_state(1) == "running" and eng.pc(1) == 0x8000_1000 and eng.get_reg(1, 11) == 0x5EED
    assert call(sbi, 0x48534D, 0, 1, 0x8000_1000, 0) == (-6, 0)  # already started
    assert call(sbi, 0x48534D, 0, 5, 0x8000_1000, 0) == (-3, 0)  # no such hart
    assert call(sbi, 0x48534D, 0, M64, 0x8000_1000, 0) == (-3, 0)
    assert call(sbi, 0x48534D, 1, hart=1) == ()  # hart_stop: no return value, the hart stops
    assert eng.hart_state(1) == "stopped"
    assert call(sbi, 0x48534D, 0, 1, 0x1000, 0) == (-5, 0)  # start address outside RAM
    assert call(sbi, 0x48534D, 0, 1, 0x8000_1001, 0) == (-5, 0)  # misaligned
    assert call(sbi, 0x48534D, 3, 0x1234) == (-3, 0)  # reserved suspend type
    assert call(sbi, 0x48534D, 3, 1 << 40) == (-3, 0)
    assert call(sbi, 0x48534D, 9) == (-2, 0)
    assert call(sbi, 0x48534D, 3, 0) == (0, 0) and call(sbi, 0x48534D, 2, 0, hart=1) == (0, 4)  # SUSPENDED
    a, b = Sbi(eng, _Console(), lambda *e: None), Sbi(eng, _Console(), lambda *e: None)
    b.restore(json.loads(json.dumps(sbi.save())))
    assert b.save() == sbi.save() and a.save() != sbi.save()
    with pytest.raises(StateError):
        b.restore({**sbi.save(), "suspended": [2, 0]})


def test_srst_dbcn_and_legacy_calls():
    sbi, eng, events = _sbi()
    assert call(sbi, 0x53525354, 0, 3, 0) == (-3, 0)  # unknown reset type
    assert call(sbi, 0x53525354, 0, 0, 2) == (-3, 0)  # reserved reason
    assert call(sbi, 0x53525354, 0, 0, 1) == (0, 0) and events == [("fail", 1)]  # shutdown, system failure
    assert call(sbi, 0x53525354, 0, 1, 0) == (0, 0) and events[-1] == ("reset", 0)
    eng.mem.write(0x8000_2000, b"paravirtual\n")
    assert call(sbi, 0x4442434E, 0, 12, 0x8000_2000, 0) == (0, 12)
    assert call(sbi, 0x4442434E, 0, 12, 0x8000_2000, 1) == (-3, 0)
    assert call(sbi, 0x4442434E, 0, 1 << 40, 0x8000_2000, 0) == (-3, 0)  # runs past RAM
    assert call(sbi, 0x4442434E, 0, 16, M64 - 4, 0) == (-3, 0)
    assert call(sbi, 0x4442434E, 1, 8, 0x8000_3000, 0) == (0, 2) and eng.mem.read(0x8000_3000, 2) == b"hi"
    assert call(sbi, 0x4442434E, 2, ord("!")) == (0, 0)
    assert call(sbi, 0x01, 0, ord("?")) == (0,)
    assert sbi.console.out == b"paravirtual\n!?"
    assert call(sbi, 0x02, 0) == (M64,)  # no input left
    eng.csr[1, 0x344] = 0
    eng.mem.write_u64(0x8000_4000, 2)  # legacy send_ipi's hart mask lives in guest memory (here: no paging)
    assert call(sbi, 0x04, 0, 0x8000_4000) == (0,) and eng.csr[1, 0x344] & 2
    assert call(sbi, 0x04, 0, 0x10) == ((-5) & M64,)  # the mask pointer is not in RAM
    assert call(sbi, 0x10, 3, 0x735049) == (0, 1) and call(sbi, 0x10, 3, 0x504D55) == (0, 0)
    assert call(sbi, 0x54494D45, 1) == (-2, 0)
    assert sbi.stats()["SRST"] == 4


def test_garbage_hypercalls_get_sbi_errors_and_change_nothing():
    sbi, eng, events = _sbi(4)
    rng = np.random.default_rng(7)
    before = eng.save()["harts"]
    for _ in range(3000):
        ext = int(rng.choice([0x10, 0x48534D, 0x4442434E, 0x53555350, int(rng.integers(0, 1 << 62))]))
        fid = int(rng.integers(4, 1 << 32)) if ext != 0x10 else int(rng.integers(7, 1 << 32))
        r = call(sbi, ext, fid, *[int(v) for v in rng.integers(0, 1 << 63, 6)])
        assert r == (-2, 0), (hex(ext), fid)
    assert eng.save()["harts"] == before and not events and not sbi.console.out


@pytest.mark.slow
def test_virtkit_modes_compares_emulation_and_the_builtin_sbi(guest_images):
    p = virtkit("modes", "--json", "--cpus", "2", "--kernel", str(guest_images.kernel), "--initrd",
                str(guest_images.initrd), "--exec", "nproc", timeout=900)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    rows = {r["mode"]: r for r in doc["modes"]}
    assert set(rows) == {"emulation", "paravirt", "trap", "nested"}
    # (the nested row's command runs in the inner guest, which kvm-hello gives one vCPU)
    assert [rows[m]["output"] for m in ("emulation", "paravirt", "trap", "nested")] == ["2\n"] * 3 + ["1\n"], rows
    emu, para = rows["emulation"], rows["paravirt"]
    assert emu["sbi_calls"] == {} and emu["exits"].get("HYPERCALL", 0) == 0  # OpenSBI answers inside the guest
    assert para["exits"]["HYPERCALL"] == para["exits_total"] - para["exits"].get("MMIO_READ", 0) - \
        para["exits"].get("MMIO_WRITE", 0)
    assert para["traps"] < emu["traps"] and para["instructions"] < emu["instructions"]  # no firmware traps
    assert emu["traps_by_cause"]["ecall from S"] > 1000 and "ecall from S" not in para["traps_by_cause"]
    assert emu["traps_by_cause"].get("M timer interrupt", 0) > 0 and "M timer interrupt" not in para["traps_by_cause"]
    assert all(v > 0 for v in para["exit_cost_us"].values())
    table = virtkit("modes", "--mode", "paravirt", "--kernel", str(guest_images.kernel), "--initrd",
                    str(guest_images.initrd), timeout=900)
    assert table.returncode == 0 and "SBI TIME" in table.stdout and "in the core" in table.stdout, table.stderr


def test_virtkit_modes_refuses_bad_arguments():
    p = virtkit("modes", "--mode", "warp")
    assert p.returncode != 0 and "unknown mode 'warp' (known: emulation, paravirt, trap, nested)" in p.stderr
    p = virtkit("modes", "--cpus", "0")
    assert p.returncode != 0 and "--cpus 0: out of range 1..8" in p.stderr


def test_random_arguments_to_every_call_never_raise():
    """Hostile guests: any extension and function with any arguments gets an answer, never a Python error."""
    sbi, eng, events = _sbi(3)
    rng = np.random.default_rng(11)
    exts = [0x10, 0x54494D45, 0x735049, 0x52464E43, 0x48534D, 0x53525354, 0x4442434E, 0x53555350, *range(9)]
    for _ in range(20000):
        ext = int(rng.choice(exts))
        fid = int(rng.integers(0, 8))
        args = [int(v) for v in rng.choice([0, 1, 2, 0x8000_0000, 0x8000_2000, M64, 1 << 40], 6)]
        args = [a if rng.random() < 0.7 else int(rng.integers(0, 1 << 63)) for a in args]
        r = call(sbi, ext, fid, *args, hart=int(rng.integers(0, 3)))
        assert isinstance(r, tuple) and len(r) <= 2 and all(isinstance(v, int) for v in r), (hex(ext), fid, args, r)
        for h in range(3):  # a hart the fuzz stopped or suspended starts again, as a guest's other harts would
            if eng.hart_state(h) != "running":
                eng.start_hart(h, 0x8000_0000, h, 0)
    assert all(kind in ("poweroff", "reset", "fail") for kind, _ in events)


ECALL, EBREAK = (0x00000073).to_bytes(4, "little"), (0x00100073).to_bytes(4, "little")


def test_random_s_mode_code_making_sbi_calls_never_hurts_the_host():
    """Hostile guests: random instruction words with ECALLs sprinkled in, random registers, S-mode under the
    builtin SBI, hypercalls answered as the machine does; also with a debugger's guest-debug mode on."""
    from virtkit.machine.engine import ExitReason

    rng = np.random.default_rng(5)
    for trial in range(150):
        sbi, eng, events = _sbi(2)
        words = bytearray(rng.bytes(256))
        for at in rng.choice(64, 12, replace=False):
            words[4 * at: 4 * at + 4] = ECALL
        eng.mem.write(0x8000_0000, bytes(words))
        eng.mem.write(0x8000_1000, (0x0000006F).to_bytes(4, "little"))  # j .
        eng.write_csr(0, 0x105, 0x8000_1000)  # stvec
        for i in range(1, 32):
            eng.set_reg(0, i, int(rng.integers(0, 1 << 63)) if rng.random() < 0.7 else
                        int(rng.choice([0, 1, 0x10, 0x735049, 0x48534D, 0x4442434E, 0x8000_0000])))
        eng.set_guest_debug(bool(trial % 3 == 0))
        for _ in range(40):
            ex = eng.run(64)
            if ex.reason is ExitReason.HYPERCALL:
                eng.complete_hypercall(ex.vcpu, sbi.hypercall(ex.vcpu, eng.hypercall_args(ex.vcpu)))
            elif ex.reason is ExitReason.MMIO_READ:
                eng.complete_read(ex.vcpu, 0)
            elif ex.reason is ExitReason.DEBUG:
                eng.set_pc(ex.vcpu, eng.pc(ex.vcpu) + 4)
            elif ex.reason is ExitReason.HALT:
                for h in range(2):
                    if eng.hart_state(h) == "stopped" and h == 0:
                        eng.start_hart(0, 0x8000_0000, 0, 0)
        assert all(eng.priv(h) in (0, 1, 3) for h in range(2)) and eng.get_reg(0, 0) == 0
        assert all(kind in ("poweroff", "reset", "fail") for kind, _ in events)


@pytest.fixture
def vm_env(tmp_path, guest_images):
    from tests.helpers.vmcli import linux_env

    yield from linux_env(tmp_path, guest_images)


@pytest.mark.slow
def test_a_snapshot_of_a_two_hart_guest_on_the_builtin_sbi_restores_and_goes_on(vm_env):
    """The SBI's state (which harts are suspended) and the engine's (the SBI mode, STOPPED harts) travel in the
    snapshot: the restored guest has both harts and answers on its console."""
    from tests.helpers.vmcli import console_log, guest, shell, vk, wait_for

    env = vm_env
    flags = [f for f in guest(env)]
    flags[flags.index("--bios") + 1] = "builtin"
    vk(env, "run", "-d", "--name", "p1", *flags, "--cpus", "2")
    wait_for(lambda: "virtkit:/#" in console_log(env, "p1"), 300, "the shell")
    assert "2" in shell(env, "p1", "nproc", "n").split()
    vk(env, "snapshot", "create", "p1", "ps1")
    vk(env, "kill", "p1")
    vk(env, "snapshot", "restore", "ps1", "-d", "--name", "p2")
    out = shell(env, "p2", "nproc; cat /proc/interrupts | grep -c IPI; echo $((40+2))", "after")
    assert "42" in out.split() and "2" in out.split(), out
    vk(env, "kill", "p2")
