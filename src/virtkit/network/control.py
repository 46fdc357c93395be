"""Talking to switch daemons: requests over the control socket, start/stop, create/delete, list.

This is the library the CLI (``virtkit net``) and :class:`~virtkit.network.switchport.SwitchPort` call.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from virtkit.errors import ConfigError, VirtkitError
from virtkit.network import config as cfgmod


class SwitchError(VirtkitError):
    """A switch that is not running, cannot start, or refused a request."""


def _connect(name: str, timeout: float = 10.0) -> socket.socket:
    path = cfgmod.switch_dir(name) / "control.sock"
    if not (cfgmod.switch_dir(name) / "config.json").exists():
        raise SwitchError(f"no switch {name!r} (create it with `virtkit net create {name}`)")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        s.close()
        raise SwitchError(f"switch {name!r} is not running (start it with `virtkit net start {name}`)") from None
    return s


def _read_reply(s: socket.socket, name: str) -> dict[str, Any]:
    buf = b""
    while not buf.endswith(b"\n"):
        try:
            chunk = s.recv(1 << 20)
        except TimeoutError:
            raise SwitchError(f"switch {name!r} did not answer") from None
        if not chunk:
            break
        buf += chunk
    try:
        reply = json.loads(buf)
    except ValueError:
        raise SwitchError(f"switch {name!r} sent a malformed reply") from None
    if not reply.get("ok"):
        raise SwitchError(str(reply.get("error", "request failed")))
    return reply


def request(name: str, op: str, /, **args: Any) -> dict[str, Any]:
    """Send one control request to switch ``name``; the reply, or :class:`SwitchError` with its message."""
    with _connect(name) as s:
        s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        return _read_reply(s, name)


def request_fd(name: str, op: str, /, **args: Any) -> tuple[dict[str, Any], int]:
    """A request whose reply carries a file descriptor (``attach``)."""
    with _connect(name) as s:
        s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        msg, fds, _flags, _addr = socket.recv_fds(s, 1 << 16, 1)
        try:
            reply = json.loads(msg)
        except ValueError:
            for fd in fds:
                os.close(fd)
            raise SwitchError(f"switch {name!r} sent a malformed reply") from None
        if not reply.get("ok") or not fds:
            for fd in fds:
                os.close(fd)
            raise SwitchError(str(reply.get("error", "attach failed")))
        return reply, fds[0]


def is_running(name: str) -> bool:
    """Does the switch answer on its control socket?"""
    try:
        request(name, "ping")
        return True
    except VirtkitError:
        return False


def start(name: str, timeout: float = 15.0) -> int:
    """Spawn the switch daemon for an existing configuration; wait until it answers. Returns its pid."""
    d = cfgmod.switch_dir(name)
    cfgmod.load(d / "config.json")  # a broken config is reported here, not in a log file
    if is_running(name):
        raise SwitchError(f"switch {name!r} is already running")
    log = open(d / "switch.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "virtkit.network.daemon", name, "--dir", str(d)],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (d / "switch.log").read_text(errors="replace").strip().splitlines()[-1:]
            raise SwitchError(f"switch {name!r} exited at start: {tail[0] if tail else 'see switch.log'}")
        if is_running(name):
            return proc.pid
        time.sleep(0.05)
    proc.kill()
    raise SwitchError(f"switch {name!r} did not come up within {timeout:.0f} s (see {d / 'switch.log'})")


def stop(name: str, timeout: float = 10.0) -> None:
    """Stop a running switch (its configuration stays)."""
    d = cfgmod.switch_dir(name)
    pid = None
    try:
        pid = int((d / "switch.pid").read_text())
    except (OSError, ValueError):
        pass
    try:
        request(name, "shutdown")
    except VirtkitError:
        if pid is None:
            raise SwitchError(f"switch {name!r} is not running") from None
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not (d / "control.sock").exists():
            return
        time.sleep(0.05)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def create(name: str, start_daemon: bool = True, **settings: Any) -> dict[str, Any]:
    """Create a switch configuration and (by default) start it."""
    d = cfgmod.switch_dir(name)
    if (d / "config.json").exists():
        raise ConfigError(f"switch {name!r} already exists ({d})")
    cfg = cfgmod.new_config(name, **settings)
    cfgmod.save(d / "config.json", cfg)
    if start_daemon:
        try:
            start(name)
        except VirtkitError:
            shutil.rmtree(d, ignore_errors=True)
            raise
    return cfg


def delete(name: str) -> None:
    """Stop a switch and remove its configuration."""
    d = cfgmod.switch_dir(name)
    if not (d / "config.json").exists():
        raise SwitchError(f"no switch {name!r}")
    if is_running(name):
        stop(name)
    shutil.rmtree(d, ignore_errors=True)


def list_switches() -> list[dict[str, Any]]:
    """Every configured switch with its state and port count."""
    base = cfgmod.net_dir()
    out = []
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        if not (d / "config.json").exists():
            continue
        row: dict[str, Any] = {"name": d.name, "running": False, "ports": 0, "dir": str(d)}
        try:
            cfg = cfgmod.load(d / "config.json")
            row["ports"] = len(cfg["ports"])
        except VirtkitError as err:
            row["error"] = str(err)
        row["running"] = is_running(d.name) if "error" not in row else False
        out.append(row)
    return out


def statedir(name: str) -> Path:
    """The directory of switch ``name`` (re-exported for front ends)."""
    return cfgmod.switch_dir(name)
