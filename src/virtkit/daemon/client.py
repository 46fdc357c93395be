"""The CLI as a client of a virtkitd: commands that act on running VMs (``ps``, ``pause``, ``resume``,
``stop``, ``kill``, ``console``, ``snapshot create``, ``migrate``) go to the daemon when one runs on this
host (its Unix socket: the daemon's audit log and restart policy see them) or to the one named by
``virtkit --remote URL --token T [--cacert PEM]``, and straight to the VMs' control sockets otherwise.
Standard library only, but for the console's WebSocket."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import urllib.parse
from typing import Any

from virtkit.daemon.db import NO_DAEMON
from virtkit.errors import VirtkitError


class RemoteError(VirtkitError):
    """The daemon refused or could not be reached; the message is its own."""


def remote() -> tuple[str, str | None] | None:
    """(base URL, token) when commands go to a daemon, else None: ``$VIRTKIT_REMOTE`` (set by
    ``--remote``), or ``unix:SOCKET`` of a virtkitd running on this host (unless ``$VIRTKIT_NO_DAEMON``)."""
    url = os.environ.get("VIRTKIT_REMOTE")
    if url:
        return url.rstrip("/"), os.environ.get("VIRTKIT_TOKEN")
    if os.environ.get(NO_DAEMON):
        return None
    from virtkit.daemon.server import paths, running_pid

    sock = paths()["sock"]
    if sock.exists() and running_pid() is not None:
        return f"unix:{sock}", None
    return None


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over the daemon's Unix socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("virtkitd", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


def tls_context() -> ssl.SSLContext:
    """Certificates checked against ``$VIRTKIT_CACERT`` (``--cacert``: e.g. the daemon's generated
    ``tls.crt``) or the system's store."""
    ca = os.environ.get("VIRTKIT_CACERT")
    try:
        return ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    except (OSError, ssl.SSLError) as err:
        raise RemoteError(f"--cacert {ca}: {err}") from None


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    if url.startswith("unix:"):
        return _UnixConnection(url[5:], timeout), ""
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise RemoteError(f"--remote {url!r}: expected http://HOST:PORT or https://HOST:PORT")
    if u.scheme == "https":
        return http.client.HTTPSConnection(u.hostname, u.port or 443, timeout=timeout, context=tls_context()), u.path
    return http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout), u.path


def call(method: str, path: str, body: Any = None, timeout: float = 120) -> Any:
    """One API call; its JSON answer (None for 204). RemoteError with the daemon's error message otherwise."""
    target = remote()
    if target is None:
        raise RemoteError("no daemon given (--remote URL) and none runs here")
    url, token = target
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    try:
        conn, prefix = _connection(url, timeout)
        try:
            conn.request(method, prefix + path, body=None if body is None else json.dumps(body), headers=headers)
            r = conn.getresponse()
            data = r.read()
        finally:
            conn.close()
    except (OSError, http.client.HTTPException) as err:
        where = "the local virtkitd" if url.startswith("unix:") else url
        raise RemoteError(f"{where}: cannot reach the daemon ({getattr(err, 'reason', None) or err})") from None
    if r.status >= 400:
        try:
            msg = json.loads(data)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            msg = r.reason
        raise RemoteError(f"{msg} (HTTP {r.status} from {'virtkitd' if url.startswith('unix:') else url})")
    return json.loads(data) if data else None


def wait_task(task: dict[str, Any], timeout: float = 3600) -> dict[str, Any]:
    """Poll a task until it ends; its result, or RemoteError with its error."""
    import time

    deadline = time.monotonic() + timeout
    while task["state"] == "running":
        if time.monotonic() > deadline:
            raise RemoteError(f"task {task['id']} ({task['kind']}) is still running after {timeout:.0f} s")
        time.sleep(0.2)
        task = call("GET", f"/tasks/{task['id']}")
    if task["state"] != "succeeded":
        raise RemoteError(f"{task['kind']} of {task['target']} failed: {task.get('error')}")
    return task.get("result") or {}


def console_url(target: tuple[str, str | None], name: str, write: bool, force: bool) -> tuple[str, dict[str, str], Any]:
    """The WebSocket URL of VM ``name``'s console on the daemon ``target`` (from :func:`remote`), its headers
    and TLS context."""
    url, token = target
    q = urllib.parse.urlencode({"write": str(write).lower(), "force": str(force).lower()})
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if url.startswith("unix:"):
        return f"ws://virtkitd/vms/{name}/console?{q}", headers, None
    ws = "wss" + url[5:] if url.startswith("https") else "ws" + url[4:]
    return f"{ws}/vms/{name}/console?{q}", headers, tls_context() if url.startswith("https") else None


def open_console(name: str, write: bool, force: bool) -> Any:
    """A connected WebSocket (``websockets``' synchronous client) to VM ``name``'s console on the daemon."""
    from websockets.exceptions import InvalidStatus, WebSocketException
    from websockets.sync.client import connect, unix_connect

    target = remote()
    if target is None:
        raise RemoteError("no daemon given (--remote URL) and none runs here")
    url, headers, ctx = console_url(target, name, write, force)
    try:
        if target[0].startswith("unix:"):
            return unix_connect(target[0][5:], url, additional_headers=headers, open_timeout=15)
        return connect(url, additional_headers=headers, ssl=ctx, open_timeout=15)
    except InvalidStatus as err:
        raise RemoteError(f"the daemon refused the console (HTTP {err.response.status_code})") from None
    except (OSError, WebSocketException) as err:
        raise RemoteError(f"cannot open VM {name!r}'s console through the daemon: {err}") from None
