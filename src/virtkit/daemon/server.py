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
from typing import Any

from virtkit.daemon.db import NO_DAEMON, DaemonError, Inventory, home


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


def tls_files(root: Path | None = None, cert: str | None = None, key: str | None = None) -> tuple[Path, Path]:
    """The TLS certificate and key: the given files (checked), else a self-signed pair generated once in the
    daemon's directory (``tls.crt``, ``tls.key``; names localhost and this host) and kept for next time."""
    if cert or key:
        if not (cert and key):
            raise DaemonError("--tls-cert and --tls-key go together")
        for f in (cert, key):
            if not Path(f).is_file():
                raise DaemonError(f"TLS file {f}: not found")
        import ssl

        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as err:
            raise DaemonError(f"--tls-cert {cert} / --tls-key {key}: not a certificate and its key ({err})") from None
        return Path(cert), Path(key)
    d = paths(root)["dir"]
    crt, k = d / "tls.crt", d / "tls.key"
    if not (crt.exists() and k.exists()):
        generate_certificate(crt, k)
    return crt, k


def generate_certificate(crt: Path, key: Path, days: int = 825) -> None:
    """A self-signed ECDSA P-256 certificate for localhost, 127.0.0.1, ::1 and this host's name (the client
    pins it with ``--cacert``, as with Proxmox's generated one); the key written 0600."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    pk = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"virtkitd on {host}")])
    now = datetime.datetime.now(datetime.UTC)
    alt = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.DNSName(host),
                                       x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                       x509.IPAddress(ipaddress.ip_address("::1"))])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(pk.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days)).add_extension(alt, critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(pk, hashes.SHA256()))
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()))
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def serve(listen: str | None = None, root: Path | None = None, tls: bool = False, cert: str | None = None,
          key: str | None = None) -> None:
    """Serve until SIGTERM/SIGINT (in this process); ``tls``: TCP speaks HTTPS (with the given certificate
    and key, or a generated one)."""
    import uvicorn

    from virtkit.daemon.app import LiveView, create_app
    os.environ[NO_DAEMON] = "1"  # (the CLI the daemon runs for its work must not come back to it)
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
    from virtkit.daemon.inventory import Scanner
    from virtkit.daemon.tasks import Tasks

    running = LiveView()
    tasks = Tasks(inv)
    scanner = Scanner(inv, running)

    def server(trusted: bool, **extra: Any) -> uvicorn.Server:
        app = create_app(inv, trusted=trusted, running=running, tasks=tasks, scanner=scanner)
        return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                             timeout_graceful_shutdown=2, **extra))  # (event streams end at stop)

    servers = [server(True)]
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
        extra: dict[str, Any] = {}
        if tls or cert or key:
            crt, k = tls_files(root, cert, key)
            extra = {"ssl_certfile": str(crt), "ssl_keyfile": str(k)}
        servers.append(server(False, **extra))
        socks.append([tcp])
    p["pid"].write_text(str(os.getpid()))
    import threading

    from virtkit.daemon.app import restarter

    done = threading.Event()
    threading.Thread(target=restarter, args=(inv, running, done), name="virtkitd-restart", daemon=True).start()
    threading.Thread(target=scanner.run, args=(done,), name="virtkitd-inventory", daemon=True).start()

    async def main() -> None:
        await asyncio.gather(*(s.serve(sockets=sk) for s, sk in zip(servers, socks, strict=True)))

    try:
        asyncio.run(main())
    finally:
        done.set()
        for f in ("pid", "sock"):
            p[f].unlink(missing_ok=True)


def start(listen: str | None = None, root: Path | None = None, timeout: float = 20, tls: bool = False,
          cert: str | None = None, key: str | None = None) -> int:
    """Start the daemon in the background (its own session; output to its log); its pid once it answers."""
    p = paths(root)
    if running_pid(root):
        raise DaemonError(f"virtkitd is running already (pid {running_pid(root)})")
    p["dir"].mkdir(parents=True, exist_ok=True, mode=0o700)
    import subprocess

    log = open(p["log"], "ab")
    argv = [sys.executable, "-m", "virtkit.cli", "daemon", "run"] + (["--listen", listen] if listen else [])
    if tls or cert or key:
        tls_files(root, cert, key)  # (a bad certificate is said here, not in the log)
        argv += ["--tls"] + (["--tls-cert", str(Path(cert).absolute()), "--tls-key", str(Path(key).absolute())]
                             if cert and key else [])
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
