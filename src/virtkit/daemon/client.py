"""The CLI as a client of a virtkitd (``virtkit --remote URL --token T ps|pause|resume|stop|kill``): the same
commands, answered by the daemon's REST API instead of the local control sockets (standard library only)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from virtkit.errors import VirtkitError


class RemoteError(VirtkitError):
    """The daemon refused or could not be reached; the message is its own."""


def remote() -> tuple[str, str | None] | None:
    """(base URL, token) when commands go to a daemon ($VIRTKIT_REMOTE, set by ``--remote``), else None."""
    url = os.environ.get("VIRTKIT_REMOTE")
    return (url.rstrip("/"), os.environ.get("VIRTKIT_TOKEN")) if url else None


def call(method: str, path: str, body: Any = None, timeout: float = 120) -> Any:
    """One API call; its JSON answer (None for 204). RemoteError with the daemon's error message otherwise."""
    target = remote()
    if target is None:
        raise RemoteError("no daemon given (--remote URL)")
    url, token = target
    req = urllib.request.Request(url + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            data = r.read()
    except urllib.error.HTTPError as err:
        try:
            msg = json.loads(err.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            msg = err.reason
        raise RemoteError(f"{url}: {msg} (HTTP {err.code})") from None
    except (urllib.error.URLError, OSError) as err:
        raise RemoteError(f"{url}: cannot reach the daemon ({getattr(err, 'reason', err)})") from None
    return json.loads(data) if data else None
