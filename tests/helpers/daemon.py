"""A virtkitd for tests: started in private directories with a Unix-socket client (admin) and a TCP
address (tokens); the counting guest's machine config; a status-checking answer reader."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.helpers.guests import COUNTING
from tests.helpers.opensbi import payload_image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """virtkitd in private directories, with a Unix-socket client (admin) and a TCP address (tokens)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.env = dict(os.environ, VIRTKIT_DAEMON_DIR=str(tmp / "d"), VIRTKIT_RUN_DIR=str(tmp / "run"),
                        VIRTKIT_CONTAINERS_DIR=str(tmp / "c"), VIRTKIT_NET_DIR=str(tmp / "n"),
                        VIRTKIT_SNAPSHOTS=str(tmp / "s"), VIRTKIT_POOLS_DIR=str(tmp / "p"))

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        p = subprocess.run([sys.executable, "-m", "virtkit.cli", *args], capture_output=True, text=True,
                           env=self.env, stdin=subprocess.DEVNULL, timeout=120)
        assert "Traceback" not in p.stderr, p.stderr
        return p

    def start(self, *extra: str) -> None:
        p = self.cli("daemon", "start", "--listen", f"127.0.0.1:{self.port}", *extra)
        assert p.returncode == 0, p.stderr
        self.unix = httpx.Client(transport=httpx.HTTPTransport(uds=str(self.tmp / "d" / "virtkitd.sock")),
                                 base_url="http://virtkitd", timeout=120)

    def tcp(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=120,
                            headers={"Authorization": f"Bearer {token}"} if token else {})

    def token(self, name: str, scope: str, vm: str | None = None, pool: str | None = None) -> str:
        p = self.cli("daemon", "token", "create", name, "--scope", scope, *(["--vm", vm] if vm else []),
                     *(["--pool", pool] if pool else []))
        assert p.returncode == 0, p.stderr
        return p.stdout.strip()

    def pid(self) -> int:
        return int((self.tmp / "d" / "virtkitd.pid").read_text())

    def close(self) -> None:
        self.cli("daemon", "stop")
        if (self.tmp / "c" / "containers").is_dir():  # (containers a test made, even one that failed)
            ids = self.cli("container", "ps", "-a", "-q").stdout.split()
            if ids:
                self.cli("container", "rm", "-f", *ids)
        for sw in (self.tmp / "n").glob("*/config.json"):  # (and switches, each with its daemon)
            self.cli("net", "delete", sw.parent.name)
        for info in (self.tmp / "run").glob("*.json"):
            try:
                os.kill(json.loads(info.read_text())["pid"], signal.SIGKILL)
            except (OSError, ValueError, KeyError):
                pass


def counting_config(tmp_path: Path) -> dict:
    payload_image(tmp_path / "Image", COUNTING)
    return {"board": "riscv64-virt", "firmware": "none", "kernel": str(tmp_path / "Image"), "memory": "32M",
            "rng": False}


def ok(r, status: int = 200):
    assert r.status_code == status, (r.status_code, r.text)
    return r.json() if r.content else None


