"""``virtkit-runc``: real containers (root, namespaces), the same bundles run by Debian's runc beside it.

The bundle is a busybox root file system (Debian's ``busybox-static``). Each test compares what the program
sees inside (hostname, ids, capability masks, NoNewPrivs, mounts, PID 1, exit status) with runc's view of
the same bundle, or checks a lifecycle step and its errors.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers.containers import needs_containers

pytestmark = needs_containers()

APPLETS = ("sh", "ls", "cat", "echo", "id", "hostname", "mount", "ps", "sleep", "true", "false", "grep", "wc",
           "ip", "head", "sed", "touch", "mkdir", "readlink", "sort")


def runtime(*args: str, root: Path, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    """The runtime's command; its output through files (a created container keeps the runtime's stdio open,
    as runc's does: a pipe would not see EOF until the container ends)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        rc = subprocess.run([sys.executable, "-m", "virtkit.containers.runtime", "--root", str(root), *args],
                            stdout=out, stderr=err, timeout=timeout, stdin=subprocess.DEVNULL).returncode
        out.seek(0)
        err.seek(0)
        p = subprocess.CompletedProcess(args, rc, out.read(), err.read())
    assert "Traceback" not in p.stderr, p.stderr
    if check:
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def runc(*args: str, root: Path, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["runc", "--root", str(root), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def bundle(tmp_path):
    """A bundle: busybox in rootfs/bin, runc's default config with terminal off."""
    b = tmp_path / "bundle"
    (b / "rootfs" / "bin").mkdir(parents=True)
    shutil.copy(shutil.which("busybox"), b / "rootfs" / "bin" / "busybox")
    for a in APPLETS:
        (b / "rootfs" / "bin" / a).symlink_to("busybox")
    for d in ("proc", "sys", "dev", "tmp", "etc"):
        (b / "rootfs" / d).mkdir()
    p = subprocess.run(["runc", "spec"], cwd=b, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    cfg = json.loads((b / "config.json").read_text())
    cfg["process"]["terminal"] = False
    rel = f"/virtkit-test/{tmp_path.parent.name}-{tmp_path.name}"  # (runs never share)
    cfg["linux"]["cgroupsPath"] = rel
    (b / "config.json").write_text(json.dumps(cfg))
    yield b
    # a test that failed half-way may leave its container running: kill what is in its cgroups
    import signal
    import time

    for ctl in Path("/sys/fs/cgroup").iterdir():
        procs = ctl / rel.lstrip("/") / "cgroup.procs"
        if procs.exists():
            for pid in procs.read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
    time.sleep(0.05)
    for ctl in Path("/sys/fs/cgroup").iterdir():
        try:
            (ctl / rel.lstrip("/")).rmdir()
        except OSError:
            pass


def set_args(b: Path, script: str, **changes) -> None:
    cfg = json.loads((b / "config.json").read_text())
    cfg["process"]["args"] = ["sh", "-c", script]
    for k, v in changes.items():
        cfg[k] = v
    (b / "config.json").write_text(json.dumps(cfg))


def both(b: Path, tmp_path: Path, script: str) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    set_args(b, script)
    cid = "t" + uuid.uuid4().hex[:8]
    ours = runtime("run", "--bundle", str(b), cid, root=tmp_path / "vk", check=False)
    peer = subprocess.run(["runc", "--root", str(tmp_path / "rc"), "run", "--bundle", str(b), cid],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    return ours, peer


def test_a_container_sees_what_it_sees_under_runc(bundle, tmp_path):
    script = ("hostname; id; echo pid=$$; ps -o pid,comm | wc -l; grep -E '^(Cap|NoNewPrivs|Seccomp:)' "
              "/proc/self/status; mount | sed 's/ (.*//' | sort; ip -o link | sed 's/:.*//;s/^[0-9]*//'; "
              "cat /proc/sys/kernel/hostname; ls /dev | sort; touch /x 2>&1 | sed 's/^.*: //'; exit 7")
    ours, peer = both(bundle, tmp_path, script)
    # (runc's hostname default is "runc"; the bundle is the same for both, so both print the config's)
    assert ours.returncode == peer.returncode == 7, (ours.stderr, peer.stderr)
    assert ours.stdout == peer.stdout, f"virtkit:\n{ours.stdout}\nrunc:\n{peer.stdout}"
    assert "pid=1\n" in ours.stdout and "Read-only file system" in ours.stdout


def test_lifecycle_create_start_state_kill_delete(bundle, tmp_path):
    set_args(bundle, "echo started > /dev/shm/mark; sleep 30")
    root = tmp_path / "vk"
    pidfile = tmp_path / "pid"
    runtime("create", "--bundle", str(bundle), "--pid-file", str(pidfile), "c1", root=root)
    st = json.loads(runtime("state", "c1", root=root).stdout)
    assert st["status"] == "created" and st["id"] == "c1" and st["pid"] == int(pidfile.read_text())
    assert set(st) >= {"ociVersion", "id", "status", "pid", "bundle"} and st["bundle"] == str(bundle)
    assert "started" not in runtime("list", "--format", "json", root=root).stdout
    again = runtime("create", "--bundle", str(bundle), "c1", root=root, check=False)
    assert again.returncode == 1 and "container 'c1' already exists" in again.stderr
    runtime("start", "c1", root=root)
    assert json.loads(runtime("state", "c1", root=root).stdout)["status"] == "running"
    twice = runtime("start", "c1", root=root, check=False)
    assert twice.returncode == 1 and "is running: only a created container starts" in twice.stderr
    busy = runtime("delete", "c1", root=root, check=False)
    assert busy.returncode == 1 and "is running" in busy.stderr
    rows = json.loads(runtime("list", "--format", "json", root=root).stdout)
    assert [r["id"] for r in rows] == ["c1"]
    runtime("kill", "c1", "KILL", root=root)
    import time

    for _ in range(200):
        if json.loads(runtime("state", "c1", root=root).stdout)["status"] == "stopped":
            break
        time.sleep(0.02)
    assert json.loads(runtime("state", "c1", root=root).stdout)["status"] == "stopped"
    runtime("delete", "c1", root=root)
    gone = runtime("state", "c1", root=root, check=False)
    assert gone.returncode == 1 and "container 'c1' does not exist" in gone.stderr
    assert not any(root.iterdir())


def test_namespaces_isolate(bundle, tmp_path):
    cfg = json.loads((bundle / "config.json").read_text())
    for k in ("bounding", "effective", "permitted"):
        cfg["process"]["capabilities"][k].append("CAP_SYS_ADMIN")  # (without it mount fails, as it should)
    (bundle / "config.json").write_text(json.dumps(cfg))
    set_args(bundle, "mount -t tmpfs none /tmp && echo inside > /tmp/f && cat /tmp/f && hostname")
    out = runtime("run", "--bundle", str(bundle), "ns1", root=tmp_path / "vk")
    assert out.stdout == "inside\nrunc\n"
    assert not any(" /tmp " in line and "ns1" in line for line in Path("/proc/mounts").read_text().splitlines())
    assert (bundle / "rootfs" / "tmp").exists() and not (bundle / "rootfs" / "tmp" / "f").exists()


def test_a_pids_limit_stops_fork(bundle, tmp_path):
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["linux"]["resources"] = {"pids": {"limit": 8}}
    cfg["process"]["args"] = ["sh", "-c", "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max;"
                                          " exec 2>&1; for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 5 & done; "
                                          "kill $(jobs -p) 2>/dev/null; true"]
    (bundle / "config.json").write_text(json.dumps(cfg))
    out = runtime("run", "--bundle", str(bundle), "pl1", root=tmp_path / "vk", timeout=60, check=False)
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "8" and any("fork" in line.lower() for line in lines[1:]), out.stdout


def test_mount_destinations_cannot_escape_the_rootfs(bundle, tmp_path):
    """A symlink in the rootfs pointing at a host path: the mount lands inside the rootfs, never on the host."""
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    (bundle / "rootfs" / "evil").symlink_to(str(host_dir))
    (bundle / "rootfs" / "up").symlink_to("../../../..")
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["mounts"] += [{"destination": "/evil/x", "type": "tmpfs", "source": "tmpfs"},
                      {"destination": "/up/y", "type": "tmpfs", "source": "tmpfs"}]
    cfg["process"]["args"] = ["sh", "-c", "ls -d /evil/x /up/y && readlink /evil"]
    (bundle / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "vk").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    out = runtime("run", "--bundle", str(bundle), "esc1", root=tmp_path / "vk")
    assert "/evil/x" in out.stdout and "/up/y" in out.stdout
    assert list(host_dir.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == before
    assert (bundle / "rootfs" / host_dir.relative_to("/") / "x").is_dir()  # the symlink followed inside
    assert (bundle / "rootfs" / "y").is_dir()  # and .. stopped at the root


@pytest.mark.parametrize("change, message", [
    ({"process": {"args": "sh"}}, "process.args: expected a list, got str"),
    ({"process": {"args": ["sh"], "user": {"uid": "0"}}}, "process.user.uid: expected an integer, got str"),
    ({"root": {"path": "nope"}}, "root.path"),
    ({"ociVersion": "2.0.0"}, "ociVersion '2.0.0': this runtime reads version 1.x"),
    ({"linux": {"namespaces": [{"type": "warp"}]}}, "unknown namespace type 'warp'"),
    ({"mounts": [{"destination": "relative", "type": "tmpfs", "source": "tmpfs"}]}, "must be an absolute path"),
])
def test_bad_configs_are_refused_with_the_field_named(bundle, tmp_path, change, message):
    cfg = json.loads((bundle / "config.json").read_text())
    cfg.update(change)
    (bundle / "config.json").write_text(json.dumps(cfg))
    p = runtime("run", "--bundle", str(bundle), "bad1", root=tmp_path / "vk", check=False)
    assert p.returncode != 0 and message in p.stderr, p.stderr
    assert not (tmp_path / "vk" / "bad1").exists()


def test_bad_command_lines(tmp_path):
    root = tmp_path / "vk"
    for args, msg in ((["state", "../x"], "container id '../x'"), (["frobnicate"], "unknown command"),
                      (["state", "nope"], "container 'nope' does not exist"), (["--bogus", "list"], "unknown global"),
                      (["kill"], "expected a container id")):
        p = runtime(*args, root=root, check=False)
        assert p.returncode != 0 and msg in p.stderr, (args, p.stderr)
    log = tmp_path / "log.json"
    p = runtime("--log", str(log), "--log-format", "json", "state", "nope", root=root, check=False)
    assert json.loads(log.read_text().splitlines()[-1])["level"] == "error"


def test_spec_and_features(tmp_path):
    root = tmp_path / "vk"
    runtime("spec", "--bundle", str(tmp_path), root=root)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["process"]["args"] == ["sh"] and {n["type"] for n in cfg["linux"]["namespaces"]} == {
        "pid", "network", "ipc", "uts", "mount"}
    p = runtime("spec", "--bundle", str(tmp_path), root=root, check=False)
    assert p.returncode != 0 and "exists" in p.stderr
    feats = json.loads(runtime("features", root=root).stdout)
    assert "CAP_SYS_ADMIN" in feats["linux"]["capabilities"] and "pid" in feats["linux"]["namespaces"]
    via_cli = subprocess.run([sys.executable, "-m", "virtkit.cli", "runtime", "--root", str(root), "features"],
                             capture_output=True, text=True)
    assert json.loads(via_cli.stdout) == feats


def test_exit_by_signal_and_dropped_capabilities_match_runc(bundle, tmp_path):
    # (PID 1 ignores SIGKILL from inside its own namespace: a child shell kills itself)
    ours, peer = both(bundle, tmp_path, "mount -t tmpfs none /tmp 2>&1; sh -c 'kill -9 $$'; echo status=$?; "
                      "exit 5")
    assert ours.returncode == peer.returncode == 5 and ours.stdout == peer.stdout
    assert "status=137" in ours.stdout
    assert "permission denied" in ours.stdout  # no CAP_SYS_ADMIN in the default set


def test_a_detached_container_is_stopped_by_kill(bundle, tmp_path):
    set_args(bundle, "trap 'echo got TERM > /dev/shm/t; exit 3' TERM; while :; do sleep 0.1; done")
    root = tmp_path / "vk"
    runtime("run", "-d", "--bundle", str(bundle), "d1", root=root)
    assert json.loads(runtime("state", "d1", root=root).stdout)["status"] == "running"
    runtime("kill", "d1", "TERM", root=root)
    import time

    for _ in range(250):
        if json.loads(runtime("state", "d1", root=root).stdout)["status"] == "stopped":
            break
        time.sleep(0.02)
    assert json.loads(runtime("state", "d1", root=root).stdout)["status"] == "stopped"
    bad = runtime("kill", "d1", "TERM", root=root, check=False)
    assert bad.returncode == 1 and "is not running" in bad.stderr
    runtime("delete", "d1", root=root)


def test_the_console_socket_receives_a_working_pty(bundle, tmp_path):
    import socket

    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"]["terminal"] = True
    cfg["process"]["args"] = ["sh", "-c", "[ -t 0 ] && [ -t 1 ] && echo tty-ok; sleep 0.2"]
    (bundle / "config.json").write_text(json.dumps(cfg))
    sock_path = str(tmp_path / "console.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(1)
    root = tmp_path / "vk"
    runtime("create", "--bundle", str(bundle), "--console-socket", sock_path, "tty1", root=root)
    conn, _ = srv.accept()
    msg, fds, _, _ = socket.recv_fds(conn, 1024, 1)
    assert msg.startswith(b"/dev/pts/") and len(fds) == 1
    runtime("start", "tty1", root=root)
    data = b""
    import select

    while b"tty-ok" not in data and select.select([fds[0]], [], [], 10)[0]:
        try:
            chunk = os.read(fds[0], 1024)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    assert b"tty-ok" in data, data
    os.close(fds[0])
    runtime("delete", "--force", "tty1", root=root)
    p = runtime("create", "--bundle", str(bundle), "tty2", root=root, check=False)
    assert p.returncode == 1 and "needs --console-socket" in p.stderr


def test_exec_ps_pause_resume_and_hooks(bundle, tmp_path):
    """exec joins the running container (its PID namespace, host name, root); ps lists its processes; pause
    freezes them (a frozen loop writes nothing); all six kinds of hook get the state on stdin, in order,
    createContainer in the container's mount namespace, startContainer inside the container."""
    import time

    log = tmp_path / "hooks.log"
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"]["args"] = ["sh", "-c", "i=0; while :; do i=$((i+1)); echo $i > /dev/shm/n; sleep 0.05; done"]
    cfg["hooks"] = {k: [{"path": "/bin/sh", "args": ["sh", "-c", f"echo {k} $(cat) >> {log}"]}]
                    for k in ("createRuntime", "prestart", "poststart", "poststop")}
    # createContainer: in the container's namespaces, the host's paths; startContainer: the container's paths
    cfg["hooks"]["createContainer"] = [{"path": "/bin/sh", "args": [
        "sh", "-c", f"echo createContainer $(readlink /proc/self/ns/mnt) $(cat) >> {log}"]}]
    cfg["hooks"]["startContainer"] = [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /dev/shm/started"]}]
    (bundle / "config.json").write_text(json.dumps(cfg))
    root = tmp_path / "vk"
    runtime("run", "-d", "--bundle", str(bundle), "x1", root=root)
    st = json.loads(runtime("state", "x1", root=root).stdout)
    started = json.loads(runtime("exec", "x1", "cat", "/dev/shm/started", root=root).stdout)
    assert started["id"] == "x1" and started["pid"] == st["pid"] and started["status"] == "created"
    out = runtime("exec", "x1", "sh", "-c", "echo $(hostname) $$; cat /dev/shm/n >/dev/null; exit 4", root=root,
                  check=False)
    assert out.returncode == 4 and out.stdout.split()[0] == "runc" and int(out.stdout.split()[1]) > 1, out
    pids = json.loads(runtime("ps", "--format", "json", "x1", root=root).stdout)
    assert pids[0] == st["pid"] and len(pids) >= 2  # init (the shell) first, then its sleep
    table = runtime("ps", "x1", root=root).stdout.splitlines()
    assert "PID" in table[0] and any(str(st["pid"]) in line for line in table[1:])
    runtime("pause", "x1", root=root)
    assert json.loads(runtime("state", "x1", root=root).stdout)["status"] == "paused"
    n1 = runtime("exec", "x1", "cat", "/dev/shm/n", root=root, check=False)
    assert n1.returncode != 0 and "exec needs a running container" in n1.stderr
    again = runtime("pause", "x1", root=root, check=False)
    assert again.returncode == 1 and "only a running container can be paused" in again.stderr
    runtime("resume", "x1", root=root)
    a = int(runtime("exec", "x1", "cat", "/dev/shm/n", root=root).stdout)
    time.sleep(0.3)
    assert int(runtime("exec", "x1", "cat", "/dev/shm/n", root=root).stdout) > a  # running again
    runtime("delete", "--force", "x1", root=root)
    lines = log.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["createRuntime", "prestart", "createContainer", "poststart",
                                                   "poststop"]
    first = json.loads(lines[0].split(" ", 1)[1])
    assert first["id"] == "x1" and first["pid"] == st["pid"] and first["bundle"] == str(bundle)
    _, mnt, cc = lines[2].split(" ", 2)
    assert mnt != os.readlink("/proc/self/ns/mnt") and json.loads(cc)["pid"] == st["pid"]
    assert json.loads(lines[4].split(" ", 1)[1])["status"] == "stopped"


@pytest.mark.parametrize("kind", ["prestart", "createContainer"])
def test_a_failing_hook_fails_create_and_leaves_nothing(bundle, tmp_path, kind):
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["hooks"] = {kind: [{"path": "/bin/sh", "args": ["sh", "-c", "echo nope >&2; exit 9"]}]}
    (bundle / "config.json").write_text(json.dumps(cfg))
    root = tmp_path / "vk"
    p = runtime("create", "--bundle", str(bundle), "h1", root=root, check=False)
    assert p.returncode == 1 and f"hooks.{kind}: /bin/sh exited with 9: nope" in p.stderr
    assert not (root / "h1").exists()


def test_cgroup_manager_disabled_makes_no_cgroups(bundle, tmp_path):
    """crun's ``--cgroup-manager=disabled``: the container runs in the runtime's own cgroups; limits are refused."""
    set_args(bundle, "cat /proc/self/cgroup | grep -c virtkit-test; true")
    p = runtime("--cgroup-manager=disabled", "run", "--bundle", str(bundle), "d1", root=tmp_path / "vk", check=False)
    assert p.returncode == 0 and p.stdout.strip() == "0", p
    rel = json.loads((bundle / "config.json").read_text())["linux"]["cgroupsPath"].lstrip("/")
    assert not (Path("/sys/fs/cgroup/pids") / rel).exists()
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["linux"]["resources"] = {"pids": {"limit": 8}}
    (bundle / "config.json").write_text(json.dumps(cfg))
    p = runtime("--cgroup-manager=disabled", "run", "--bundle", str(bundle), "d2", root=tmp_path / "vk",
                check=False)
    assert p.returncode == 1 and "--cgroup-manager=disabled turns them off" in p.stderr
    p = runtime("--cgroup-manager=bogus", "list", root=tmp_path / "vk", check=False)
    assert p.returncode == 1 and "cgroupfs, systemd or disabled" in p.stderr


def test_a_failed_create_leaves_no_cgroup_behind(bundle, tmp_path):
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["hooks"] = {"createRuntime": [{"path": "/bin/false"}]}
    cfg["linux"]["cgroupsPath"] = f"/virtkit-test/{tmp_path.name}"
    cfg["linux"]["resources"] = {"pids": {"limit": 10}}
    (bundle / "config.json").write_text(json.dumps(cfg))
    p = runtime("create", "--bundle", str(bundle), "cg1", root=tmp_path / "vk", check=False)
    assert p.returncode == 1 and "hooks.createRuntime" in p.stderr
    left = [c for c in ("pids", "memory", "unified")
            if os.path.exists(f"/sys/fs/cgroup/{c}/virtkit-test/{tmp_path.name}")]
    assert left == []


def test_seccomp_denies_with_the_configured_errno_as_under_runc(bundle, tmp_path):
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                                             "errnoRet": 1},
                                            {"names": ["getpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
                                             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]}]}
    (bundle / "config.json").write_text(json.dumps(cfg))
    ours, peer = both(bundle, tmp_path, "grep Seccomp: /proc/self/status; mkdir /dev/shm/x 2>&1; echo rc=$?; "
                                        "ls -d /dev/shm/x 2>&1 | head -1")
    assert ours.returncode == peer.returncode == 0 and ours.stdout == peer.stdout
    assert "Seccomp:\t2" in ours.stdout and "Operation not permitted" in ours.stdout
    cfg["linux"]["seccomp"]["syscalls"][0]["action"] = "SCMP_ACT_BOGUS"
    (bundle / "config.json").write_text(json.dumps(cfg))
    p = runtime("run", "--bundle", str(bundle), "sc2", root=tmp_path / "vk", check=False)
    assert p.returncode == 1 and "unknown action 'SCMP_ACT_BOGUS'" in p.stderr


def test_update_changes_a_live_limit(bundle, tmp_path):
    set_args(bundle, "sleep 30")
    root = tmp_path / "vk"
    runtime("run", "-d", "--bundle", str(bundle), "u1", root=root)
    st = json.loads((root / "u1" / "state.json").read_text())
    runtime("update", "--pids-limit", "7", "u1", root=root)
    pids = st["_cgroups"].get("pids") or st["_cgroups"].get("unified")
    assert Path(pids, "pids.max").read_text().strip() == "7"
    bad = runtime("update", "--pids-limit", "lots", "u1", root=root, check=False)
    assert bad.returncode == 1 and "--pids-limit 'lots': expected a number" in bad.stderr
    runtime("delete", "--force", "u1", root=root)


def test_a_user_namespace_maps_root_as_under_runc(bundle, tmp_path):
    """linux.namespaces user with a mapping: root inside is uid 100000 outside; the container sees its maps,
    the host's files as nobody's, its own files as root's, the same capability sets (runc, same bundle)."""
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["linux"]["namespaces"].append({"type": "user"})
    cfg["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    cfg["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    (bundle / "config.json").write_text(json.dumps(cfg))
    for d in [bundle, *bundle.parents]:  # the mapped root (uid 100000) must be able to reach the bundle
        if d == Path("/"):
            break
        d.chmod(d.stat().st_mode | 0o011)
    ours, peer = both(bundle, tmp_path, "id; cat /proc/self/uid_map /proc/self/gid_map; hostname; "
                                        "ls -ln /bin/busybox | cut -c1-30; touch /dev/shm/f; "
                                        "ls -ln /dev/shm | tail -1 | cut -c1-30; grep Cap /proc/self/status")
    assert ours.returncode == peer.returncode == 0, (ours.stderr, peer.stderr)
    assert ours.stdout == peer.stdout and "0     100000      65536" in ours.stdout
    assert "65534    65534" in ours.stdout  # the host's root is nobody inside


def test_a_memory_limit_oom_kills_and_says_so(bundle, tmp_path):
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["linux"]["resources"] = {"memory": {"limit": 16 << 20}}
    (bundle / "config.json").write_text(json.dumps(cfg))
    set_args(bundle, "head -c 64000000 /dev/zero > /dev/shm/big; echo survived")  # (tmpfs pages are charged)
    ours = runtime("run", "--bundle", str(bundle), "oom1", root=tmp_path / "vk", check=False, timeout=60)
    assert "survived" not in ours.stdout
    assert "was killed by the OOM killer (memory limit 16777216 bytes" in ours.stderr, ours.stderr
    root = tmp_path / "vk"
    set_args(bundle, "head -c 64000000 /dev/zero > /dev/shm/big")
    runtime("run", "-d", "--bundle", str(bundle), "oom2", root=root, check=False)
    import time

    for _ in range(250):
        st = json.loads(runtime("state", "oom2", root=root).stdout)
        if st["status"] == "stopped":
            break
        time.sleep(0.02)
    assert st["status"] == "stopped" and st.get("oomKilled") is True, st
    runtime("delete", "oom2", root=root)


def test_device_rules_match_runc_and_act_and_linux_devices_are_made(bundle, tmp_path):
    """The default spec's deny-all plus the default devices: the devices cgroup holds what runc's holds; a
    block device made inside (CAP_MKNOD) cannot be read; ``linux.devices`` entries appear with their mode."""
    import time

    v1 = Path("/sys/fs/cgroup/devices")
    if not v1.is_dir():
        pytest.skip("no v1 devices controller on this host")
    cfg = json.loads((bundle / "config.json").read_text())
    rel = cfg["linux"]["cgroupsPath"].lstrip("/")
    cfg["process"]["args"] = ["sleep", "30"]
    (bundle / "config.json").write_text(json.dumps(cfg))
    (bundle / "rootfs" / "bin" / "mknod").symlink_to("busybox")
    lists = {}
    def runc_quiet(*a):  # (a detached container keeps runc's stdio: no pipes, or run -d waits for it)
        return subprocess.run(["runc", "--root", str(tmp_path / "rc"), *a], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)

    for name, cmd in (("virtkit", lambda *a: runtime(*a, root=tmp_path / "vk")), ("runc", runc_quiet)):
        p = cmd("run", "-d", "--bundle", str(bundle), f"dev-{name}")
        assert p.returncode == 0, p
        for _ in range(100):
            if (v1 / rel / "devices.list").exists():
                break
            time.sleep(0.05)
        lists[name] = sorted((v1 / rel / "devices.list").read_text().split("\n"))
        cmd("delete", "--force", f"dev-{name}")
        time.sleep(0.2)
    assert lists["virtkit"] == lists["runc"] and "a *:* rwm" not in lists["virtkit"], lists
    caps = cfg["process"]["capabilities"]
    for k in ("bounding", "effective", "permitted"):
        caps[k] = sorted(set(caps[k]) | {"CAP_MKNOD"})
    cfg["process"]["args"] = ["sh", "-c", "mknod /tmp/sda b 8 0 && echo made; head -c1 /tmp/sda; "
                                          "ls -ln /dev/mynull | cut -c1-10; echo x > /dev/mynull && echo wrote"]
    cfg["linux"]["devices"] = [{"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3, "fileMode": 0o600}]
    cfg["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"})
    (bundle / "config.json").write_text(json.dumps(cfg))
    p = runtime("run", "--bundle", str(bundle), "dev-inside", root=tmp_path / "vk", check=False)
    assert p.stdout.split("\n")[:3] == ["made", "crw-------", "wrote"], p
    assert "Operation not permitted" in p.stderr, p.stderr


def test_a_mount_destination_swapped_for_a_symlink_is_refused(tmp_path):
    """The race of runc's CVE-2021-30465: a component of a resolved destination becomes a symlink to the host
    before the mount. The mount goes through a descriptor checked after it is open, so it is refused (run in
    a private mount namespace of a child, so a regression mounts nothing on this host)."""
    from virtkit.containers import init
    from virtkit.containers import linux as L

    root = tmp_path / "rootfs"
    (root / "a" / "b").mkdir(parents=True)
    outside = tmp_path / "outside"
    (outside / "b").mkdir(parents=True)
    target = init.resolve_in(str(root), "/a/b")  # resolved while a is a real directory ...
    shutil.rmtree(root / "a")
    (root / "a").symlink_to(outside)  # ... then swapped
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            L.unshare(L.CLONE_NEWNS)
            L.mount(None, "/", None, L.MS_REC | L.MS_PRIVATE)
            init._mount_at(str(root), target, "tmpfs", "tmpfs", 0)
            os.write(w, b"mounted " + str(os.path.ismount(outside / "b")).encode())
        except BaseException as err:  # noqa: BLE001
            os.write(w, str(err).encode()[:1000])
        os._exit(0)
    os.close(w)
    _, _ = os.waitpid(pid, 0)
    msg = os.read(r, 2000).decode()
    assert "outside the root file system" in msg and str(outside) in msg, msg
