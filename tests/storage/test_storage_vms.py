"""Storage you can share and trust, with real guests: several VMs and an NBD export on one pool, a volume grown
while its guest runs, a thin pool that fills under a guest (werror=stop, pause, add a device, resume, nothing
lost), and every storage command that writes refused on an image a running VM or an NBD export holds."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import require_tool

pytestmark = pytest.mark.slow
MiB = 1 << 20


@pytest.fixture
def env(tmp_path, guest_images):
    d = tmp_path / "run"
    d.mkdir()
    e = dict(os.environ, VIRTKIT_RUN_DIR=str(d), VIRTKIT_POOLS_DIR=str(tmp_path / "pools"))
    e["GUEST"] = json.dumps([str(guest_images.kernel), str(guest_images.initrd), str(guest_images.firmware)])
    yield e
    for info in d.glob("*.json"):
        try:
            os.kill(json.loads(info.read_text())["pid"], signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            pass


def vk(env, *args, input=None, timeout=600, check=False):
    p = subprocess.run([sys.executable, "-m", "virtkit.cli", *args], capture_output=True, text=True, env=env,
                       input=input, stdin=None if input is not None else subprocess.DEVNULL, timeout=timeout)
    assert "Traceback" not in p.stderr, p.stderr
    if check:
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def guest(env):
    k, i, f = json.loads(env["GUEST"])
    return ["--kernel", k, "--initrd", i, "--bios", f]


def start(env, name, *extra):
    p = vk(env, "run", "--detach", "--name", name, *guest(env), *extra)
    assert p.returncode == 0, p.stderr
    return p


def console_log(env, name):
    p = os.path.join(env["VIRTKIT_RUN_DIR"], f"{name}.console")
    return open(p, "rb").read().decode(errors="replace") if os.path.exists(p) else ""


def wait_for(pred, timeout=600, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def ps(env):
    return {v["name"]: v for v in json.loads(vk(env, "ps", "--json", check=True).stdout)}


def type_in(env, name, line, want, timeout=300):
    """Type a line on the VM's console; wait until ``want`` appears on the console log."""
    vk(env, "console", name, input=line + "\n", timeout=60)
    return wait_for(lambda: want in console_log(env, name), timeout, f"{want!r} on {name}'s console")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def devices(tmp_path, n, size):
    out = []
    for i in range(n):
        p = tmp_path / f"dev{i}.img"
        with open(p, "wb") as f:
            f.truncate(size)
        out.append(str(p))
    return out


def read_volume(env, spec, size):
    code = ("import sys; from virtkit.storage import open_disk; b = open_disk(sys.argv[1], read_only=True, "
            "force_share=True); sys.stdout.buffer.write(b.read(0, int(sys.argv[2]))); b.close()")
    return subprocess.run([sys.executable, "-c", code, spec, str(size)], capture_output=True, env=env,
                          check=True).stdout


def test_two_guests_an_nbd_export_and_a_grow_on_one_pool(env, tmp_path):
    require_tool("nbdcopy")
    devs = devices(tmp_path, 3, 64 * MiB)
    vk(env, "pool", "create", "tank", *devs, "--extent-size", "1M", check=True)
    for name, size in (("vm0", "16M"), ("vm1", "16M"), ("vm2", "8M")):
        vk(env, "volume", "create", f"tank/{name}", "--size", size, check=True)
    payload = os.urandom(8 * MiB)
    code = ("import sys; from virtkit.storage import open_disk; b = open_disk('tank/vm2'); "
            "b.write(0, sys.stdin.buffer.read()); b.close()")
    subprocess.run([sys.executable, "-c", code], input=payload, env=env, check=True)
    start(env, "g0", "--disk", "tank/vm0")
    wait_for(lambda: "virtkit:/# " in console_log(env, "g0"), what="g0's prompt")
    # a second guest writes another volume of the same pool while the first one runs
    p1 = subprocess.Popen([sys.executable, "-m", "virtkit.cli", "run", *guest(env), "--disk", "tank/vm1", "--exec",
                           "dd if=/dev/urandom of=/tmp/x bs=1M count=12 2>/dev/null; dd if=/tmp/x of=/dev/vda bs=1M "
                           "conv=fsync 2>/dev/null; md5sum /tmp/x"], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    # ...while an NBD export of a third volume is read by nbdcopy
    port = free_port()
    nbd = subprocess.Popen([sys.executable, "-m", "virtkit.cli", "nbd", "serve", "-r", "-p", str(port), "tank/vm2"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True
                 if _port_open(port) else False, 60, "the NBD export")
        out = tmp_path / "vm2.raw"
        subprocess.run(["nbdcopy", f"nbd://127.0.0.1:{port}", str(out)], check=True, timeout=300)
        assert out.read_bytes() == payload
        # the first guest's volume grows while it runs, and its guest sees it
        type_in(env, "g0", "cat /sys/block/vda/size", "32768")
        vk(env, "volume", "set", "tank/vm0", "--size", "+8M", check=True)
        wait_for(lambda: "capacity change from 32768 to 49152" in console_log(env, "g0"), 60, "the guest to notice")
        type_in(env, "g0", "echo size=$(cat /sys/block/vda/size)", "size=49152")
        # an online move of the first guest's volume while it writes
        type_in(env, "g0", "(while :; do dd if=/dev/urandom of=/dev/vda bs=64k count=32 2>/dev/null; done) & "
                "echo writer-started", "writer-started")
        st = json.loads(vk(env, "volume", "show", "tank/vm0", "--segments", "--json", check=True).stdout)
        src = st["segments"][0]["columns"][0]["device"]
        vk(env, "volume", "move", "tank/vm0", "--from", src, check=True)
        st = json.loads(vk(env, "volume", "show", "tank/vm0", "--segments", "--json", check=True).stdout)
        assert all(c["device"] != src for s in st["segments"] for c in s["columns"])
        out1, err1 = p1.communicate(timeout=600)
        assert p1.returncode == 0, err1
        digest = out1.split()[0]
        assert hashlib.md5(read_volume(env, "tank/vm1", 12 * MiB)).hexdigest() == digest
        listing = json.loads(vk(env, "pool", "list", "--json", check=True).stdout)
        assert listing[0]["open_volumes"] == ["vm0", "vm2"] and listing[0]["state"] == "ok"  # g0 and the export
        # the data the first guest wrote after the move is where the host reads it
        type_in(env, "g0", "kill %1; sync; dd if=/dev/vda bs=1M count=24 2>/dev/null | md5sum", "  -")
        import re

        guest_md5 = re.findall(r"([0-9a-f]{32})  -", console_log(env, "g0"))[-1]
        time.sleep(0.5)
        assert hashlib.md5(read_volume(env, "tank/vm0", 24 * MiB)).hexdigest() == guest_md5
    finally:
        nbd.send_signal(signal.SIGINT)
        nbd.wait(30)
        vk(env, "stop", "g0")


def _port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_full_thin_pool_pauses_the_guest_until_a_device_is_added(env, tmp_path):
    devs = devices(tmp_path, 2, 14 * MiB)
    vk(env, "pool", "create", "tank", devs[0], "--extent-size", "1M", check=True)
    vk(env, "volume", "create", "tank/thin", "--size", "32M", "--thin", check=True)
    cmd = ("dd if=/dev/urandom of=/tmp/x bs=1M count=20 2>/dev/null; dd if=/tmp/x of=/dev/vda bs=1M conv=fsync "
           "2>/dev/null; echo rc=$?; md5sum /tmp/x")
    start(env, "filler", "--disk", "tank/thin,werror=stop", "--exec", cmd, "--mem", "160M")
    v = wait_for(lambda: (ps(env).get("filler") or {}).get("state") == "paused" and ps(env)["filler"], 600,
                 "the guest to pause on the full pool")
    assert "No space left on device" in v["reason"] and "disk" in v["reason"]
    assert "paused: disk" in console_log(env, "filler")  # said on the console stream
    listing = json.loads(vk(env, "pool", "list", "--json", check=True).stdout)
    assert listing[0]["state"] == "full" and any("full" in w for w in listing[0]["warnings"])
    time.sleep(1)
    assert ps(env)["filler"]["state"] == "paused"  # stays paused until told
    vk(env, "pool", "add-device", "tank", devs[1], check=True)
    vk(env, "resume", "filler", check=True)
    wait_for(lambda: "filler" not in ps(env), 600, "the guest to finish")
    log = console_log(env, "filler")
    assert "rc=0" in log, log[-2000:]
    digest = log.split("rc=0", 1)[1].split()[0]
    assert hashlib.md5(read_volume(env, "tank/thin", 20 * MiB)).hexdigest() == digest  # every write is there


def test_nothing_writes_an_image_a_running_vm_or_an_nbd_export_holds(env, tmp_path):
    require_tool("qemu-img")
    held = tmp_path / "held.qcow2"
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(base), "16M"], check=True, capture_output=True)
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(held)], check=True,
                   capture_output=True)
    exported = tmp_path / "exported.raw"
    exported.write_bytes(os.urandom(4 * MiB))
    devs = devices(tmp_path, 1, 32 * MiB)
    vk(env, "pool", "create", "tank", devs[0], "--extent-size", "1M", check=True)
    vk(env, "volume", "create", "tank/vm0", "--size", "8M", check=True)
    vk(env, "volume", "snapshot", "tank/vm0", "before", check=True)
    start(env, "holder", "--disk", str(held), "--disk", "tank/vm0")
    port = free_port()
    nbd = subprocess.Popen([sys.executable, "-m", "virtkit.cli", "nbd", "serve", "-p", str(port), "-f", "raw",
                            str(exported)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _port_open(port), 60, "the NBD export")
        before = {p: p.read_bytes() for p in (held, base, exported)}
        other = tmp_path / "other.qcow2"
        subprocess.run(["qemu-img", "create", "-f", "qcow2", str(other), "16M"], check=True, capture_output=True)
        for img in (str(held), str(exported)):
            for args in (["disk", "create", img, "1G"], ["disk", "create", "-f", "raw", img, "1G"],
                         ["disk", "convert", "-O", "raw", str(other), img], ["disk", "resize", img, "+1M"],
                         ["disk", "amend", "-o", "lazy_refcounts=on", img], ["disk", "snapshot", "-c", "s", img],
                         ["disk", "check", "-r", "all", img], ["disk", "delete", img],
                         ["disk", "rebase", "-b", str(other), img], ["disk", "commit", img], ["disk", "info", img]):
                p = vk(env, *args)
                assert p.returncode != 0, (args, p.stdout)
                assert "locked by another VM or process" in p.stderr or "not a qcow2 image" in p.stderr, \
                    (args, p.stderr)
        for img in (held, exported):  # read-only commands look with -U
            assert vk(env, "disk", "info", "-U", str(img)).returncode == 0
            assert vk(env, "disk", "map", "-U", "--output=json", str(img)).returncode == 0
        assert vk(env, "disk", "compare", "-U", str(exported), str(exported)).returncode == 0
        # the backing file of an image in use is held too: committing into it is refused
        p = vk(env, "disk", "create", "-f", "qcow2", str(base), "1M")
        assert p.returncode != 0 and "locked" in p.stderr
        # qemu-img sees virtkit's locks as its own
        q = subprocess.run(["qemu-img", "info", str(held)], capture_output=True, text=True)
        assert q.returncode != 0 and 'Failed to get shared "write" lock' in q.stderr
        for args in (["volume", "delete", "tank/vm0"], ["volume", "rollback", "tank/vm0", "before"],
                     ["volume", "set", "tank/vm0", "--size", "4M", "--shrink"], ["pool", "delete", "tank", "--force"],
                     ["pool", "rename", "tank", "tank2"]):
            p = vk(env, *args)
            assert p.returncode == 1 and ("open" in p.stderr or "in use" in p.stderr), (args, p.stderr)
        assert {p: p.read_bytes() for p in (held, base, exported)} == before
        assert not list(tmp_path.glob(".*.tmp"))  # refused before a temporary file was even written
    finally:
        nbd.send_signal(signal.SIGINT)
        nbd.wait(30)
        vk(env, "kill", "holder")


def test_formats_are_explicit(env, tmp_path):
    require_tool("qemu-img")
    for fmt, ext in (("vmdk", "vmdk"), ("vdi", "vdi"), ("vpc", "vhd"), ("vhdx", "vhdx"), ("qed", "qed")):
        img = tmp_path / f"disk.{ext}"
        subprocess.run(["qemu-img", "create", "-f", fmt, str(img), "8M"], check=True, capture_output=True)
        p = vk(env, "run", *guest(env), "--disk", str(img), "--exec", "true")
        assert p.returncode == 1
        assert f"qemu-img convert -f {fmt} -O qcow2 {img}" in p.stderr and "format=raw" in p.stderr, p.stderr
        assert vk(env, "disk", "info", "--json", str(img)).returncode == 0
    v2 = tmp_path / "old.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-o", "compat=0.10", str(v2), "8M"], check=True,
                   capture_output=True)
    p = vk(env, "run", *guest(env), "--disk", str(v2), "--exec", "true")
    assert "qemu-img amend -f qcow2 -o compat=1.1" in p.stderr
    # format=raw uses the bytes as they are, on purpose, without a word
    vmdk = tmp_path / "disk.vmdk"
    p = vk(env, "run", *guest(env), "--disk", f"{vmdk},format=raw", "--exec", "head -c 4 /dev/vda")
    assert p.returncode == 0 and p.stdout.startswith("KDMV") and "warning" not in p.stderr
    # a plain file without format= is raw, with a warning; the same image twice is its own error
    plain = tmp_path / "plain.img"
    plain.write_bytes(bytes(MiB))
    p = vk(env, "run", *guest(env), "--disk", str(plain), "--exec", "true")
    assert p.returncode == 0 and "used as raw (say format=raw" in p.stderr
    p = vk(env, "run", *guest(env), "--disk", str(plain), "--disk", f"{plain},ro", "--exec", "true")
    assert p.returncode == 1 and "is the same image as disks[0]" in p.stderr
