"""A running VM as an object other programs can reach: a control socket per VM and the list of running VMs.

Every VM that ``virtkit run`` starts gets a name and two files in the runtime directory
(``$VIRTKIT_RUN_DIR``, else ``$XDG_RUNTIME_DIR/virtkit/vms``, else ``/run/virtkit/vms`` for root and
``/tmp/virtkit-<uid>/vms`` otherwise): ``NAME.sock``, the control socket, and ``NAME.json`` (pid, start time,
harts, memory, board). The protocol is the switch daemon's: one JSON object per line, ``{"op": ...}``, answered
by ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}`` (QMP's ``query-status``, ``stop``, ``cont``,
``quit``, ``system_powerdown`` in spirit):

=========  ==========================================================================================
op         what it does
=========  ==========================================================================================
status     state (running, paused, stopping), why, pid, uptime, harts, memory
stats      live counters: instructions, MIPS over the last interval, exits by reason, devices
pause      stop every vCPU at an instruction boundary (guest time stops too)
resume     run again (``catch_up: true`` makes guest time jump by the paused time)
stop       ask the guest to power off (``timeout`` seconds, default 30; then it is killed)
kill       stop the VM at once
console    attach to the serial console (``write: true`` to type; one typist): after the reply the
           connection carries raw console bytes both ways
config     the VM's MachineConfig as plain data
=========  ==========================================================================================

A client that sends garbage gets an error reply; one that connects and never sends is answered with an
error after :data:`IDLE_TIMEOUT` seconds; the VM keeps running either way. ``virtkit ps`` lists the VMs whose
socket answers and removes the entries of VMs whose process is gone.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from virtkit.errors import VirtkitError
from virtkit.machine.config import check_vm_name

IDLE_TIMEOUT = float(os.environ.get("VIRTKIT_CONTROL_IDLE", "30"))
MAX_LINE = 64 * 1024
MAX_CLIENTS = 32


class ControlError(VirtkitError):
    """A VM that does not exist, does not answer, or refused a request."""


def run_dir() -> Path:
    """Where running VMs keep their control sockets and descriptions."""
    env = os.environ.get("VIRTKIT_RUN_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "virtkit" / "vms"
    if os.geteuid() == 0:
        return Path("/run/virtkit/vms")
    return Path(f"/tmp/virtkit-{os.getuid()}/vms")


def socket_path(name: str) -> Path:
    """The control socket of VM ``name``."""
    return run_dir() / f"{check_vm_name(name)}.sock"


def generate_name() -> str:
    """A free name like ``vm-3f2a``."""
    import secrets

    while True:
        name = f"vm-{secrets.token_hex(2)}"
        if not (run_dir() / f"{name}.json").exists():
            return name


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (a killed VM whose parent has not reaped it yet is a
    zombie: gone for every purpose here)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


# ------------------------------------------------------------------------------------------------- server
class ControlServer:
    """Serves the control socket of one VM (threads: an acceptor and one per connection)."""

    def __init__(self, name: str, handlers: dict[str, Callable[..., Any]], info: dict[str, Any],
                 console_attach: Callable[[socket.socket, dict[str, Any]], None] | None = None) -> None:
        self.name = check_vm_name(name)
        self.handlers = handlers
        self.console_attach = console_attach
        d = run_dir()
        d.mkdir(parents=True, exist_ok=True)
        try:
            os.chmod(d, 0o700)
        except OSError:
            pass
        self.sock_path = d / f"{name}.sock"
        self.info_path = d / f"{name}.json"
        self._claim()
        self.info = {"name": name, "pid": os.getpid(), "socket": str(self.sock_path), "started": time.time(), **info}
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._listener.bind(str(self.sock_path))
        except OSError as err:
            self._listener.close()
            raise ControlError(f"cannot create the control socket {self.sock_path}: {err.strerror}") from None
        os.chmod(self.sock_path, 0o600)
        self._listener.listen(128)  # (a daemon's burst of status requests must not find it full)
        tmp = self.info_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.info))
        os.replace(tmp, self.info_path)
        self._clients = threading.Semaphore(MAX_CLIENTS)
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="virtkit-control", daemon=True)
        self._thread.start()

    def _claim(self) -> None:
        """Refuse a name in use by a live VM; clear the leftovers of a dead one."""
        if self.sock_path.exists() or self.info_path.exists():
            pid = 0
            try:
                pid = int(json.loads(self.info_path.read_text()).get("pid", 0))
            except (OSError, ValueError, AttributeError):
                pass
            if pid and pid != os.getpid() and pid_alive(pid) and _answers(self.sock_path):
                raise ControlError(f"a VM named {self.name!r} is already running (pid {pid}); "
                                   "pick another --name or stop it first")
            for p in (self.sock_path, self.info_path):
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                break
            if not self._clients.acquire(blocking=False):
                _send(conn, {"ok": False, "error": f"too many control connections (at most {MAX_CLIENTS})"})
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), name="virtkit-control-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        handed_over = False
        try:
            conn.settimeout(IDLE_TIMEOUT)
            buf = b""
            while True:
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    _send(conn, {"ok": False, "error": f"no request within {IDLE_TIMEOUT:g} s: closing"})
                    return
                if not chunk:
                    return
                buf += chunk
                if b"\n" not in buf and len(buf) > MAX_LINE:
                    _send(conn, {"ok": False, "error": f"request longer than {MAX_LINE} bytes: closing"})
                    return
                while b"\n" in buf:
                    line, _, buf = buf.partition(b"\n")
                    if not line.strip():
                        continue
                    reply, handed_over = self._dispatch(line, conn)
                    if handed_over:
                        return
                    _send(conn, reply)
        except OSError:
            pass
        finally:
            self._clients.release()
            if not handed_over:
                conn.close()

    def _dispatch(self, line: bytes, conn: socket.socket) -> tuple[dict[str, Any], bool]:
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError) as err:
            return {"ok": False, "error": f"malformed request (not JSON): {err}"}, False
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            return {"ok": False, "error": "malformed request: expected an object with a string 'op'"}, False
        op = req["op"]
        if op == "console":
            if self.console_attach is None:
                return {"ok": False, "error": "this VM has no serial console"}, False
            try:
                self.console_attach(conn, req)
            except (ValueError, VirtkitError) as err:
                return {"ok": False, "error": str(err)}, False
            return {}, True
        fn = self.handlers.get(op)
        if fn is None:
            known = ", ".join(sorted([*self.handlers, "console"]))
            return {"ok": False, "error": f"unknown op {op!r} (known: {known})"}, False
        args = {k: v for k, v in req.items() if k != "op"}
        try:
            result = fn(**args)
        except TypeError as err:
            return {"ok": False, "error": f"bad arguments for {op!r}: {err}"}, False
        except (ValueError, VirtkitError) as err:
            return {"ok": False, "error": str(err)}, False
        except Exception as err:  # a bug must not take the VM down: report it
            return {"ok": False, "error": f"{op} failed: {type(err).__name__}: {err}"}, False
        return {"ok": True, **(result or {})}, False

    def close(self) -> None:
        """Stop serving and remove the socket and the description."""
        if self._closed:
            return
        self._closed = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for p in (self.sock_path, self.info_path):
            try:
                # only our own files: a VM started later under the same name must keep its entry
                if p.suffix == ".json" and json.loads(p.read_text()).get("pid") != os.getpid():
                    continue
                p.unlink()
            except (OSError, ValueError):
                pass


def _send(conn: socket.socket, msg: dict[str, Any]) -> None:
    try:
        conn.sendall(json.dumps(msg, default=str).encode() + b"\n")
    except OSError:
        pass


def _answers(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(str(path))
        s.sendall(b'{"op": "ping"}\n')
        return s.recv(4096).startswith(b"{")
    except OSError:
        return False
    finally:
        s.close()


# ------------------------------------------------------------------------------------------------- client
def connect(name: str, timeout: float = 10.0) -> socket.socket:
    """A connection to VM ``name``'s control socket (ControlError when there is no such VM)."""
    path = socket_path(name)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                s.connect(str(path))
                break
            except BlockingIOError:  # the listener's backlog is full for now (EAGAIN on a Unix socket): retry
                if time.monotonic() > deadline:
                    s.close()
                    raise ControlError(f"VM {name!r} is too busy to take a connection") from None
                time.sleep(0.002)
    except (FileNotFoundError, ConnectionRefusedError):
        s.close()
        d = run_dir()  # (names from the run directory only: asking the VMs would come back here)
        known = sorted(p.stem for p in d.glob("*.json") if p.stem != name) if d.is_dir() else []
        hint = f" (running: {', '.join(known)})" if known else " (no VM is running)"
        raise ControlError(f"no running VM named {name!r}{hint}") from None
    return s


def read_reply(s: socket.socket, name: str) -> dict[str, Any]:
    """One JSON line from the VM, or ControlError with its message."""
    buf = b""
    while not buf.endswith(b"\n"):
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            raise ControlError(f"VM {name!r} did not answer in time") from None
        if not chunk:
            break
        buf += chunk
    if not buf:
        raise ControlError(f"VM {name!r} closed the connection (did it stop?)")
    try:
        reply = json.loads(buf)
    except ValueError:
        raise ControlError(f"VM {name!r} sent a malformed reply") from None
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "request failed")))
    return reply


def request(name: str, op: str, /, wait: float = 10.0, **args: Any) -> dict[str, Any]:
    """Send one request to VM ``name`` (waiting at most ``wait`` seconds); its reply (without ``ok``)."""
    with connect(name, wait) as s:
        s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        reply = read_reply(s, name)
    reply.pop("ok", None)
    return reply


def list_vms(stats: bool = False) -> list[dict[str, Any]]:
    """The running VMs (their status replies); entries of VMs whose process died are removed."""
    d = run_dir()
    out = []
    for info_path in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            info = json.loads(info_path.read_text())
            name = check_vm_name(str(info["name"]))
            pid = int(info["pid"])
        except (OSError, ValueError, KeyError, TypeError, VirtkitError):
            _remove_entry(info_path)
            continue
        if not pid_alive(pid):
            _remove_entry(info_path)
            continue
        try:
            row = request(name, "status", wait=3)
            if stats:
                row["stats"] = request(name, "stats", wait=3)
        except VirtkitError:
            if not pid_alive(pid):
                _remove_entry(info_path)
                continue
            row = {**info, "state": "not answering"}
        out.append(row)
    return out


def _remove_entry(info_path: Path) -> None:
    for p in (info_path, info_path.with_suffix(".sock")):
        try:
            p.unlink()
        except FileNotFoundError:
            pass
