"""`virtkit migrate` and `virtkit run --incoming` on small bare-metal guests: a migration end to end, its
status, cancelling one (``--cancel`` and Ctrl-C) with the VM running on where it was, and every bad input
as a clear error that changes nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers.guests import BUSY
from tests.helpers.opensbi import payload_image
from tests.helpers.vmcli import counting_env, running, start, vk


@pytest.fixture
def env(tmp_path):
    yield from counting_env(tmp_path)


def target(env, name):
    t = json.loads(vk(env, "run", "--incoming", "tcp:127.0.0.1:0", "-d", "--name", name, "--json").stdout)
    assert t["name"] == name and t["port"] > 0
    return t


def test_migrate_moves_the_vm_and_reports(env, tmp_path):
    start(env, tmp_path, "m1")
    t = target(env, "m1b")
    st = json.loads(vk(env, "migrate", "m1", f"tcp:127.0.0.1:{t['port']}", "--token", t["token"], "--json",
                       "--bandwidth", "256M", "--downtime", "20ms").stdout)
    assert st["state"] == "completed" and st["downtime"] > 0 and st["pages_sent"] > 0
    names = {v["name"]: v["state"] for v in json.loads(vk(env, "ps", "--json").stdout)}
    assert names == {"m1b": "running"}
    # the target was not migrated anywhere: --status says so, clearly
    p = vk(env, "migrate", "m1b", "--status", check=False)
    assert p.returncode != 0 and "has not been migrated" in p.stderr
    vk(env, "kill", "m1b")


def _busy(env, tmp_path, name):
    payload_image(tmp_path / "busy.img", BUSY)
    vk(env, "run", "-d", "--name", name, "--board", "riscv64-virt", "--bios", "none", "--kernel",
       str(tmp_path / "busy.img"), "--mem", "32", "--no-rng")


def _slow_migration(env, name, t):
    """A migration at 1 MiB/s without auto-converge: it is still going when it is cancelled."""
    p = subprocess.Popen([sys.executable, "-m", "virtkit.cli", "migrate", name, f"tcp:127.0.0.1:{t['port']}",
                          "--token", t["token"], "--bandwidth", "1M", "--no-auto-converge", "--json"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        q = vk(env, "migrate", name, "--status", "--json", check=False)
        if q.returncode == 0 and json.loads(q.stdout)["state"] == "active":
            return p
        time.sleep(0.1)
    p.kill()
    raise AssertionError("the migration did not start")


@pytest.mark.parametrize("how", ["--cancel", "ctrl-c"])
def test_a_cancelled_migration_leaves_the_vm_running(env, tmp_path, how):
    _busy(env, tmp_path, "b1")
    t = target(env, "b1b")
    p = _slow_migration(env, "b1", t)
    if how == "--cancel":
        c = json.loads(vk(env, "migrate", "b1", "--cancel", "--json").stdout)
        assert c["state"] == "cancelling"
    else:
        p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode != 0 and json.loads(out)["state"] == "cancelled", (out, err)
    assert "Traceback" not in err
    assert running(env, "b1")
    st = json.loads(vk(env, "migrate", "b1", "--status", "--json").stdout)
    assert st["state"] == "cancelled" and st["throttle"] == 0
    # nothing to cancel now: a clear error
    p = vk(env, "migrate", "b1", "--cancel", check=False)
    assert p.returncode != 0 and "is not migrating" in p.stderr
    vk(env, "kill", "b1")


@pytest.mark.parametrize("args,msg", [
    (["m2"], "needs the target URI and --token"),
    (["m2", "tcp:127.0.0.1:1"], "needs the target URI and --token"),
    (["m2", "udp:127.0.0.1:1", "--token", "t"], "tcp:HOST:PORT"),
    (["m2", "tcp:127.0.0.1:99999", "--token", "t"], "tcp:HOST:PORT"),
    (["m2", "tcp:127.0.0.1:1", "--token", "t", "--bandwidth", "fast"], "bandwidth"),
    (["m2", "tcp:127.0.0.1:1", "--token", "t", "--downtime", "0ms"], "--downtime"),
    (["m2", "tcp:127.0.0.1:1", "--token", "t", "--downtime", "2s", "--max-downtime", "1s"], "--downtime"),
    (["m2", "tcp:127.0.0.1:1", "--cancel"], "take only the VM's name"),
    (["m2", "--cancel", "--status"], "take only the VM's name"),
    (["nosuchvm", "tcp:127.0.0.1:1", "--token", "t"], "nosuchvm"),
    (["m2", "tcp:127.0.0.1:1", "--token", "t"], "refused"),  # nobody listens: the VM runs on
])
def test_bad_migrate_input_is_a_clear_error(env, tmp_path, args, msg):
    if not running(env, "m2"):
        start(env, tmp_path, "m2")
    p = vk(env, "migrate", *args, check=False)
    assert p.returncode != 0 and msg in p.stderr, p.stderr
    assert running(env, "m2")
    vk(env, "kill", "m2")


def test_bad_incoming_input_is_a_clear_error(env, tmp_path):
    t = target(env, "w1")
    ps = {v["name"]: v for v in json.loads(vk(env, "ps", "--json").stdout)}
    assert ps["w1"]["state"] == "incoming" and ps["w1"]["port"] == t["port"]  # waiting shows, the name is taken
    for args, msg in [
        (["--incoming", f"tcp:127.0.0.1:{t['port']}", "-d", "--name", "w2"], "cannot listen"),
        (["--incoming", "tcp:127.0.0.1:0", "-d", "--name", "w1"], "already running"),
        (["--incoming", "tcp:127.0.0.1:0", "--kernel", "x"], "the machine comes from the migration"),
        (["--incoming", "nbd:x:1"], "tcp:HOST:PORT"),
        (["--incoming", "tcp:127.0.0.1:0", "-d", "--disk-dir", "/nonexistent-dir"], "no such directory"),
        (["--incoming", "tcp:127.0.0.1:0", "--clone"], "--clone and --no-verify"),
    ]:
        p = vk(env, "run", *args, check=False)
        assert p.returncode != 0 and msg in p.stderr, (args, p.stderr)
    # the waiting target is untouched: a migration still reaches it
    start(env, tmp_path, "m3")
    st = json.loads(vk(env, "migrate", "m3", f"tcp:127.0.0.1:{t['port']}", "--token", t["token"],
                       "--json").stdout)
    assert st["state"] == "completed" and running(env, "w1")
    vk(env, "kill", "w1")


def test_a_waiting_target_can_be_stopped(env):
    target(env, "w9")
    vk(env, "kill", "w9")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(v["name"] == "w9" for v in json.loads(vk(env, "ps", "--json").stdout)):
        time.sleep(0.1)
    assert not any(v["name"] == "w9" for v in json.loads(vk(env, "ps", "--json").stdout))
