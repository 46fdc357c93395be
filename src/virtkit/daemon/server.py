"""Running virtkitd: uvicorn serving the API on the Unix socket (trusted, mode 0600) and, when asked, on TCP
(tokens), both in one event loop; ``start`` detaches it, ``stop`` ends it by its pid file."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

from virtkit.daemon.db import DaemonError, Inventory, home


def paths(root: Path | None = None) -> dict[str, Path]:
    """The daemon's files: database, socket, pid file, log."""
    d = Path(root or home())
    return {"dir": d, "db": d / "virtkitd.db", "sock": d / "virtkitd.sock", "pid": d / "virtkitd.pid",
            "log": d / "virtkitd.log"}


def running_pid(root: Path | None = None) -> int | None:
    """The running daemon's pid, or None (a stale pid file is ignored)."""
    from virtkit.machine.control import pid_alive

    try:
        pid = int(paths(root)["pid"].read_text())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().split(b"\0")
    except (OSError, ValueError):
        return None
    # (a killed daemon not yet reaped is a zombie: not alive; a pid reused by another program is not ours)
    return pid if pid_alive(pid) and b"daemon" in cmd else None


def serve(listen: str | None = None, root: Path | None = None) -> None:
    """Serve until SIGTERM/SIGINT (in this process)."""
    import uvicorn

    from virtkit.daemon.app import LiveView, create_app

    p = paths(root)
    p["dir"].mkdir(parents=True, exist_ok=True, mode=0o700)
    inv = Inventory(p["db"])
    if p["sock"].exists():
        p["sock"].unlink()
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket is the admin's door: owner only
    try:
        unix.bind(str(p["sock"]))
    finally:
        os.umask(old)
    running = LiveView()
    servers = [uvicorn.Server(uvicorn.Config(create_app(inv, trusted=True, running=running), log_level="warning",
                                             access_log=False, lifespan="off",
                                             timeout_graceful_shutdown=2))]  # (event streams end at stop)
    socks = [[unix]]
    if listen:
        host, _, port = listen.rpartition(":")
        if not port.isdigit() or not host:
            raise DaemonError(f"--listen {listen!r}: expected HOST:PORT")
        tcp = socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind((host.strip("[]"), int(port)))
        except OSError as err:
            raise DaemonError(f"--listen {listen}: {err.strerror}") from None
        servers.append(uvicorn.Server(uvicorn.Config(create_app(inv, trusted=False, running=running),
                                                     log_level="warning", access_log=False, lifespan="off",
                                                     timeout_graceful_shutdown=2)))
        socks.append([tcp])
    p["pid"].write_text(str(os.getpid()))
    import threading

    from virtkit.daemon.app import restarter

    done = threading.Event()
    threading.Thread(target=restarter, args=(inv, running, done), name="virtkitd-restart", daemon=True).start()

    async def main() -> None:
        await asyncio.gather(*(s.serve(sockets=sk) for s, sk in zip(servers, socks, strict=True)))

    try:
        asyncio.run(main())
    finally:
        done.set()
        for f in ("pid", "sock"):
            p[f].unlink(missing_ok=True)


def start(listen: str | None = None, root: Path | None = None, timeout: float = 20) -> int:
    """Start the daemon in the background (its own session; output to its log); its pid once it answers."""
    p = paths(root)
    if running_pid(root):
        raise DaemonError(f"virtkitd is running already (pid {running_pid(root)})")
    p["dir"].mkdir(parents=True, exist_ok=True, mode=0o700)
    import subprocess

    log = open(p["log"], "ab")
    argv = [sys.executable, "-m", "virtkit.cli", "daemon", "run"] + (["--listen", listen] if listen else [])
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                            env=dict(os.environ, **({"VIRTKIT_DAEMON_DIR": str(p["dir"])})))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DaemonError(f"virtkitd ended at once: {p['log'].read_text()[-1000:]}")
        if p["sock"].exists() and running_pid(root) == proc.pid:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(p["sock"]))
                return proc.pid
            except OSError:
                pass
        time.sleep(0.05)
    proc.kill()
    raise DaemonError(f"virtkitd did not answer within {timeout:.0f} s (its log: {p['log']})")


def stop(root: Path | None = None, timeout: float = 20) -> bool:
    """Stop the daemon (SIGTERM; the VMs it started keep running); whether one was running."""
    pid = running_pid(root)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return True
