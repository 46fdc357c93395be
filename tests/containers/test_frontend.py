"""``virtkit image`` and ``virtkit container``: real images (OCI layouts, overlayfs) and real containers (the
virtkit runtime) driven as a user drives docker; containerd's ``ctr`` running the same image through
``virtkit-runc``; malformed images and flags refused with nothing written outside the store."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tests.helpers import virtkit
from tests.helpers.containers import needs_containers

pytestmark = needs_containers()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A private store with the busybox image; afterwards every container in it is removed."""
    home = tmp_path_factory.mktemp("store")
    e = dict(os.environ, VIRTKIT_CONTAINERS_DIR=str(home))
    p = virtkit("image", "build", "-t", "busybox", "--busybox", env=e)
    assert p.returncode == 0, p.stderr
    yield e
    ids = virtkit("container", "ps", "-a", "-q", env=e).stdout.split()
    if ids:
        virtkit("container", "rm", "-f", *ids, env=e)


def vk(env, *args, check=True, timeout=120):
    p = virtkit(*args, env=env, timeout=timeout)
    if check:
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def meta(env, name):
    return json.loads(vk(env, "container", "inspect", name).stdout)


def wait(pred, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


# -- running ----------------------------------------------------------------------------------------------
def test_run_in_the_foreground_gives_output_streams_exit_status_and_rm(env):
    p = vk(env, "container", "run", "--rm", "--name", "fg", "-e", "WHO=virtkit", "busybox", "sh", "-c",
           "echo out $WHO; echo err >&2; hostname; cat /proc/1/cmdline | tr '\\0' ' '; exit 3", check=False)
    assert p.returncode == 3, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "out virtkit" and len(lines[1]) == 12  # hostname: the short id, as docker's
    assert lines[2].startswith("sh -c echo out")  # the command is PID 1 of its own PID namespace
    assert p.stderr.strip() == "err"
    assert "fg" not in vk(env, "container", "ps", "-a", "--json").stdout  # --rm removed it


def test_detached_container_with_port_volume_limits_logs_exec_stats_and_stop(env, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello through the proxy\n")
    with socket.socket() as s:  # a free host port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cid = vk(env, "container", "run", "-d", "--name", "web", "-p", f"127.0.0.1:{port}:80", "-v", f"{www}:/www:ro",
             "--memory", "48m", "--cpus", "0.5", "--pids-limit", "16", "busybox", "httpd", "-f", "-v", "-p", "80",
             "-h", "/www").stdout.strip()
    assert len(cid) == 64
    rows = json.loads(vk(env, "container", "ps", "--json").stdout)
    assert [r["name"] for r in rows if r["status"] == "running"] == ["web"]

    def get():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                c.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
                return b"".join(iter(lambda: c.recv(4096), b"")).decode()
        except OSError:
            return ""

    assert "hello through the proxy" in wait(get, what="the published port")
    # the request is in the log (httpd -v logs to stderr), as JSON lines
    log = wait(lambda: vk(env, "container", "logs", "web").stderr, what="a log line")
    assert "response:200" in log
    raw = Path(meta(env, "web")["log_path"]).read_text().splitlines()
    assert json.loads(raw[0])["stream"] == "stderr" and "time" in json.loads(raw[0])
    # exec sees the same namespaces; the volume is read-only; limits are in the cgroups
    p = vk(env, "container", "exec", "web", "sh", "-c", "cat /www/index.html; touch /www/x; ps -o pid,args",
           check=False)
    assert "hello through the proxy" in p.stdout and "Read-only file system" in p.stderr
    assert "1 httpd -f" in p.stdout.replace("    ", " ").replace("  ", " ")
    st = json.loads(vk(env, "container", "stats", "--json", "web").stdout)[0]
    assert st["memory_limit"] == 48 << 20 and st["pids"] == 1 and 0 < st["memory_bytes"] < 48 << 20
    cg = meta(env, "web")["oci_state"]
    assert cg["status"] == "running"
    assert json.loads(vk(env, "container", "inspect", "web").stdout)["config"]["linux"]["resources"] == {
        "memory": {"limit": 48 << 20}, "cpu": {"quota": 50000, "period": 100000}, "pids": {"limit": 16},
        "devices": [{"allow": False, "access": "rwm"}]}  # (deny all but the default devices, as docker)
    # pause/resume through the freezer
    vk(env, "container", "pause", "web")
    assert json.loads(vk(env, "container", "ps", "--json").stdout)[0]["status"] == "paused"
    vk(env, "container", "resume", "web")
    # stop: httpd as PID 1 ignores SIGTERM (as under docker), so SIGKILL after -t
    vk(env, "container", "stop", "-t", "1", "web")
    m = meta(env, "web")
    assert m["status"] == "exited" and m["exit_code"] == 137
    assert not get()  # the port is closed with it
    vk(env, "container", "start", "web")  # and it starts again, same port, same root
    assert "hello through the proxy" in wait(get, what="the port after a restart")
    vk(env, "container", "rm", "-f", "web")
    assert not any(r["name"] == "web" for r in json.loads(vk(env, "container", "ps", "-a", "--json").stdout))


def test_restart_policy_and_the_writable_layer_persists_across_restarts(env):
    vk(env, "container", "run", "-d", "--name", "flaky", "--restart", "on-failure:2", "busybox", "sh", "-c",
       "echo run >> /count; wc -l < /count; exit 5")
    m = wait(lambda: (lambda m: m if m["status"] == "exited" and m["restart_count"] == 2 else None)(
        meta(env, "flaky")), what="two restarts")
    assert m["exit_code"] == 5
    assert vk(env, "container", "logs", "flaky").stdout.split() == ["1", "2", "3"]
    vk(env, "container", "rm", "flaky")


def test_cpu_quota_throttles_and_a_memory_limit_oom_kill_is_reported(env):
    vk(env, "container", "run", "-d", "--name", "spin", "--cpus", "0.2", "busybox", "sh", "-c",
       "while :; do :; done")
    time.sleep(1)
    st = json.loads(vk(env, "container", "stats", "--json", "spin").stdout)[0]
    assert st["throttled_periods"] > 0 and st["cpu_percent"] < 60, st
    vk(env, "container", "rm", "-f", "spin")
    p = vk(env, "container", "run", "--name", "hog", "--memory", "16m", "busybox", "sh", "-c",
           "dd if=/dev/zero of=/dev/shm/fill bs=1M count=60", check=False)
    assert p.returncode == 137
    assert "OOM killer" in p.stderr and "memory limit 16777216 bytes" in p.stderr
    m = meta(env, "hog")
    assert m["oom_killed"] is True
    assert "Exited (137) (OOM killed)" in vk(dict(env, COLUMNS="200"), "container", "ps", "-a").stdout
    vk(env, "container", "rm", "hog")


def test_read_only_root_user_workdir_and_entrypoint(env):
    p = vk(env, "container", "run", "--rm", "--read-only", "-u", "1000:1000", "-w", "/tmp", "--entrypoint",
           "/bin/sh", "busybox", "-c", "id -u; id -g; pwd; touch /x 2>&1; echo $?", check=False)
    assert p.stdout.split()[:3] == ["1000", "1000", "/tmp"], p
    assert "Read-only file system" in p.stdout


# -- images ---------------------------------------------------------------------------------------------
def test_containerfile_build_layers_whiteouts_and_config(env, tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "site").mkdir(parents=True)
    (ctx / "site" / "a.txt").write_text("from the context\n")
    (ctx / "Containerfile").write_text(
        "# comment\nFROM busybox\nENV GREETING=\"hi there\" \\\n    MODE=test\nWORKDIR /app\nCOPY site/ /app/site/\n"
        "RUN echo built > stamp && rm /etc/group && \\\n    echo \"$GREETING\" > greet\nLABEL role=demo\n"
        "EXPOSE 8000\nCMD [\"sh\", \"-c\", \"cat stamp greet site/a.txt; ls /etc; echo $MODE\"]\n")
    p = vk(env, "image", "build", "-t", "demo:1", str(ctx))
    assert "STEP 6/8: LABEL role=demo" in p.stdout
    out = vk(env, "container", "run", "--rm", "demo:1").stdout.split("\n")
    assert out[:5] == ["built", "hi there", "from the context", "passwd", "test"]  # /etc/group whited out
    ins = json.loads(vk(env, "image", "inspect", "demo:1").stdout)
    assert len(ins["manifest"]["layers"]) == 3 and ins["config"]["config"]["WorkingDir"] == "/app"
    assert ins["config"]["config"]["Labels"] == {"role": "demo"} and "8000/tcp" in ins["config"]["config"][
        "ExposedPorts"]
    # the RUN layer records the deletion as an OCI whiteout
    blob = Path(env["VIRTKIT_CONTAINERS_DIR"]) / "images/blobs/sha256" / ins["manifest"]["layers"][2]["digest"][7:]
    with tarfile.open(blob) as t:
        assert "etc/.wh.group" in t.getnames()
    # export -> rm -> import gives the same image id
    vk(env, "image", "export", "demo:1", str(tmp_path / "demo.tar"))
    vk(env, "image", "rm", "demo:1")
    assert "demo:1" not in vk(env, "image", "list", "--json").stdout
    assert json.loads(vk(env, "image", "import", "--json", str(tmp_path / "demo.tar")).stdout) == ["demo:1"]
    assert json.loads(vk(env, "image", "inspect", "demo:1").stdout)["config"] == ins["config"]


@pytest.mark.parametrize("text,needle", [
    ("FROM busybox\nFROBNICATE x\n", "FROBNICATE is not supported"),
    ("RUN true\n", "the first instruction must be FROM"),
    ("FROM busybox\nCOPY ../../etc/passwd /x\n", "outside the build context"),
    ("FROM busybox\nRUN exit 4\n", "exited with status 4"),
    ("FROM nosuchimage\n", "is not in the store"),
    ("FROM scratch\nRUN true\n", "RUN needs a FROM image"),
    ("FROM busybox\nCMD [\"sh\", \n", "not a valid JSON array"),
])
def test_bad_containerfiles_are_refused_with_the_line(env, tmp_path, text, needle):
    (tmp_path / "Containerfile").write_text(text)
    before = vk(env, "image", "list", "--json").stdout
    p = vk(env, "image", "build", "-t", "bad:1", str(tmp_path), check=False)
    assert p.returncode == 1 and needle in p.stderr, p.stderr
    assert vk(env, "image", "list", "--json").stdout == before


def _layer(entries: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for e in entries:
            payload = (data or {}).get(e.name)
            if payload is not None:
                e.size = len(payload)
            t.addfile(e, io.BytesIO(payload) if payload is not None else None)
    return buf.getvalue()


def _docker_save(path: Path, layers: list[bytes], tag: str = "saved:1", diff_ids: list[str] | None = None) -> None:
    """A ``docker save`` tarball (manifest.json, <id>.json, <n>/layer.tar) made by hand."""
    import hashlib

    cfg = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh", "-c", "cat /hello"]},
           "rootfs": {"type": "layers", "diff_ids": diff_ids or [
               "sha256:" + hashlib.sha256(x).hexdigest() for x in layers]}}
    raw = json.dumps(cfg).encode()
    cid = hashlib.sha256(raw).hexdigest()
    entry = {"Config": f"{cid}.json", "RepoTags": [tag], "Layers": [f"{i}/layer.tar" for i in range(len(layers))]}
    files = {f"{cid}.json": raw, "manifest.json": json.dumps([entry]).encode()}
    files.update({f"{i}/layer.tar": x for i, x in enumerate(layers)})
    with tarfile.open(path, "w") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def _file(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    i = tarfile.TarInfo(name)
    i.type, i.linkname, i.mode = kind, link, 0o755 if kind == tarfile.DIRTYPE else 0o644
    return i


def test_docker_save_import_runs_on_top_of_busybox(env, tmp_path):
    busybox_layer = json.loads(vk(env, "image", "inspect", "busybox").stdout)["manifest"]["layers"][0]["digest"]
    base = (Path(env["VIRTKIT_CONTAINERS_DIR"]) / "images/blobs/sha256" / busybox_layer[7:]).read_bytes()
    top = _layer([_file("hello")], {"hello": b"from a docker save tarball\n"})
    _docker_save(tmp_path / "saved.tar", [base, top])
    assert vk(env, "image", "import", str(tmp_path / "saved.tar")).stdout.strip() == "imported saved:1"
    assert vk(env, "container", "run", "--rm", "saved:1").stdout == "from a docker save tarball\n"
    vk(env, "image", "rm", "saved:1")


@pytest.mark.parametrize("entries,needle", [
    ([_file("../../escape")], "'..' component"),
    ([_file("etc", tarfile.SYMTYPE, "/tmp"), _file("etc/owned")], "goes through the symlink"),
    ([_file("lnk", tarfile.LNKTYPE, "../../etc/passwd")], "'..' component"),
    ([_file("lnk", tarfile.LNKTYPE, "nothere")], "not in this layer"),
])
def test_hostile_layers_are_refused_and_nothing_is_written_outside(env, tmp_path, entries, needle):
    _docker_save(tmp_path / "bad.tar", [_layer(entries, {e.name: b"x" for e in entries if e.isreg()})])
    home = Path(env["VIRTKIT_CONTAINERS_DIR"])
    before_tmp, before_home = tree(tmp_path.parent), tree(home)
    p = vk(env, "image", "import", str(tmp_path / "bad.tar"), check=False)
    assert p.returncode == 1 and needle in p.stderr, p.stderr
    assert tree(tmp_path.parent) == before_tmp and tree(home) == before_home
    assert "saved:1" not in vk(env, "image", "list", "--json").stdout


def test_corrupt_images_are_refused(env, tmp_path):
    good = _layer([_file("hello")], {"hello": b"x"})
    _docker_save(tmp_path / "wrongdiff.tar", [good], diff_ids=["sha256:" + "0" * 64])
    p = vk(env, "image", "import", str(tmp_path / "wrongdiff.tar"), check=False)
    assert p.returncode == 1 and "the manifest says sha256:000" in p.stderr
    # an OCI layout whose blob was altered after its digest was taken
    vk(env, "image", "export", "busybox", str(tmp_path / "bb.tar"))
    out = tmp_path / "oci"
    with tarfile.open(tmp_path / "bb.tar") as t:
        t.extractall(out, filter="data")
    man = json.loads((out / "index.json").read_text())["manifests"][0]["digest"]
    layer = json.loads((out / "blobs/sha256" / man[7:]).read_text())["layers"][0]["digest"]
    with open(out / "blobs/sha256" / layer[7:], "r+b") as f:
        f.seek(600)
        f.write(b"tampered")
    p = vk(env, "image", "import", "--name", "tampered", str(out), check=False)
    assert p.returncode == 1 and "does not match" in p.stderr or "digest" in p.stderr, p.stderr
    for bad, needle in ((tmp_path / "nothing.tar", "not an image"), (tmp_path, "neither an OCI image layout")):
        if bad.suffix:
            bad.write_bytes(b"not a tar at all" * 100)
        p = vk(env, "image", "import", str(bad), check=False)
        assert p.returncode == 1 and needle in p.stderr, p.stderr
    assert "tampered" not in vk(env, "image", "list", "--json").stdout


@pytest.mark.parametrize("flags,needle", [
    (["--memory", "lots"], "--memory 'lots'"),
    (["--restart", "sometimes"], "--restart 'sometimes'"),
    (["-p", "80"], "-p '80'"),
    (["-p", "99999:80"], "ports are 1..65535"),
    (["-v", "relative"], "-v 'relative'"),
    (["-v", "/no/such/dir:/x"], "does not exist"),
    (["--name", ".bad"], "--name '.bad'"),
    (["--rm", "--restart", "always"], "cannot go together"),
    (["--net", "bridge"], "--net 'bridge'"),
    (["-u", "root"], "--user 'root'"),
])
def test_bad_flags_are_refused_before_anything_is_made(env, flags, needle):
    before = vk(env, "container", "ps", "-a", "-q").stdout
    p = vk(env, "container", "run", *flags, "busybox", "true", check=False)
    assert p.returncode in (1, 2) and needle in p.stderr, p.stderr
    assert vk(env, "container", "ps", "-a", "-q").stdout == before


def test_unknown_names_and_a_taken_name(env):
    for args in (("container", "run", "nosuch:image"), ("container", "stop", "nosuch"), ("image", "rm", "nosuch")):
        p = vk(env, *args, check=False)
        assert p.returncode == 1 and ("not in the store" in p.stderr or "no container" in p.stderr), p.stderr
    vk(env, "container", "create", "--name", "taken", "busybox")
    p = vk(env, "container", "create", "--name", "taken", "busybox", check=False)
    assert p.returncode == 1 and "is taken" in p.stderr
    p = vk(env, "image", "rm", "busybox", check=False)
    assert p.returncode == 1 and "used by container(s) taken" in p.stderr
    vk(env, "container", "rm", "taken")


# -- the engines people run ---------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("containerd") is None or shutil.which("ctr") is None,
                    reason="needs Debian's containerd (ctr)")
def test_containerd_ctr_runs_an_image_through_virtkit_runc(env, tmp_path):
    """containerd 1.6 (its runc v2 shim) drives virtkit-runc: create, start, wait, exit status, delete."""
    import sys

    runc_bin = Path(sys.executable).parent / "virtkit-runc"
    if not runc_bin.exists():
        pytest.skip("the virtkit-runc entry point is not installed in this environment")
    d = Path(f"/tmp/vkctd-{os.getpid()}")  # (a short path: containerd's sockets)
    d.mkdir(exist_ok=True)
    (d / "config.toml").write_text(f'version = 2\nroot = "{d}/root"\nstate = "{d}/state"\n'
                                   'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                                   f'[grpc]\n  address = "{d}/sock"\n')
    daemon = subprocess.Popen(["containerd", "--config", str(d / "config.toml")], stdout=subprocess.DEVNULL,
                              stderr=open(d / "log", "w"))
    ctr = ["ctr", "-a", str(d / "sock"), "-n", "vk"]
    try:
        wait(lambda: subprocess.run([*ctr, "version"], capture_output=True).returncode == 0, what="containerd")
        vk(env, "image", "export", "busybox", str(tmp_path / "bb.tar"))
        p = subprocess.run([*ctr, "image", "import", str(tmp_path / "bb.tar")], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        p = subprocess.run([*ctr, "run", "--rm", "--runc-binary", str(runc_bin), "busybox:latest", "c1", "sh", "-c",
                            "echo via containerd; cat /proc/1/cmdline; exit 7"], capture_output=True,
                           text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert p.returncode == 7, (p.stdout, p.stderr)
        assert p.stdout.startswith("via containerd\nsh\0-c"), p.stdout
        # a detached task: virtkit-runc's own state (under the shim's --root) says it is running
        p = subprocess.run([*ctr, "run", "-d", "--runc-binary", str(runc_bin), "busybox:latest", "c2", "sleep", "60"],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, p.stderr
        st = subprocess.run([str(runc_bin), "--root", "/run/containerd/runc/vk", "state", "c2"], capture_output=True,
                            text=True)
        assert json.loads(st.stdout)["status"] == "running", st.stderr
        subprocess.run([*ctr, "task", "kill", "-s", "SIGKILL", "c2"], check=True)
        wait(lambda: "STOPPED" in subprocess.run([*ctr, "task", "ls"], capture_output=True, text=True).stdout,
             what="the task to stop")
        subprocess.run([*ctr, "task", "delete", "c2"], check=True)
        subprocess.run([*ctr, "container", "rm", "c2"], check=True)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        subprocess.run(["umount", "-R", "-l", str(d / "root")], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def test_interactive_terminal(env):
    """``run -it``: the container gets a terminal of its own; our keystrokes reach it, its exit status is ours."""
    import pty
    import select
    import sys

    pid, fd = pty.fork()
    if pid == 0:
        os.execve(sys.executable, [sys.executable, "-m", "virtkit.cli", "container", "run", "-it", "--rm", "busybox",
                                   "sh"], env)
    out = b""
    os.write(fd, b"echo answer $((6*7)); tty; stty size; exit 5\n")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 1)
        if r:
            try:
                data = os.read(fd, 4096)
            except OSError:
                break
            if not data:
                break
            out += data
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert "answer 42" in text and "/dev/pts/0" in text, text
    assert os.waitstatus_to_exitcode(status) == 5, text


@pytest.mark.skipif(shutil.which("dockerd") is None or not os.path.exists("/usr/bin/docker"),
                    reason="needs Debian's docker.io (dockerd)")
def test_dockerd_add_runtime_runs_containers_through_virtkit_runc(env, tmp_path):
    """dockerd 20.10 with ``--add-runtime virtkit=virtkit-runc``: docker load of virtkit's export, run with an
    exit status, a detached container with exec (plain and with a terminal), update, stop."""
    import pty
    import sys

    runc_bin = Path(sys.executable).parent / "virtkit-runc"
    if not runc_bin.exists():
        pytest.skip("the virtkit-runc entry point is not installed in this environment")
    d = Path(f"/tmp/vkdd-{os.getpid()}")
    d.mkdir(exist_ok=True)
    daemon = subprocess.Popen(
        ["dockerd", "--data-root", f"{d}/data", "--exec-root", f"{d}/exec", "--pidfile", f"{d}/pid", "-H",
         f"unix://{d}/sock", "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
         "--add-runtime", f"virtkit={runc_bin}"], stdout=subprocess.DEVNULL, stderr=open(d / "log", "w"))
    docker = ["/usr/bin/docker", "-H", f"unix://{d}/sock"]

    def dk(*args, check=True):
        p = subprocess.run([*docker, *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if check:
            assert p.returncode == 0, (args, p.stdout, p.stderr)
        return p

    try:
        wait(lambda: dk("version", check=False).returncode == 0, timeout=60, what="dockerd")
        vk(env, "image", "export", "busybox", str(tmp_path / "bb.tar"))
        assert "Loaded image: busybox:latest" in dk("load", "-i", str(tmp_path / "bb.tar")).stdout
        run = ["run", "--runtime", "virtkit", "--network", "none"]
        p = dk(*run, "--rm", "busybox", "sh", "-c", "echo via dockerd; cat /proc/1/cmdline; exit 7", check=False)
        assert p.returncode == 7 and p.stdout.startswith("via dockerd\nsh\0-c"), (p.stdout, p.stderr)
        dk(*run, "-d", "--name", "d1", "--pids-limit", "10", "busybox", "sleep", "100")
        assert dk("inspect", "d1", "--format", "{{.HostConfig.Runtime}}").stdout.strip() == "virtkit"
        p = dk("exec", "d1", "sh", "-c", "echo in exec; exit 3", check=False)
        assert p.returncode == 3 and p.stdout == "in exec\n", p
        pid, fd = pty.fork()
        if pid == 0:
            os.execv(docker[0], [*docker, "exec", "-it", "d1", "sh", "-c", "tty; exit 4"])
        out = b""
        while True:
            try:
                data = os.read(fd, 4096)
            except OSError:
                break
            if not data:
                break
            out += data
        _, status = os.waitpid(pid, 0)
        assert b"/dev/pts/" in out and os.waitstatus_to_exitcode(status) == 4, out
        dk("update", "--pids-limit", "20", "d1")
        cid = dk("inspect", "d1", "--format", "{{.Id}}").stdout.strip()
        pids_max = Path(f"/sys/fs/cgroup/pids/docker/{cid}/pids.max")
        if pids_max.exists():  # (v1 here; a v2 host keeps it elsewhere)
            assert pids_max.read_text().strip() == "20"
        dk("stop", "-t", "1", "d1")
        assert dk("inspect", "d1", "--format", "{{.State.ExitCode}}").stdout.strip() == "137"
        dk("rm", "d1")
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        subprocess.run(["umount", "-R", "-l", str(d)], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def test_containers_on_a_virtkit_switch_share_a_vlan_and_not_another(env, monkeypatch):
    """``--net switch:NAME,vlan=N,ip=...``: eth0 on a switch port (the ports VMs use); VLAN 10 talks, VLAN 20
    is dark; the port goes when the container stops and comes back when it starts."""
    from tests.helpers import private_switches
    from virtkit.network import control

    if shutil.which("nsenter") is None or shutil.which("ip") is None:
        pytest.skip("needs nsenter and ip")
    with private_switches(monkeypatch, "vkcn") as d:
        e = dict(env, VIRTKIT_NET_DIR=d)
        control.create("lab")
        for name, vlan, ip in (("n1", 10, "10.9.0.1"), ("n2", 10, "10.9.0.2"), ("n3", 20, "10.9.0.3")):
            vk(e, "container", "run", "-d", "--name", name, "--net", f"switch:lab,vlan={vlan},ip={ip}/24", "busybox",
               "sleep", "600")
        assert vk(e, "container", "exec", "n1", "ping", "-c", "2", "-W", "2", "10.9.0.2", check=False).returncode == 0
        assert vk(e, "container", "exec", "n1", "ping", "-c", "1", "-W", "1", "10.9.0.3", check=False).returncode == 1
        ports = {p["name"]: p for p in control.request("lab", "show")["ports"]}
        assert ports["ctr-n1"]["vlan"] == 10 and ports["ctr-n3"]["vlan"] == 20, ports
        vk(e, "container", "stop", "-t", "0", "n2")
        assert "ctr-n2" not in {p["name"] for p in control.request("lab", "show")["ports"]}
        vk(e, "container", "start", "n2")
        assert vk(e, "container", "exec", "n1", "ping", "-c", "2", "-W", "2", "10.9.0.2", check=False).returncode == 0
        vk(e, "container", "rm", "-f", "n1", "n2", "n3")
        assert control.request("lab", "show")["ports"] == []
        for bad, needle in (("switch:nosuch", "is not running"), ("switch:lab,vlan=5000", "vlan='5000'"),
                            ("switch:lab,ip=10.0.0.1", "needs a prefix"), ("switch:lab,colour=red", "unknown option")):
            p = vk(e, "container", "run", "--rm", "--net", bad, "busybox", "true", check=False)
            assert p.returncode == 1 and needle in p.stderr, (bad, p.stderr)


def test_a_pool_volume_mounted_in_containers(env, tmp_path):
    """``-v POOL/VOL:/path``: the volume (exported by virtkit's NBD server, shown as a file by nbdfuse, loop
    mounted) gets ext4 when blank; what one container writes the next reads; :ro is read-only; afterwards
    the volume is free again and holds the file system."""
    for tool in ("nbdfuse", "losetup", "mkfs.ext4"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    e = dict(env, VIRTKIT_POOLS_DIR=str(tmp_path / "pools"))
    dev = tmp_path / "pv0.img"
    dev.write_bytes(b"")
    os.truncate(dev, 96 << 20)
    vk(e, "pool", "create", "tank", str(dev))
    vk(e, "volume", "create", "tank/data", "--size", "48M")
    p = vk(e, "container", "run", "--rm", "-v", "tank/data:/data", "busybox", "sh", "-c",
           "echo kept > /data/f && grep -c ' /data ext4 ' /proc/mounts")
    assert p.stdout.strip() == "1"
    p = vk(e, "container", "run", "--rm", "-v", "tank/data:/data:ro", "busybox", "sh", "-c",
           "cat /data/f; touch /data/x", check=False)
    assert p.stdout == "kept\n" and "Read-only file system" in p.stderr, p
    from virtkit.storage import open_disk

    os.environ["VIRTKIT_POOLS_DIR"] = e["VIRTKIT_POOLS_DIR"]
    try:
        vol = open_disk("tank/data")  # not held by anyone any more
        buf = bytearray(2)
        vol.readinto(1024 + 56, buf)  # the ext4 superblock's magic
        vol.close()
    finally:
        del os.environ["VIRTKIT_POOLS_DIR"]
    assert bytes(buf) == b"\x53\xef"
    assert "nbdfuse" not in Path("/proc/mounts").read_text()
    p = vk(e, "container", "run", "--rm", "-v", "tank/nosuch:/data", "busybox", "true", check=False)
    assert p.returncode == 1 and "has no volume 'nosuch'" in p.stderr, p.stderr
    p = vk(e, "container", "run", "--rm", "-v", "nopool/data:/data", "busybox", "true", check=False)
    assert p.returncode == 1 and "not a volume of a virtkit pool" in p.stderr, p.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mmdebstrap") is None, reason="needs mmdebstrap (Debian images from packages)")
def test_a_debian_image_from_packages(env, tmp_path):
    """``image build --debian bookworm``: mmdebstrap's minbase from the host's apt mirror, one layer; a
    Containerfile builds on it with dpkg inside."""
    p = vk(env, "image", "build", "-t", "debian:12", "--debian", "bookworm", timeout=600)
    assert "debian:12" in p.stdout
    out = vk(env, "container", "run", "--rm", "debian:12", "sh", "-c",
             "cat /etc/debian_version; dpkg-query -W -f '${Status}\\n' coreutils").stdout.split("\n")
    assert out[0].startswith("12.") and out[1] == "install ok installed", out
    (tmp_path / "Containerfile").write_text("FROM debian:12\nRUN dpkg-query -W | wc -l > /pkgs && useradd -u 1234 app"
                                            "\nUSER 1234\nCMD [\"sh\", \"-c\", \"id -u; cat /pkgs\"]\n")
    vk(env, "image", "build", "-t", "debian-app:1", str(tmp_path))
    uid, pkgs = vk(env, "container", "run", "--rm", "debian-app:1").stdout.split()
    assert uid == "1234" and int(pkgs) > 50
    vk(env, "image", "rm", "debian-app:1", "debian:12")


def test_named_volumes_persist_and_logs_rotate(env):
    """``-v NAME:/path`` outlives its container; ``--log-opt max-size/max-file`` rotates the JSON-lines log
    and keeps that many files, the newest lines last."""
    vk(env, "container", "run", "--rm", "-v", "keep:/data", "busybox", "sh", "-c", "echo stays > /data/f")
    assert vk(env, "container", "run", "--rm", "-v", "keep:/data:ro", "busybox", "cat", "/data/f").stdout == "stays\n"
    assert (Path(env["VIRTKIT_CONTAINERS_DIR"]) / "volumes" / "keep" / "f").read_text() == "stays\n"
    vk(env, "container", "run", "--name", "chatty", "--log-opt", "max-size=2k", "--log-opt", "max-file=2", "busybox",
       "sh", "-c", "i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); done")
    d = Path(meta(env, "chatty")["log_path"]).parent
    assert sorted(p.name for p in d.glob("log.json*")) == ["log.json", "log.json.1"]
    assert all(p.stat().st_size < 4096 for p in d.glob("log.json*"))
    out = vk(env, "container", "logs", "chatty").stdout.split()
    assert out[-1] == "line-299" and "line-0" not in out and out == sorted(out, key=lambda x: int(x[5:]))
    vk(env, "container", "rm", "chatty")
    p = vk(env, "container", "run", "--log-opt", "max-size=lots", "busybox", "true", check=False)
    assert p.returncode == 1 and "--log-opt max-size 'lots'" in p.stderr


def test_a_forced_image_removal_keeps_the_layers_a_container_stands_on(env):
    """``image rm -f`` of an image a container was made from: the name goes, the layers stay for it."""
    vk(env, "image", "build", "-t", "short-lived", "--busybox")
    vk(env, "container", "create", "--name", "orphan", "short-lived", "echo", "still-runs")
    assert "removed short-lived:latest" in vk(env, "image", "rm", "-f", "short-lived").stdout
    assert vk(env, "container", "start", "orphan").returncode == 0
    wait(lambda: meta(env, "orphan")["status"] == "exited", what="the container to end")
    assert vk(env, "container", "logs", "orphan").stdout == "still-runs\n"
    vk(env, "container", "rm", "orphan")
