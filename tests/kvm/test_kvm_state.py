"""A KVM guest's state: a snapshot of a running VM taken with ``virtkit snapshot create`` and restored into a
new machine (registers, special registers, XSAVE, MSRs, the LAPIC timer, the irqchips, the PIT, the clock
and RAM: the ticker kernel goes on counting where it was), KVM_GET_DIRTY_LOG, and a live migration between
two virtkit processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests.helpers import x86guests

pytestmark = x86guests.needs_kvm()


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ, VIRTKIT_RUN_DIR=str(tmp_path / "run"), VIRTKIT_NO_DAEMON="1",
             VIRTKIT_SNAPSHOTS=str(tmp_path / "snaps"))
    yield e
    for info in (tmp_path / "run").glob("*.json"):
        try:
            os.kill(json.loads(info.read_text())["pid"], 9)
        except (OSError, ValueError, KeyError):
            pass


def vk(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "virtkit.cli", *args], capture_output=True, text=True, env=env,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    assert p.returncode == 0 and "Traceback" not in p.stderr, (args, p.stdout, p.stderr)
    return p


def ticks(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"tick (\d+)", text)]


def test_a_snapshot_of_a_running_kvm_guest_restores_and_goes_on(env, tmp_path, monkeypatch):
    k = str(x86guests.kernel("ticker"))
    vk(env, "run", "-d", "--name", "t1", "--engine", "kvm", "--kernel", k, "--mem", "64")
    time.sleep(1.5)
    reply = json.loads(vk(env, "snapshot", "create", "t1", str(tmp_path / "s1"), "--json").stdout)
    assert reply["name"] == "s1" and reply["paused_seconds"] < 5
    before = ticks((tmp_path / "run").joinpath("t1.log").read_text() if (tmp_path / "run" / "t1.log").exists()
                   else "")
    vk(env, "kill", "t1")
    for k_, v in env.items():
        monkeypatch.setenv(k_, v)
    from virtkit.machine import snapshot

    out: list[bytes] = []
    m = snapshot.restore(tmp_path / "s1", lambda b: out.append(b))
    saved = int.from_bytes(m.mem.read(_ticks_addr(k), 8), "little")
    res = m.run(timeout=2)
    after = ticks(b"".join(out).decode(errors="replace"))
    assert res.reason == "timeout" and after, (res, out)
    assert after[0] >= saved and after[-1] > after[0], (saved, after)  # it counted on from the saved count
    assert not before or after[0] >= before[-1]
    st = res.stats
    assert st["host"] and st["exits"].get("IO", 0) > 0


def _ticks_addr(kernel: str) -> int:
    """The address of the ticker's `ticks` (from its ELF symbol table)."""
    elf = kernel.replace(".bin", ".elf")
    out = subprocess.run(["nm", elf], capture_output=True, text=True, check=True).stdout
    return int(next(line.split()[0] for line in out.splitlines() if line.endswith(" ticks")), 16)


def test_the_dirty_log_sees_the_guests_writes_and_nothing_while_paused():
    from virtkit.machine.builder import build
    from virtkit.machine.config import MachineConfig

    k = str(x86guests.kernel("ticker"))
    m = build(MachineConfig.from_dict({"engine": "kvm", "kernel": k, "memory": "64M", "rng": False}), lambda b: None)
    try:
        m.vm.start()
        time.sleep(0.5)
        assert m.vm.pause("test")
        m.engine.dirty_log_clear()
        assert not m.engine.dirty_log_fetch().any()  # paused: nothing written
        m.vm.resume()
        time.sleep(0.5)
        assert m.vm.pause("test")
        dirty = m.engine.dirty_log_fetch()
        page = _ticks_addr(k) // 4096
        assert dirty[page], "the page of the tick counter is dirty"
        assert dirty.sum() < 64, dirty.sum()  # (the counter, the stack: not the whole RAM)
    finally:
        m.vm.close()


def test_live_migration_of_a_kvm_guest(env, tmp_path):
    k = str(x86guests.kernel("ticker"))
    vk(env, "run", "-d", "--name", "m1", "--engine", "kvm", "--kernel", k, "--mem", "64")
    t = json.loads(vk(env, "run", "--incoming", "tcp:127.0.0.1:0", "-d", "--name", "m2", "--json").stdout)
    time.sleep(1)
    st = json.loads(vk(env, "migrate", "m1", f"tcp:127.0.0.1:{t['port']}", "--token", t["token"], "--json").stdout)
    assert st["state"] == "completed" and st["pages_sent"] > 0 and st["downtime"] > 0, st
    rows = {v["name"]: v["state"] for v in json.loads(vk(env, "ps", "--json").stdout)}
    assert rows == {"m2": "running"}, rows
    time.sleep(1)
    p = subprocess.run([sys.executable, "-m", "virtkit.cli", "console", "m2", "--read-only"], capture_output=True,
                       text=True, env=env, timeout=30, stdin=subprocess.DEVNULL)
    assert ticks(p.stdout), p.stdout  # it goes on counting at the target
    vk(env, "kill", "m2")


def test_run_restore_in_the_foreground_shows_the_console_and_keeps_the_timeout(env, tmp_path):
    """``virtkit run --restore`` of a snapshot taken from a detached VM (which had no console): the console is
    on this terminal now, and --timeout ends it."""
    vk(env, "run", "-d", "--name", "r1", "--engine", "kvm", "--kernel", str(x86guests.kernel("ticker")), "--mem", "64")
    time.sleep(1)
    vk(env, "snapshot", "create", "r1", str(tmp_path / "s2"))
    vk(env, "kill", "r1")
    p = subprocess.run([sys.executable, "-m", "virtkit.cli", "run", "--restore", str(tmp_path / "s2"), "--timeout",
                        "2"], capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)
    assert ticks(p.stdout) and "still running after 2 s" in p.stderr, (p.stdout[-500:], p.stderr)


def test_clones_of_a_kvm_guest_run_side_by_side(env, tmp_path):
    """``virtkit clone`` of a KVM guest's snapshot: two more VMs from the same state, each counting on."""
    vk(env, "run", "-d", "--name", "c0", "--engine", "kvm", "--kernel", str(x86guests.kernel("ticker")), "--mem", "64")
    time.sleep(1)
    vk(env, "snapshot", "create", "c0", str(tmp_path / "s3"))
    clones = [c["name"] for c in json.loads(vk(env, "clone", str(tmp_path / "s3"), "--count", "2", "--json").stdout)]
    assert clones == ["c0-1", "c0-2"]
    time.sleep(1)
    rows = {v["name"]: v["state"] for v in json.loads(vk(env, "ps", "--json").stdout)}
    assert rows == {"c0": "running", "c0-1": "running", "c0-2": "running"}, rows
    for name in clones:
        p = subprocess.run([sys.executable, "-m", "virtkit.cli", "console", name, "--read-only"], capture_output=True,
                           text=True, env=env, timeout=30, stdin=subprocess.DEVNULL)
        assert ticks(p.stdout), (name, p.stdout)
