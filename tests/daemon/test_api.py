"""virtkitd's REST API through a real HTTP client against a daemon the test starts: a VM's life cycle
(define, start, pause, resume, stats, stop, delete) with the counting guest, token scopes, ETags, the audit
log, malformed requests, and the daemon killed and started again while its VM runs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import time
from pathlib import Path

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


def test_a_vm_life_cycle_through_the_api(daemon, tmp_path):
    api = daemon.unix
    vm = ok(api.post("/vms", json={"name": "c1", "config": counting_config(tmp_path)}), 201)
    assert vm["state"] == "stopped" and vm["defined"] and vm["config"]["memory"] == "32M"
    assert ok(api.post("/vms/c1/start"))["state"] == "running"
    assert [v["name"] for v in ok(api.get("/vms", params={"state": "running"}))["items"]] == ["c1"]
    for _ in range(100):  # (the counters are taken at the end of the vCPU's time slices)
        st = ok(api.get("/vms/c1/stats"))
        if st["stats"]["instructions"] > 0:
            break
        time.sleep(0.1)
    assert st["state"] == "running" and st["stats"]["instructions"] > 0
    assert ok(api.post("/vms/c1/pause"))["state"] == "paused"
    assert ok(api.post("/vms/c1/resume"))["state"] == "running"
    assert api.post("/vms/c1/start").status_code == 409  # running already
    r = api.delete("/vms/c1")
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"  # running: stop first
    assert ok(api.post("/vms/c1/stop", params={"timeout": 1}))["state"] == "stopped"
    ok(api.delete("/vms/c1"), 204)
    assert ok(api.get("/vms"))["total"] == 0
    calls = [(a["method"], a["path"], a["status"]) for a in ok(api.get("/audit"))["items"]][::-1]
    assert calls[:4] == [("POST", "/vms", 201), ("POST", "/vms/c1/start", 200), ("POST", "/vms/c1/pause", 200),
                         ("POST", "/vms/c1/resume", 200)]
    assert ("DELETE", "/vms/c1", 409) in calls and calls[-1] == ("DELETE", "/vms/c1", 204)


def test_tokens_and_scopes_on_tcp(daemon, tmp_path):
    ok(daemon.unix.post("/vms", json={"name": "s1", "config": counting_config(tmp_path)}), 201)
    ok(daemon.unix.post("/vms", json={"name": "s2", "config": counting_config(tmp_path)}), 201)
    anon = daemon.tcp()
    r = anon.get("/vms")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert daemon.tcp("vkt_nope_nope").get("/vms").status_code == 401
    read = daemon.tcp(daemon.token("reader", "read"))
    assert ok(read.get("/vms"))["total"] == 2
    r = read.post("/vms/s1/start")
    assert r.status_code == 403 and "scope read" in r.json()["error"]["message"]
    op = daemon.tcp(daemon.token("operator", "operate", vm="s1"))
    assert [v["name"] for v in ok(op.get("/vms"))["items"]] == ["s1"]  # a VM-bound token sees its VM only
    assert op.post("/vms/s2/start").status_code == 403
    assert op.post("/vms", json={"name": "s3", "config": counting_config(tmp_path)}).status_code == 403
    assert ok(op.post("/vms/s1/start"))["state"] == "running"
    ok(op.post("/vms/s1/kill"))
    who = [a["who"] for a in ok(daemon.unix.get("/audit"))["items"]]
    assert "token:operator" in who and "token:reader" in who
    assert daemon.cli("daemon", "token", "revoke", "reader").returncode == 0
    assert read.get("/vms").status_code == 401
    tokens = json.loads(daemon.cli("daemon", "token", "list", "--json").stdout)
    assert [t["name"] for t in tokens] == ["operator"] and "hash" not in tokens[0]
    db = sqlite3.connect(tmp_path / "d" / "virtkitd.db")
    assert all(not row[0].startswith("vkt_") for row in db.execute("SELECT hash FROM tokens"))


def test_etags_guard_updates(daemon, tmp_path):
    api = daemon.unix
    ok(api.post("/vms", json={"name": "e1", "config": counting_config(tmp_path)}), 201)
    r = api.get("/vms/e1")
    etag = r.headers["etag"]
    assert api.put("/vms/e1", json={"restart": "always"}).status_code == 428
    ok(api.put("/vms/e1", json={"restart": "always"}, headers={"If-Match": etag}))
    r = api.put("/vms/e1", json={"restart": "no"}, headers={"If-Match": etag})  # stale
    assert r.status_code == 412 and r.json()["error"]["code"] == "precondition_failed"
    new = api.get("/vms/e1")
    assert new.headers["etag"] != etag and new.json()["restart"] == "always"
    r = api.put("/vms/e1", json={"config": dict(counting_config(tmp_path), cpus=99)},
                headers={"If-Match": new.headers["etag"]})
    assert r.status_code == 422 and "cpus" in r.json()["error"]["message"]


@pytest.mark.parametrize("body,needle", [
    (b"{not json", "not valid JSON"),
    (json.dumps({"name": "x", "config": {}, "colour": "red"}).encode(), "body.colour"),
    (json.dumps({"name": "x", "config": "a string"}).encode(), "body.config"),
    (json.dumps({"name": "../../etc", "config": {}}).encode(), "body.name"),
    (json.dumps({"name": "x", "config": {"memory": "lots"}}).encode(), "memory"),
    (json.dumps({"name": "x", "config": {"board": "nosuch"}}).encode(), "board"),
])
def test_malformed_requests_get_clear_errors_and_the_daemon_keeps_serving(daemon, body, needle):
    r = daemon.unix.post("/vms", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == (400 if needle == "not valid JSON" else 422), r.text
    err = r.json()["error"]
    assert set(err) == {"code", "message", "field"} and needle in (err["message"] + str(err["field"])), err
    big = daemon.unix.post("/vms", content=b"x" * (2 << 20), headers={"Content-Type": "application/json"})
    assert big.status_code == 413 and big.json()["error"]["code"] == "too_large"
    assert daemon.unix.get("/vms/../../etc/passwd").status_code == 404
    assert daemon.unix.get("/nosuch").json()["error"]["code"] == "not_found"
    assert ok(daemon.unix.get("/vms"))["total"] == 0


def test_the_daemon_killed_and_started_again_finds_its_running_vm(daemon, tmp_path):
    api = daemon.unix
    ok(api.post("/vms", json={"name": "k1", "config": counting_config(tmp_path)}), 201)
    ok(api.post("/vms/k1/start"))
    os.kill(daemon.pid(), signal.SIGKILL)  # no clean shutdown
    time.sleep(0.2)
    daemon.start()
    vm = ok(daemon.unix.get("/vms/k1"))
    assert vm["state"] == "running" and vm["defined"] and vm["pid"] > 0  # the VM outlived the daemon
    db = sqlite3.connect(tmp_path / "d" / "virtkitd.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA user_version").fetchone()[0] >= 2
    ok(daemon.unix.post("/vms/k1/kill"))


def test_the_openapi_document_describes_every_endpoint(daemon):
    doc = ok(daemon.unix.get("/openapi.json"))
    assert doc["openapi"].startswith("3.")
    for path in ("/vms", "/vms/{name}", "/vms/{name}/start", "/vms/{name}/stop", "/vms/{name}/pause",
                 "/vms/{name}/resume", "/vms/{name}/stats", "/containers", "/images", "/pools", "/switches",
                 "/audit"):
        assert path in doc["paths"], path
    assert "VMDefine" in doc["components"]["schemas"]
    assert ok(daemon.unix.get("/containers"))["items"] == [] and ok(daemon.unix.get("/images"))["total"] == 0
    for op in doc["paths"].values():  # no parameter leaks from the auth dependency
        for o in op.values():
            assert "name" not in [p["name"] for p in o.get("parameters", []) if p["in"] == "query"]


def test_pools_are_listed(daemon, tmp_path):
    env = dict(daemon.env, VIRTKIT_POOLS_DIR=str(tmp_path / "pools"))
    daemon.cli("daemon", "stop")
    daemon.env = env
    daemon.start()
    dev = tmp_path / "pv.img"
    dev.write_bytes(b"")
    os.truncate(dev, 64 << 20)
    assert daemon.cli("pool", "create", "tank", str(dev)).returncode == 0
    assert daemon.cli("volume", "create", "tank/v1", "--size", "8M").returncode == 0
    rows = ok(daemon.unix.get("/pools"))["items"]
    assert rows[0]["name"] == "tank" and rows[0]["state"] == "ok" and "v1" in str(rows[0]["volumes"])


def test_the_api_reference_in_docs_is_up_to_date():
    from virtkit.daemon import apidoc

    doc = Path(__file__).resolve().parents[2] / "docs" / "api.md"
    assert doc.read_text() == apidoc.markdown(apidoc.openapi()), (
        "docs/api.md is stale: python -m virtkit.daemon.apidoc > docs/api.md")


def test_restart_always_brings_a_dead_vm_back_until_it_is_stopped(daemon, tmp_path):
    api = daemon.unix
    ok(api.post("/vms", json={"name": "r1", "config": counting_config(tmp_path), "restart": "always"}), 201)
    pid = ok(api.post("/vms/r1/start"))["pid"]
    os.kill(pid, signal.SIGKILL)  # the VM's process dies under it
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        vm = ok(api.get("/vms/r1"))
        if vm["state"] == "running" and vm["pid"] != pid:
            break
        time.sleep(0.2)
    assert vm["state"] == "running" and vm["pid"] != pid, vm
    ok(api.post("/vms/r1/kill"))  # stopped through the API: it stays stopped
    time.sleep(2.5)
    assert ok(api.get("/vms/r1"))["state"] == "stopped"
    assert "restarting it" in (tmp_path / "d" / "virtkitd.log").read_text()


@pytest.mark.slow
def test_the_console_over_a_websocket(daemon, guest_images):
    """The Linux guest's serial console through ``/vms/NAME/console``: a typist's command runs and its
    output reaches the typist and a read-only viewer; a read token cannot type; garbage from a viewer does
    not disturb the daemon."""
    from websockets.sync.client import connect

    cfg = {"board": "riscv64-virt", "kernel": str(guest_images.kernel), "initrd": str(guest_images.initrd),
           "firmware": str(guest_images.firmware), "memory": "128M"}
    ok(daemon.unix.post("/vms", json={"name": "g1", "config": cfg}), 201)
    ok(daemon.unix.post("/vms/g1/start"))
    base = f"ws://127.0.0.1:{daemon.port}/vms/g1/console"
    op, rd = daemon.token("typist", "operate"), daemon.token("viewer", "read")
    with pytest.raises(Exception, match="403|4403|rejected"):
        with connect(f"{base}?write=true&token={rd}", open_timeout=10) as ws:
            ws.recv(timeout=5)
    with connect(f"{base}?write=true&token={op}") as typist, connect(f"{base}?token={rd}") as viewer:
        viewer.send(b"\x00\xff garbage from a viewer \x1b[999;999R")
        seen, out = b"", b""
        deadline = time.monotonic() + 180
        next_try = 0.0
        while b"vk-42" not in seen and time.monotonic() < deadline:
            if time.monotonic() > next_try:
                typist.send(b"echo vk-$((6*7))\n")
                next_try = time.monotonic() + 5
            try:
                seen += typist.recv(timeout=1)
            except TimeoutError:
                pass
        assert b"vk-42" in seen, seen[-2000:]
        deadline = time.monotonic() + 30
        while b"vk-42" not in out and time.monotonic() < deadline:
            try:
                out += viewer.recv(timeout=1)
            except TimeoutError:
                pass
        assert b"vk-42" in out  # the viewer saw the same output
    assert ok(daemon.unix.get("/vms/g1"))["state"] == "running"
    audit = ok(daemon.unix.get("/audit"))["items"]
    assert any(a["method"] == "WEBSOCKET" and a["who"] == "token:typist" for a in audit)
    ok(daemon.unix.post("/vms/g1/kill"))


def test_events_stream_state_changes(daemon, tmp_path):
    """``GET /events`` (Server-Sent Events): the VMs at once, then each change as it happens."""
    import threading

    ok(daemon.unix.post("/vms", json={"name": "ev1", "config": counting_config(tmp_path)}), 201)
    got: list[dict] = []
    stop = threading.Event()

    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(tmp_path / "d" / "virtkitd.sock")),
                          base_url="http://virtkitd", timeout=None)

    def listen() -> None:
        with contextlib.suppress(httpx.HTTPError, RuntimeError, ValueError), client:
            with client.stream("GET", "/events") as r:
                assert r.headers["content-type"].startswith("text/event-stream")
                event = None
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "vm":
                        got.append(json.loads(line[6:]))
                    if stop.is_set():
                        return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    def seen(state: str) -> bool:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if [g["state"] for g in got if g["name"] == "ev1"][-1:] == [state]:
                return True
            time.sleep(0.05)
        return False

    ok(daemon.unix.post("/vms/ev1/start"))
    assert seen("running"), got
    ok(daemon.unix.post("/vms/ev1/pause"))
    assert seen("paused"), got
    ok(daemon.unix.post("/vms/ev1/kill"))
    assert seen("stopped"), got
    stop.set()
    client.close()  # (the stream ends here, not at the daemon's shutdown)
    states = [g["state"] for g in got if g["name"] == "ev1"]
    assert states == ["stopped", "running", "paused", "stopped"], states


def test_the_cli_drives_a_remote_daemon(daemon, tmp_path):
    """``virtkit --remote URL --token T ps|pause|resume|stop``: the same commands, through the REST API."""
    ok(daemon.unix.post("/vms", json={"name": "rc1", "config": counting_config(tmp_path)}), 201)
    ok(daemon.unix.post("/vms/rc1/start"))
    op, rd = daemon.token("cli", "operate"), daemon.token("cli-read", "read")
    url = f"http://127.0.0.1:{daemon.port}"
    env = dict(daemon.env, VIRTKIT_RUN_DIR=str(tmp_path / "elsewhere"))  # (no local VMs: only the daemon's)
    daemon.env, saved = env, daemon.env
    try:
        rows = json.loads(daemon.cli("--remote", url, "--token", op, "ps", "--json").stdout)
        assert [(r["name"], r["state"]) for r in rows] == [("rc1", "running")]
        assert rows[0]["board"] == "riscv64-virt" and rows[0]["pid"] > 0  # (the VM's own status, as locally)
        daemon.env = dict(env, VIRTKIT_NO_DAEMON="1")  # without --remote, and not to the local daemon:
        assert daemon.cli("ps", "--json").stdout.strip() == "[]"  # this host's sockets (none here)
        daemon.env = env
        p = daemon.cli("--remote", url, "--token", op, "pause", "rc1")
        assert p.returncode == 0 and "rc1: paused" in p.stdout, p
        assert daemon.cli(f"--remote={url}", f"--token={op}", "resume", "rc1").returncode == 0
        p = daemon.cli("--remote", url, "--token", rd, "stop", "rc1")
        assert p.returncode == 1 and "scope read" in p.stderr and "HTTP 403" in p.stderr, p
        p = daemon.cli("--remote", url, "--token", "vkt_x_y", "ps")
        assert p.returncode == 1 and "not valid" in p.stderr
        p = daemon.cli("--remote", "http://127.0.0.1:1", "ps")
        assert p.returncode == 1 and "cannot reach the daemon" in p.stderr
        assert daemon.cli("--remote", url, "--token", op, "stop", "--timeout", "1", "rc1").returncode == 0
        assert ok(daemon.unix.get("/vms/rc1"))["state"] == "stopped"
    finally:
        daemon.env = saved
