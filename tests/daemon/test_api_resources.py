"""virtkitd beyond a VM's life cycle, against a daemon the test starts: snapshots, clones, backups,
migration and reboot as tasks (polled and streamed), a pool volume's and a switch port's life cycle, HTTPS
with a generated certificate, the CLI through the local daemon, a WebSocket that sends garbage or never
reads, and the database after the daemon is SIGKILLed in the middle of writes."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import threading
import time

import pytest

httpx = pytest.importorskip("httpx", reason="needs httpx (pip install -e '.[test]')")
pytest.importorskip("fastapi", reason="needs fastapi")

from tests.helpers.daemon import Daemon, counting_config, ok  # noqa: E402


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path)
    d.start()
    yield d
    d.close()


def finished(api, task: dict, seconds: float = 120) -> dict:
    """Poll a task until it ends."""
    assert task["state"] in ("running", "succeeded", "failed"), task
    deadline = time.monotonic() + seconds
    while task["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
        task = ok(api.get(f"/tasks/{task['id']}"))
    return task


def test_snapshot_clone_reboot_and_backup_are_tasks(daemon, tmp_path):
    """POST answers 202 with a task (Location: /tasks/ID); the task ends succeeded with its result; the
    event stream carries it; a failing one ends failed with the reason; bad names never reach a path."""
    api = daemon.unix
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "d0.qcow2"), "4M"], check=True)
    cfg = counting_config(tmp_path) | {"disks": [{"path": str(tmp_path / "d0.qcow2")}]}
    ok(api.post("/vms", json={"name": "t1", "config": cfg}), 201)
    pid = ok(api.post("/vms/t1/start"))["pid"]
    events: list[dict] = []

    def listen() -> None:
        c = httpx.Client(transport=httpx.HTTPTransport(uds=str(tmp_path / "d" / "virtkitd.sock")),
                         base_url="http://virtkitd", timeout=None)
        try:
            with c.stream("GET", "/events") as r:
                event = None
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "task":
                        events.append(json.loads(line[6:]))
        except (httpx.HTTPError, RuntimeError):
            pass

    threading.Thread(target=listen, daemon=True).start()
    time.sleep(1)
    r = api.post("/vms/t1/snapshots", json={"snapshot": "s1", "compress": True})
    assert r.status_code == 202 and r.headers["location"] == f"/tasks/{r.json()['id']}", r.text
    t = finished(api, r.json())
    assert t["state"] == "succeeded" and t["result"]["name"] == "s1" and t["kind"] == "snapshot", t["error"]
    assert t["result"]["memory"]["encoding"] == "zstd" and t["progress"] == 1.0
    assert [s["name"] for s in ok(api.get("/snapshots"))["items"]] == ["s1"]
    assert api.post("/vms/t1/snapshots", json={"snapshot": "s1"}).status_code == 409  # exists
    for bad in ({"snapshot": "../x"}, {"snapshot": "a/b"}, {"compress": "yes"}, {"nope": 1}):
        assert api.post("/vms/t1/snapshots", json=bad).status_code == 422, bad
    assert api.post("/vms/none/snapshots", json={}).status_code == 409  # not running

    t = finished(api, ok(api.post("/snapshots/s1/clone", json={"count": 2, "prefix": "cl"}), 202))
    assert t["state"] == "succeeded", t
    clones = [c["name"] for c in t["result"]["clones"]]
    assert clones == ["cl-1", "cl-2"]
    running = {v["name"] for v in ok(api.get("/vms", params={"state": "running"}))["items"]}
    assert {"t1", "cl-1", "cl-2"} <= running
    for c in clones:
        ok(api.post(f"/vms/{c}/kill"))
    assert api.post("/snapshots/..%2Fetc/clone", json={}).status_code == 404
    assert api.post("/snapshots/s1/clone", json={"count": 0}).status_code == 422

    t = finished(api, ok(api.post("/vms/t1/backups", json={"to": str(tmp_path / "b0.qcow2")}), 202))
    assert t["state"] == "succeeded" and t["result"]["state"] == "completed", t
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(tmp_path / "b0.qcow2")],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["virtual-size"] == 4 << 20
    # a backup onto a file that exists is refused at once (409), not as a failed task
    assert api.post("/vms/t1/backups", json={"to": str(tmp_path / "b0.qcow2")}).status_code == 409

    t = finished(api, ok(api.post("/vms/t1/reboot", params={"timeout": 1}), 202))
    assert t["state"] == "succeeded", t
    vm = ok(api.get("/vms/t1"))
    assert vm["state"] == "running" and vm["pid"] != pid

    # a task that fails says why: a migration to a port where nobody listens
    t = finished(api, ok(api.post("/vms/t1/migrate", json={"uri": f"tcp:127.0.0.1:{_free_port()}",
                                                          "token": "x"}), 202))
    assert t["state"] == "failed" and t["error"], t
    assert ok(api.get("/vms/t1"))["state"] == "running"  # (and the VM goes on here)
    ok(api.delete("/snapshots/s1"), 204)
    assert api.delete("/snapshots/s1").status_code == 404
    kinds = {t["kind"]: t["state"] for t in ok(api.get("/tasks"))["items"]}
    assert kinds == {"snapshot": "succeeded", "clone": "succeeded", "backup": "succeeded", "reboot": "succeeded",
                     "migrate": "failed"}, kinds
    assert ok(api.get("/tasks", params={"state": "failed"}))["total"] == 1
    assert api.get("/tasks/nope").status_code == 404
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(e["kind"] == "migrate" and e["state"] == "failed" for e in events):
        time.sleep(0.1)
    seen = {(e["kind"], e["state"]) for e in events}
    assert {("snapshot", "succeeded"), ("clone", "succeeded"), ("migrate", "failed")} <= seen, seen
    ok(api.post("/vms/t1/kill"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_live_migration_through_the_api(daemon, tmp_path):
    """POST /vms/NAME/migrate to a target waiting with ``virtkit run --incoming``: the task follows the
    copy and ends with the migration's figures; the VM runs at the target."""
    api = daemon.unix
    ok(api.post("/vms", json={"name": "m1", "config": counting_config(tmp_path)}), 201)
    ok(api.post("/vms/m1/start"))
    p = daemon.cli("run", "--incoming", "tcp:127.0.0.1:0", "-d", "--name", "m1b", "--json")
    t = json.loads(p.stdout)
    task = finished(api, ok(api.post("/vms/m1/migrate", json={"uri": f"tcp:127.0.0.1:{t['port']}",
                                                               "token": t["token"]}), 202))
    assert task["state"] == "succeeded", task
    assert task["result"]["state"] == "completed" and task["result"]["pages_sent"] > 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # (the source process is ending: "not answering" for a moment)
        states = {v["name"]: v["state"] for v in ok(api.get("/vms"))["items"]}
        if states == {"m1": "stopped", "m1b": "running"}:
            break
        time.sleep(0.2)
    assert states == {"m1": "stopped", "m1b": "running"}, states
    assert api.post("/vms/m1/migrate", json={"uri": "tcp:x:1", "token": "t"}).status_code == 409  # stopped
    assert api.post("/vms/m1b/migrate", json={"uri": "udp:x:1", "token": "t"}).status_code == 422
    ok(api.post("/vms/m1b/kill"))


def test_a_pool_volume_and_a_switch_port_through_the_api(daemon, tmp_path):
    api = daemon.unix
    for i in range(2):
        with open(tmp_path / f"dev{i}.img", "wb") as f:
            f.truncate(64 << 20)
    p = daemon.cli("pool", "create", "tank", str(tmp_path / "dev0.img"), str(tmp_path / "dev1.img"))
    assert p.returncode == 0, p.stderr
    vol = ok(api.post("/pools/tank/volumes", json={"name": "v1", "size": "8M"}), 201)
    assert vol == {"name": "v1", "size": 8 << 20, "layout": "linear", "thin": False}
    ok(api.post("/pools/tank/volumes", json={"name": "v2", "size": 4 << 20, "layout": "mirror", "thin": True}), 201)
    names = [v["name"] for v in ok(api.get("/pools/tank/volumes"))["items"]]
    assert names == ["v1", "v2"]
    assert api.post("/pools/tank/volumes", json={"name": "v1", "size": "8M"}).status_code == 409  # taken
    for bad in ({"name": "v3", "size": "lots"}, {"name": "v3", "size": 1000}, {"name": "../v", "size": "1M"},
                {"name": "v3", "size": "1M", "layout": "weird"}):
        r = api.post("/pools/tank/volumes", json=bad)
        assert r.status_code == 422 and r.json()["error"]["message"], (bad, r.text)
    assert api.post("/pools/tank/volumes", json={"name": "big", "size": "1T"}).status_code in (409, 422)
    assert api.get("/pools/..%2F..%2Fetc/volumes").status_code == 404
    assert api.get("/pools/nope/volumes").status_code == 404
    ok(api.delete("/pools/tank/volumes/v1"), 204)
    assert api.delete("/pools/tank/volumes/v1").status_code == 404
    assert [v["name"] for v in ok(api.get("/pools/tank/volumes"))["items"]] == ["v2"]
    assert ok(api.get("/pools"))["items"][0]["volumes"] == ["v2"]

    ok(api.post("/switches", json={"name": "lab"}), 201)
    assert api.post("/switches", json={"name": "lab"}).status_code == 409
    lport, rport = _free_port(), _free_port()
    port = ok(api.post("/switches/lab/ports", json={"spec": f"udp:{lport}:127.0.0.1:{rport}", "name": "u1",
                                                    "access": 7}), 201)
    assert port == {"switch": "lab", "port": "u1"}
    ok(api.patch("/switches/lab/ports/u1", json={"trunk": "10,20-30", "native": 7}))
    show = ok(api.get("/switches/lab"))
    u1 = next(p for p in show["ports"] if p["name"] == "u1")
    assert u1["trunk"] and 20 in _vlans(u1["trunk"]) and u1["native"] == 7, u1
    assert api.patch("/switches/lab/ports/u1", json={"access": 5000}).status_code == 422
    assert api.patch("/switches/lab/ports/nope", json={"access": 5}).status_code == 409
    ok(api.post("/switches/lab/groups", json={"name": "web", "vlan": 30}), 201)
    ok(api.post("/switches/lab/groups/web/rules", json={"action": "allow", "proto": "tcp", "port": "80"}), 201)
    assert api.post("/switches/lab/groups/web/rules", json={"action": "allow", "port": "80;rm"}).status_code == 422
    groups = ok(api.get("/switches/lab"))["groups"]
    assert any(g.get("name") == "web" for g in (groups.values() if isinstance(groups, dict) else groups))
    ok(api.delete("/switches/lab/groups/web/rules/1"), 204)
    ok(api.delete("/switches/lab/groups/web"), 204)
    ok(api.delete("/switches/lab/ports/u1"), 204)
    assert api.get("/switches/nope").status_code == 404
    ok(api.delete("/switches/lab"), 204)
    assert api.delete("/switches/lab").status_code == 404
    calls = {(a["method"], a["path"]) for a in ok(api.get("/audit", params={"limit": 1000}))["items"]}
    assert ("POST", "/pools/tank/volumes") in calls and ("DELETE", "/switches/lab/ports/u1") in calls


def _vlans(trunk) -> set[int]:
    if isinstance(trunk, list):
        return set(trunk)
    out: set[int] = set()
    for part in str(trunk).split(","):
        a, _, b = part.partition("-")
        out |= set(range(int(a), int(b or a) + 1))
    return out


def test_https_with_a_generated_certificate(tmp_path):
    """``--tls``: the TCP listener speaks HTTPS with a certificate made once in the daemon's directory
    (kept for next time); clients pin it (``--cacert``); plain HTTP gets nothing; bad files are refused."""
    d = Daemon(tmp_path)
    d.start("--tls")
    try:
        crt = tmp_path / "d" / "tls.crt"
        assert crt.exists() and oct((tmp_path / "d" / "tls.key").stat().st_mode & 0o777) == "0o600"
        tok = d.token("t", "read")
        with httpx.Client(base_url=f"https://127.0.0.1:{d.port}", verify=ssl.create_default_context(cafile=str(crt)),
                          headers={"Authorization": f"Bearer {tok}"}) as c:
            assert ok(c.get("/whoami"))["scope"] == "read"
        with httpx.Client(base_url=f"https://127.0.0.1:{d.port}") as c, pytest.raises(httpx.ConnectError):
            c.get("/whoami")  # (not a certificate the system trusts)
        with httpx.Client(base_url=f"http://127.0.0.1:{d.port}", timeout=5) as c, pytest.raises(httpx.HTTPError):
            c.get("/whoami")
        p = d.cli("--remote", f"https://localhost:{d.port}", "--token", tok, "--cacert", str(crt), "ps", "--json")
        assert p.returncode == 0 and json.loads(p.stdout) == [], p.stderr
        p = d.cli("--remote", f"https://127.0.0.1:{d.port}", "--token", tok, "ps")
        assert p.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in p.stderr, p.stderr
        first = crt.read_bytes()
        d.cli("daemon", "stop")
        d.start("--tls")
        assert crt.read_bytes() == first  # (the same certificate: pinned clients keep working)
    finally:
        d.close()
    (tmp_path / "bad.pem").write_text("not a certificate")
    p = d.cli("daemon", "start", "--listen", f"127.0.0.1:{d.port}", "--tls-cert", str(tmp_path / "bad.pem"),
              "--tls-key", str(tmp_path / "bad.pem"))
    assert p.returncode == 1 and "not a certificate and its key" in p.stderr, p.stderr
    p = d.cli("daemon", "start", "--tls")
    assert p.returncode == 1 and "--listen" in p.stderr
    p = d.cli("daemon", "start", "--listen", f"127.0.0.1:{d.port}", "--tls-cert", str(tmp_path / "bad.pem"))
    assert p.returncode == 1 and "go together" in p.stderr


def test_the_cli_goes_through_a_local_daemon(daemon, tmp_path):
    """With a virtkitd running here, ``virtkit ps|stop|console|snapshot create`` go through it: the audit
    log has them and the restart policy knows a stop was wanted."""
    api = daemon.unix
    ok(api.post("/vms", json={"name": "l1", "config": counting_config(tmp_path), "restart": "always"}), 201)
    ok(api.post("/vms/l1/start"))
    rows = json.loads(daemon.cli("ps", "--json").stdout)
    assert [(r["name"], r["state"]) for r in rows] == [("l1", "running")] and rows[0]["mips"] >= 0
    p = subprocess.run([*_vk(), "console", "l1", "--read-only"], input=b"", capture_output=True, env=daemon.env,
                       timeout=60)
    assert p.returncode == 0 and b"." in p.stdout and b"through virtkitd" in p.stderr, p.stderr
    p = daemon.cli("snapshot", "create", "l1", "snapcli", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["name"] == "snapcli", p.stderr
    p = daemon.cli("stop", "--timeout", "1", "l1")
    assert p.returncode == 0, p.stderr
    time.sleep(2.5)  # (the restart policy runs every second: a stop through the daemon is not restarted)
    assert ok(api.get("/vms/l1"))["state"] == "stopped"
    calls = [(a["who"], a["method"], a["path"]) for a in ok(api.get("/audit"))["items"]]
    assert ("unix-socket", "POST", "/vms/l1/stop") in calls and ("unix-socket", "POST", "/vms/l1/snapshots") in calls
    p = daemon.cli("console", "l1")
    assert p.returncode == 1 and "no running VM" in p.stderr, p.stderr


def _vk() -> list[str]:
    import sys

    return [sys.executable, "-m", "virtkit.cli"]


def _ws_handshake(port: int, path: str, token: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET {path}?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def test_a_websocket_that_never_reads_or_sends_garbage(daemon, tmp_path):
    """A console viewer that never reads while the guest prints, and one that sends bytes that are not
    WebSocket frames: the daemon drops or closes them and keeps serving everyone else."""
    api = daemon.unix
    ok(api.post("/vms", json={"name": "w1", "config": counting_config(tmp_path)}), 201)
    ok(api.post("/vms/w1/start"))
    tok = daemon.token("viewer", "read")
    stuck = _ws_handshake(daemon.port, "/vms/w1/console", tok)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    garbage = _ws_handshake(daemon.port, "/vms/w1/console", tok)
    garbage.sendall(b"\xff" * 128)  # FIN, every reserved bit and opcode 0xf: a protocol error
    garbage.settimeout(30)
    got = b""
    try:
        while chunk := garbage.recv(65536):  # (the console's output, then the end)
            got += chunk
    except ConnectionResetError:
        pass
    garbage.close()  # the daemon closed it (a TimeoutError here would fail the test)
    time.sleep(3)  # the guest keeps printing into the stuck viewer's full buffers
    with httpx.Client(base_url=f"http://127.0.0.1:{daemon.port}", timeout=30,
                      headers={"Authorization": f"Bearer {tok}"}) as c:
        for _ in range(20):
            assert ok(c.get("/vms"))["total"] == 1
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{daemon.port}/vms/w1/console?token={tok}") as ws:
        assert b"." in ws.recv(timeout=30)  # a new viewer is served while the stuck one is stuck
    stuck.close()
    ok(api.post("/vms/w1/kill"))


def test_the_inventory_survives_a_sigkill_in_the_middle_of_writes(daemon, tmp_path):
    """Clients define and update VMs as fast as they can; the daemon is SIGKILLed among them. The database
    is intact (integrity check), every definition the daemon confirmed is there, and a new daemon serves it."""
    confirmed: set[str] = set()
    stop = threading.Event()
    cfg = counting_config(tmp_path)

    def writer(k: int) -> None:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(tmp_path / "d" / "virtkitd.sock")),
                          base_url="http://virtkitd", timeout=10) as c:
            i = 0
            while not stop.is_set():
                name = f"k{k}-{i}"
                try:
                    r = c.post("/vms", json={"name": name, "config": cfg})
                    if r.status_code == 201:
                        confirmed.add(name)
                        c.put(f"/vms/{name}", json={"restart": "always"}, headers={"If-Match": '"1"'})
                except httpx.HTTPError:
                    return
                i += 1

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(confirmed) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(daemon.pid(), signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join(15)
    assert len(confirmed) >= 40
    db = sqlite3.connect(tmp_path / "d" / "virtkitd.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    names = {r[0] for r in db.execute("SELECT name FROM vms")}
    db.close()
    assert confirmed <= names, confirmed - names
    daemon.start()
    listed = {v["name"] for v in ok(daemon.unix.get("/vms", params={"limit": 1000}))["items"]}
    assert confirmed <= listed


def test_a_container_through_the_api(daemon, tmp_path):
    """POST /containers runs one from an image (as ``virtkit container run -d``); its actions; DELETE."""
    from tests.helpers.containers import containers_missing

    if containers_missing():
        pytest.skip(containers_missing())
    p = daemon.cli("image", "build", "-t", "busybox", "--busybox")
    assert p.returncode == 0, p.stderr
    api = daemon.unix
    c = ok(api.post("/containers", json={"image": "busybox", "name": "web", "command": ["sleep", "300"],
                                         "env": {"GREETING": "hi"}, "memory": "64m", "pids_limit": 50}), 201)
    assert c["name"] == "web" and c["status"] == "running", c
    assert [x["name"] for x in ok(api.get("/containers"))["items"]] == ["web"]
    assert ok(api.post("/containers/web/pause"))["state"] == "paused"
    assert ok(api.post("/containers/web/resume"))["state"] == "running"
    assert ok(api.post("/containers/web/stop"))["state"] in ("exited", "stopped")
    assert api.post("/containers", json={"image": "busybox", "name": "web"}).status_code == 409  # taken
    for bad in ({"image": "nope-image"}, {"image": "busybox", "memory": "lots"}, {"image": "../x"},
                {"image": "busybox", "env": {"A=B": "c"}}, {"image": "busybox", "restart": "sometimes"}):
        r = api.post("/containers", json=bad)
        assert r.status_code == 422 and r.json()["error"]["message"], (bad, r.text)
    assert [x["name"] for x in ok(api.get("/containers", params={"status": "exited"}))["items"]] == ["web"]
    assert ok(api.get("/containers", params={"status": "running"}))["total"] == 0
    assert api.get("/containers", params={"status": "sleepy"}).status_code == 422
    r = api.delete("/images/busybox")  # a container stands on it
    assert r.status_code == 409 and "container" in r.json()["error"]["message"], r.text
    ok(api.delete("/containers/web"), 204)
    assert api.delete("/containers/web").status_code == 404
    assert ok(api.get("/containers"))["total"] == 0
    ok(api.delete("/images/busybox"), 204)
    assert api.delete("/images/busybox").status_code == 404
    assert api.delete("/images/..%2F..%2Fetc").status_code == 404
    assert ok(api.get("/images"))["total"] == 0


def test_the_docs_page_renders_the_openapi_document(daemon):
    r = daemon.unix.get("/docs")
    if r.status_code == 503:
        pytest.skip("the docs page's assets are not fetched (scripts/vendor-web.sh: needs npm)")
    assert r.status_code == 200 and "/ui/vendor/swagger-ui/swagger-ui-bundle.js" in r.text
    assert daemon.unix.get("/ui/vendor/swagger-ui/swagger-ui-bundle.js").status_code == 200
    doc = daemon.unix.get("/openapi.json").json()
    assert {"/vms", "/tasks/{tid}", "/pools/{pool}/volumes", "/containers", "/modes"} <= set(doc["paths"])


def test_tokens_bound_to_a_pool_or_a_vm_stay_on_it(daemon, tmp_path):
    """``token create --pool P``: the pool's volumes and nothing else; ``--vm V``: the VM, its tasks, and no
    pool, switch or container."""
    for name in ("tank", "other"):
        with open(tmp_path / f"{name}.img", "wb") as f:
            f.truncate(32 << 20)
        assert daemon.cli("pool", "create", name, str(tmp_path / f"{name}.img")).returncode == 0
    ok(daemon.unix.post("/vms", json={"name": "v1", "config": counting_config(tmp_path)}), 201)
    pool_tok = daemon.tcp(daemon.token("tank-admin", "admin", pool="tank"))
    ok(pool_tok.post("/pools/tank/volumes", json={"name": "a", "size": "4M"}), 201)
    assert [p["name"] for p in ok(pool_tok.get("/pools"))["items"]] == ["tank"]
    for method, path in (("POST", "/pools/other/volumes"), ("GET", "/pools/other/volumes"), ("GET", "/vms"),
                         ("GET", "/switches"), ("GET", "/containers"), ("POST", "/vms/v1/start"),
                         ("GET", "/snapshots"), ("GET", "/audit")):
        r = pool_tok.request(method, path, json={"name": "b", "size": "4M"} if method == "POST" else None)
        assert r.status_code == 403 and "pool 'tank'" in r.json()["error"]["message"], (path, r.text)
    vm_tok = daemon.tcp(daemon.token("v1-op", "operate", vm="v1"))
    for path in ("/pools", "/pools/tank/volumes", "/switches", "/containers", "/snapshots"):
        assert vm_tok.get(path).status_code == 403, path
    ok(vm_tok.post("/vms/v1/start"))
    task = ok(vm_tok.post("/vms/v1/snapshots", json={"snapshot": "mine"}), 202)
    assert finished(vm_tok, task)["state"] == "succeeded"
    assert [t["target"] for t in ok(vm_tok.get("/tasks"))["items"]] == ["v1"]
    other = ok(daemon.unix.post("/modes", json={"modes": ["paravirt"], "exec": "true"}), 202)
    assert vm_tok.get(f"/tasks/{other['id']}").status_code == 404  # not its VM's task
    ok(vm_tok.post("/vms/v1/kill"))
    rows = json.loads(daemon.cli("daemon", "token", "list", "--json").stdout)
    assert {(r["name"], r["vm"], r["pool"]) for r in rows} == {("tank-admin", None, "tank"), ("v1-op", "v1", None)}
    p = daemon.cli("daemon", "token", "create", "both", "--vm", "v1", "--pool", "tank")
    assert p.returncode == 1 and "not both" in p.stderr
    finished(daemon.unix, other, 300)


def test_one_inventory_of_everything_in_sqlite(daemon, tmp_path):
    """GET /inventory: VMs, pools, volumes, switches, snapshots in the daemon's SQLite database, whether made
    through the API or on the host by the CLI (found by the next scan), gone when removed either way;
    labels the daemon keeps, which survive its restart."""
    api = daemon.unix
    ok(api.post("/vms", json={"name": "i1", "config": counting_config(tmp_path)}), 201)
    with open(tmp_path / "dev.img", "wb") as f:
        f.truncate(32 << 20)
    assert daemon.cli("pool", "create", "tank", str(tmp_path / "dev.img")).returncode == 0  # on the host
    ok(api.post("/pools/tank/volumes", json={"name": "v1", "size": "4M"}), 201)  # through the API
    assert daemon.cli("volume", "create", "tank/v2", "--size", "4M").returncode == 0
    ok(api.post("/switches", json={"name": "sw"}), 201)
    time.sleep(1.1)  # (a scan less than 1 s old is reused)
    inv = ok(api.get("/inventory"))
    got = {(o["kind"], o["name"]): o["origin"] for o in inv["items"]}
    assert got == {("vm", "i1"): "api", ("pool", "tank"): "host", ("volume", "tank/v1"): "api",
                   ("volume", "tank/v2"): "host", ("switch", "sw"): "api"}, got
    assert inv["unreadable"] == {}
    assert [o["name"] for o in ok(api.get("/inventory", params={"kind": "volume"}))["items"]] == ["tank/v1", "tank/v2"]
    o = ok(api.put("/inventory/volume/tank/v2/labels", json={"labels": {"team": "db", "tier": "gold"}}))
    assert o["labels"] == {"team": "db", "tier": "gold"}
    assert [o["name"] for o in ok(api.get("/inventory", params={"label": "team=db"}))["items"]] == ["tank/v2"]
    for bad in ({"labels": {"Bad Key": "x"}}, {"labels": {"k": 1}}, {"labels": []}, {"tags": {}}):
        assert api.put("/inventory/volume/tank/v2/labels", json=bad).status_code == 422, bad
    assert api.put("/inventory/volume/tank/nope/labels", json={"labels": {}}).status_code == 404
    assert api.get("/inventory", params={"kind": "planet"}).status_code == 422
    db = sqlite3.connect(tmp_path / "d" / "virtkitd.db")
    assert db.execute("SELECT labels FROM objects WHERE kind = 'volume' AND name = 'tank/v2'").fetchone()[0] == \
        '{"team": "db", "tier": "gold"}'
    db.close()
    assert daemon.cli("volume", "delete", "tank/v1").returncode == 0  # removed on the host
    ok(api.delete("/switches/sw"), 204)  # removed through the API
    time.sleep(1.1)
    names = {(o["kind"], o["name"]) for o in ok(api.get("/inventory"))["items"]}
    assert ("volume", "tank/v1") not in names and ("switch", "sw") not in names and ("volume", "tank/v2") in names
    daemon.cli("daemon", "stop")
    daemon.start()
    kept = ok(daemon.unix.get("/inventory", params={"label": "tier=gold"}))["items"]
    assert [o["name"] for o in kept] == ["tank/v2"]
