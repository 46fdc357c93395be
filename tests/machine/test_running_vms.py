"""Running VMs as objects other programs reach: `virtkit run --detach`, ps, pause, resume, console, stop, kill.

Real Linux guests (slow); the VMs are shared by the tests of this module, which run in order.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory, guest_images):
    """A private run directory (so other VMs on the host do not show) and a short control idle timeout."""
    d = tmp_path_factory.mktemp("run")
    e = dict(os.environ, VIRTKIT_RUN_DIR=str(d), VIRTKIT_CONTROL_IDLE="2")
    yield e
    for info in d.glob("*.json"):
        try:
            os.kill(json.loads(info.read_text())["pid"], signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            pass


def vk(env, *args, input=None, timeout=600):
    p = subprocess.run([sys.executable, "-m", "virtkit.cli", *args], capture_output=True, text=True, env=env,
                       input=input, stdin=None if input is not None else subprocess.DEVNULL, timeout=timeout)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def start(env, name, guest, *extra):
    p = vk(env, "run", "--detach", "--name", name, "--kernel", str(guest.kernel), "--initrd", str(guest.initrd),
           "--bios", str(guest.firmware), *extra)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == name
    return p


def ps(env):
    p = vk(env, "ps", "--json")
    assert p.returncode == 0, p.stderr
    return {v["name"]: v for v in json.loads(p.stdout)}


def stats(env, name):
    p = vk(env, "ps", "--json")
    assert p.returncode == 0
    s = socket.socket(socket.AF_UNIX)
    s.connect(os.path.join(env["VIRTKIT_RUN_DIR"], f"{name}.sock"))
    s.sendall(b'{"op": "stats"}\n')
    buf = b""
    while not buf.endswith(b"\n"):
        buf += s.recv(1 << 20)
    s.close()
    reply = json.loads(buf)
    assert reply["ok"], reply
    return reply["stats"]


def wait_prompt(env, name, timeout=600):
    """Until the guest's shell prompt shows on its console (read-only viewer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = os.path.join(env["VIRTKIT_RUN_DIR"], f"{name}.console")
        if os.path.exists(log) and b"virtkit:/# " in open(log, "rb").read():
            return
        time.sleep(0.2)
    raise AssertionError(f"no prompt on {name}")


def test_detached_vm_is_listed(env, guest_images):
    start(env, "alpha", guest_images)
    vms = ps(env)
    assert vms["alpha"]["state"] == "running" and vms["alpha"]["cpus"] == 1
    os.kill(vms["alpha"]["pid"], 0)
    table = vk(env, "ps")
    assert "alpha" in table.stdout and "running" in table.stdout
    wait_prompt(env, "alpha")


def test_name_in_use_is_refused(env, guest_images):
    p = vk(env, "run", "--detach", "--name", "alpha", "--kernel", str(guest_images.kernel), "--initrd",
           str(guest_images.initrd))
    assert p.returncode == 1 and "already running" in p.stderr
    assert ps(env)["alpha"]["state"] == "running"


def test_console_from_a_second_process(env):
    # (the guest also starts a busy loop: an idle tickless kernel retires no instructions for the pause test)
    p = vk(env, "console", "alpha", input="echo typed-$((6*7)); (while :; do :; done) &\n", timeout=120)
    assert p.returncode == 0, p.stderr
    assert "typed-42" in p.stdout, p.stdout
    assert "detached" in p.stderr
    # a second typist is refused while one holds the keyboard; read-only viewers are fine
    s1 = socket.socket(socket.AF_UNIX)
    s1.connect(os.path.join(env["VIRTKIT_RUN_DIR"], "alpha.sock"))
    s1.sendall(b'{"op": "console", "write": true}\n')
    assert json.loads(s1.recv(4096).split(b"\n")[0])["ok"]
    p2 = vk(env, "console", "alpha", input="")
    assert p2.returncode == 1 and "keyboard is held" in p2.stderr
    p3 = vk(env, "console", "alpha", "--read-only", input="")
    assert p3.returncode == 0
    s1.close()


def test_pause_stops_the_instruction_counter_and_guest_time(env):
    assert vk(env, "pause", "alpha").stdout.strip() == "alpha: paused"
    a = stats(env, "alpha")
    time.sleep(0.5)
    b = stats(env, "alpha")
    assert a["instructions"] == b["instructions"] > 0
    assert a["guest_time"] == b["guest_time"]
    assert ps(env)["alpha"]["state"] == "paused"
    time.sleep(1.0)
    t_resume = time.monotonic()
    assert vk(env, "resume", "alpha").stdout.strip() == "alpha: running"
    time.sleep(0.5)
    c = stats(env, "alpha")
    assert c["instructions"] > b["instructions"]
    # guest time goes on from where it stopped: it did not jump by the 1.5 s spent paused
    assert c["guest_time"] - b["guest_time"] < time.monotonic() - t_resume + 0.5


def test_two_vms_at_once(env, guest_images):
    start(env, "beta", guest_images, "--cpus", "2")
    vms = ps(env)
    assert {"alpha", "beta"} <= set(vms) and vms["beta"]["cpus"] == 2
    assert vms["alpha"]["pid"] != vms["beta"]["pid"]


def _raw(env, name, payload: bytes, wait: float = 5.0) -> list[dict]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(wait)
    s.connect(os.path.join(env["VIRTKIT_RUN_DIR"], f"{name}.sock"))
    s.sendall(payload)
    buf = b""
    try:
        while buf.count(b"\n") < payload.count(b"\n") or not buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    return [json.loads(line) for line in buf.splitlines() if line.strip()]


def test_malformed_control_messages_get_errors_and_the_vm_keeps_running(env):
    replies = _raw(env, "beta", b'not json\n[1,2]\n{"op": 3}\n{"op": "reboot"}\n{"op": "resume", "catch_up": "yes"}\n'
                                b'{"op": "stop", "timeout": -1}\n{"op": "pause", "extra": 1}\n{"op": "status"}\n')
    assert [r["ok"] for r in replies] == [False] * 7 + [True]
    assert "not JSON" in replies[0]["error"] and "expected an object" in replies[1]["error"]
    assert "unknown op 'reboot'" in replies[3]["error"] and "catch_up" in replies[4]["error"]
    assert "timeout" in replies[5]["error"] and "bad arguments" in replies[6]["error"]
    # a client that connects and never sends is answered with an error after the idle time
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(os.path.join(env["VIRTKIT_RUN_DIR"], "beta.sock"))
    reply = json.loads(s.recv(4096))
    s.close()
    assert not reply["ok"] and "no request within" in reply["error"]
    # a huge line without a newline is refused
    big = _raw(env, "beta", b"x" * 70000, wait=10)
    assert big and "longer than" in big[0]["error"]
    assert ps(env)["beta"]["state"] == "running"


def test_unknown_name(env):
    p = vk(env, "pause", "nosuch")
    assert p.returncode == 1 and "no running VM named 'nosuch'" in p.stderr


def test_stop_powers_off_cleanly_and_the_entry_goes(env):
    p = vk(env, "stop", "alpha", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["reason"] == "poweroff"
    assert "alpha" not in ps(env)
    assert not os.path.exists(os.path.join(env["VIRTKIT_RUN_DIR"], "alpha.sock"))
    console = open(os.path.join(env["VIRTKIT_RUN_DIR"], "alpha.console"), "rb").read()
    assert b"sysrq: Power Off" in console


def test_a_killed_process_leaves_no_running_entry(env):
    pid = ps(env)["beta"]["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    assert "beta" not in ps(env)
    assert not os.path.exists(os.path.join(env["VIRTKIT_RUN_DIR"], "beta.json"))


def test_the_keyboard_passes_on_when_its_typist_hung_up_before_the_vm_noticed():
    """A typist whose connection has closed does not hold the keyboard, even before the thread reading it sees
    the end (the race a second `virtkit console` right after the first one's exit used to lose)."""
    from virtkit.machine.console import ConsoleHub, Viewer
    from virtkit.machine.runner import _hung_up

    hub = ConsoleHub()
    a, b = socket.socketpair()
    first = Viewer(lambda data: None, name="first", hung_up=lambda: _hung_up(a))
    hub.attach(first, write=True)
    with pytest.raises(ValueError, match="keyboard is held by first"):
        hub.attach(Viewer(lambda data: None, name="second"), write=True)
    b.close()  # the first typist's process exits; nobody has read its end yet
    second = Viewer(lambda data: None, name="second")
    hub.attach(second, write=True)
    assert hub.typist is second
    a.close()
