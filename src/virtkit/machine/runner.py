"""A built machine, running, reachable and watched: what every front end starts a VM through.

:class:`RunningVm` starts a :class:`~virtkit.machine.builder.Machine`, serves its control socket
(:mod:`virtkit.machine.control`: status, stats, pause, resume, stop, kill, console), and watches it:

* a kernel panic stops the VM with reason ``panic`` and the last console lines;
* a boot that does not reach its goal (the ``--exec`` command starting, the shell's banner, a login
  prompt) within ``boot_timeout`` seconds stops it with reason ``boot-timeout`` and the console tail
  (a wrong initramfs, a firmware that never hands over);
* a kernel that brings up fewer CPUs than the machine has is reported as a warning;
* ``timeout`` bounds the whole run.

``stop`` asks the guest to power off the way a console user can on any Linux: a serial break followed by
the magic SysRq keys ``s`` (sync), ``u`` (remount read-only) and ``o`` (power off); the kernel then powers
off through the board's power device. A guest that has not stopped after ``timeout`` seconds is killed.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from virtkit.machine.builder import Machine
from virtkit.machine.console import BootWatch, Viewer
from virtkit.machine.vm import RunResult

#: console text that means the boot has reached its goal (an --exec command starts, a shell, a login)
READY_MARKERS = (b"virtkit-exec-begin", b"virtkit-init-reached", b"virtkit guest: Linux", b" login: ")
PANIC_GRACE = 1.0  # seconds of console output collected after "Kernel panic" before the VM is stopped
_SMP = re.compile(rb"smp: Brought up \d+ nodes?, (\d+) CPUs?")
DEFAULT_STOP_TIMEOUT = 30.0


class RunningVm:
    """One VM from start to end: control socket, watchdogs, live rate, stop and kill."""

    def __init__(self, machine: Machine, name: str, *, control: bool = True, timeout: float | None = None,
                 boot_timeout: float | None = None, warn: Callable[[str], None] | None = None,
                 info: dict[str, Any] | None = None) -> None:
        self.machine = machine
        self.vm = machine.vm
        self.name = name
        self.timeout = timeout
        self.boot_timeout = boot_timeout or None
        self.warn = warn or (lambda msg: None)
        self.warnings: list[str] = []
        self.watch = BootWatch(READY_MARKERS)
        machine.console.watchers.append(self.watch)
        machine.console.watchers.append(self._smp_watch)
        self._smp_buf = b""
        self._rate = 0.0
        self._last = (time.monotonic(), 0)
        self._stopping = False
        self.server = None
        self.migration: Any = None  # the live migration this VM is the source of
        from virtkit.machine.backup import BackupOps

        # live backups and point-in-time NBD exports (refused while migrating)
        self.backups = BackupOps(machine, self.vm,
                                 lambda: self.migration is not None and not self.migration.ended.is_set())
        self.vm.listeners.append(self._on_state)
        if control:
            from virtkit.machine.control import ControlServer

            cfg = machine.cfg
            self.server = ControlServer(name, self._handlers(), {
                "board": cfg.board, "engine": cfg.engine, "cpus": cfg.cpus, "memory": cfg.memory,
                **(info or {})}, console_attach=self._console_attach if machine.serial is not None else None)
            self.vm.closers.append(("control socket", self.server.close))

    # -- watching -----------------------------------------------------------------------------------------
    def _smp_watch(self, data: bytes) -> None:
        if self._smp_buf is None:
            return
        buf = self._smp_buf + data
        self._smp_buf = buf[-256:]
        m = _SMP.search(buf)
        if m:
            self._smp_buf = None  # type: ignore[assignment]
            n, want = int(m.group(1)), self.machine.cfg.cpus
            if n < want:
                self._warn(f"the guest kernel brought up {n} of {want} CPUs (its NR_CPUS or the device tree "
                           "limits it)")

    def _warn(self, msg: str) -> None:
        self.warnings.append(msg)
        self.warn(msg)

    def _sample(self) -> None:
        now = time.monotonic()
        insns = int(self._instructions())
        t0, n0 = self._last
        if now - t0 >= 0.5:
            self._rate = (insns - n0) / (now - t0) / 1e6 if not self.vm.paused else 0.0
            self._last = (now, insns)

    def _instructions(self) -> int:
        progress = getattr(self.machine.engine, "progress", None)
        if progress is not None:
            return progress()
        return int(self.machine.engine.stats().get("instructions", 0))

    def _on_state(self, state: str, reason: str) -> None:
        """A VM paused by a disk error says so on its console stream (and to the user who started it)."""
        if state == "paused" and reason.startswith("disk "):
            msg = f"VM {self.name} paused: {reason}; make room (e.g. add a device to the pool), then " \
                  f"`virtkit resume {self.name}`"
            self.machine.console.notice(msg)
            self._warn(msg)

    def start(self) -> None:
        """Start the VM."""
        self.t0 = time.monotonic()
        self._last = (self.t0, int(self._instructions()))  # a restored engine starts with its count
        for w in self.machine.warnings:
            self._warn(w)
        self.vm.start()

    def wait(self) -> RunResult:
        """Watch the VM until it ends (or a watchdog ends it); release everything; the result."""
        vm, watch = self.vm, self.watch
        deadline = self.t0 + self.timeout if self.timeout else None
        boot_deadline = self.t0 + self.boot_timeout if self.boot_timeout else None
        try:
            while True:
                res = vm.wait(0.1)
                if res is not None:
                    break
                self._sample()
                now = time.monotonic()
                if watch.panicked and now - watch.panic_seen_at >= PANIC_GRACE:
                    vm.stop("panic", "the guest kernel panicked:\n" + self.machine.console.last_lines(25))
                elif boot_deadline and now > boot_deadline and not watch.reached.is_set() and not vm.paused:
                    vm.stop("boot-timeout", f"the guest did not reach its shell or command within "
                            f"{self.boot_timeout:g} s; last console output:\n" + self.machine.console.last_lines(15))
                elif deadline and now > deadline:
                    vm.stop("timeout", f"still running after {self.timeout:g} s")
        except KeyboardInterrupt:
            vm.stop("stopped")
            res = vm.wait(30)
        finally:
            vm.close()
        assert res is not None
        res.errors = list(vm.errors)
        return res

    def run(self) -> RunResult:
        """:meth:`start` then :meth:`wait`."""
        self.start()
        return self.wait()

    # -- stopping -------------------------------------------------------------------------------------------
    def request_stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> RunResult | None:
        """Ask the guest to power off (serial break + SysRq s, u, o); kill it after ``timeout`` s. The result."""
        vm, hub = self.vm, self.machine.console
        if self._stopping:
            return vm.wait(timeout)
        self._stopping = True
        if vm.paused:
            vm.resume()
        if hub.send_break is not None:
            self.vm._set_state("stopping", "asked the guest to power off")
            for key in (b"s", b"u", b"o"):
                hub.send_break(key)
                if vm.wait(0.3) is not None:
                    break
            res = vm.wait(timeout)
            if res is not None:
                return res
            vm.stop("killed", f"the guest did not power off within {timeout:g} s")
        else:
            vm.stop("killed", "this machine has no way to ask its guest to power off")
        return vm.wait(30)

    # -- the control socket -----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What ``virtkit ps`` shows."""
        cfg, vm = self.machine.cfg, self.vm
        self._sample()
        return {"name": self.name, "pid": self.server.info["pid"] if self.server else None, "state": vm.state,
                "reason": vm.state_reason, "board": cfg.board, "engine": cfg.engine, "cpus": cfg.cpus,
                "memory": cfg.memory, "uptime": round(time.time() - vm.started_at, 3) if vm.started_at else 0.0,
                "mips": round(self._rate, 2), "instructions": self._instructions()}

    def _handlers(self) -> dict[str, Callable[..., Any]]:
        vm = self.vm

        def ping() -> dict[str, Any]:
            return {"name": self.name}

        def stats() -> dict[str, Any]:
            self._sample()
            return {"state": vm.state, "mips": round(self._rate, 2), "stats": self.machine.stats()}

        def pause() -> dict[str, Any]:
            if vm.state not in ("running", "paused"):
                raise ValueError(f"VM {self.name!r} is {vm.state}")
            if not vm.pause("paused by the user"):
                raise ValueError(f"VM {self.name!r} did not pause")
            return {"state": "paused"}

        def resume(catch_up: bool = False) -> dict[str, Any]:
            if not isinstance(catch_up, bool):
                raise ValueError("catch_up must be true or false")
            if not vm.resume(catch_up):
                raise ValueError(f"VM {self.name!r} is not paused")
            return {"state": "running"}

        def stop(timeout: float = DEFAULT_STOP_TIMEOUT) -> dict[str, Any]:
            if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 3600:
                raise ValueError("timeout must be a number of seconds in (0, 3600]")
            res = self.request_stop(float(timeout))
            return {"reason": res.reason if res else "unknown", "exit_status": res.exit_status if res else None}

        def kill() -> dict[str, Any]:
            vm.stop("killed", "killed by the user")
            res = vm.wait(30)
            return {"reason": res.reason if res else "unknown"}

        def config() -> dict[str, Any]:
            return {"config": self.machine.cfg.to_dict()}

        def snapshot(path: str, compress: bool = False, parent: str | None = None,
                     name: str | None = None) -> dict[str, Any]:
            """RAM, devices and disks in one instant: pause, write the bundle, resume (if it was running)."""
            from virtkit.machine import vmsnap

            if not isinstance(path, str) or not os.path.isabs(path):
                raise ValueError("path must be an absolute path")
            if not isinstance(compress, bool) or parent is not None and not isinstance(parent, str):
                raise ValueError("compress must be true or false, parent a path")
            if vm.state not in ("running", "paused"):
                raise ValueError(f"VM {self.name!r} is {vm.state}")
            if why := self.backups.busy():
                raise ValueError(f"VM {self.name!r}: {why}")
            was_running = vm.state == "running"
            t0 = time.monotonic()
            if was_running and not vm.pause("taking a snapshot"):
                raise ValueError(f"VM {self.name!r} did not pause")
            paused_at = time.monotonic()
            try:
                man = vmsnap.take(self.machine, path, name=name, compress=compress, parent=parent)
            finally:
                if was_running:
                    vm.resume()
            return {"name": man["name"], "path": path, "memory": man["memory"], "disks": man.get("disks", []),
                    "seconds": round(time.monotonic() - t0, 3),
                    "paused_seconds": round(time.monotonic() - paused_at, 3)}

        def migrate(uri: str, token: str, bandwidth: float | None = None, downtime: float = 0.05,
                    max_downtime: float = 1.0, auto_converge: bool = True, postcopy: bool = False,
                    copy_storage: bool = False) -> dict[str, Any]:
            """Start a live migration to ``uri`` in the background (``migration`` reports on it)."""
            from virtkit.machine.migration import Source, parse_uri

            parse_uri(uri)
            if not isinstance(token, str) or not token:
                raise ValueError("token must be the target's token")
            for k, v in (("downtime", downtime), ("max_downtime", max_downtime)):
                if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 60:
                    raise ValueError(f"{k} must be seconds in (0, 60]")
            if bandwidth is not None and (isinstance(bandwidth, bool) or not isinstance(bandwidth, int | float)
                                          or bandwidth <= 0):
                raise ValueError("bandwidth must be bytes per second")
            if not all(isinstance(v, bool) for v in (postcopy, auto_converge, copy_storage)):
                raise ValueError("postcopy, auto_converge and copy_storage must be true or false")
            if vm.state != "running":
                raise ValueError(f"VM {self.name!r} is {vm.state}: only a running VM migrates")
            if self.migration is not None and not self.migration.ended.is_set():
                raise ValueError(f"VM {self.name!r} is migrating already")
            if why := self.backups.busy():
                raise ValueError(f"VM {self.name!r}: {why}")
            self.migration = Source(self.machine, uri, token, bandwidth=bandwidth, downtime=float(downtime),
                                    downtime_ceiling=float(max_downtime), auto_converge=auto_converge,
                                    postcopy=postcopy, copy_storage=copy_storage)
            self.migration.start()
            return {"state": "setup"}

        def migration(until_end: bool = False, timeout: float = 0.5) -> dict[str, Any]:
            """The migration's status; ``until_end``: wait up to ``timeout`` s for it to end first."""
            src = self.migration
            if src is None:
                raise ValueError(f"VM {self.name!r} has not been migrated")
            if until_end:
                src.followed = True
                src.followers += 1
                try:
                    src.ended.wait(min(max(float(timeout), 0.0), 10.0))
                finally:
                    src.followers -= 1
            out = src.status.to_dict()
            if src.ended.is_set():
                src.delivered.set()
            return out

        def migrate_cancel() -> dict[str, Any]:
            if self.migration is None or self.migration.ended.is_set():
                raise ValueError(f"VM {self.name!r} is not migrating")
            self.migration.cancel()
            return {"state": "cancelling"}

        return {"ping": ping, "status": self.status, "stats": stats, "pause": pause, "resume": resume,
                "stop": stop, "kill": kill, "config": config, "snapshot": snapshot, "migrate": migrate,
                "migration": migration, "migrate-cancel": migrate_cancel, **self.backups.handlers()}

    def _console_attach(self, conn: socket.socket, req: dict[str, Any]) -> None:
        """``{"op": "console", "write": bool, "force": bool}``: after the reply, raw bytes both ways."""
        hub = self.machine.console
        write, force = req.get("write", False), req.get("force", False)
        if not isinstance(write, bool) or not isinstance(force, bool):
            raise ValueError("write and force must be true or false")
        import json

        conn.settimeout(None)
        viewer = Viewer(conn.sendall, name=f"viewer-{conn.fileno()}", on_close=lambda: _close(conn), start=False,
                        hung_up=lambda: _hung_up(conn))
        hub.attach(viewer, write=write, force=force, replay=True)  # ValueError when the keyboard is taken
        try:
            conn.sendall(json.dumps({"ok": True, "console": True, "write": write}).encode() + b"\n")
        except OSError:
            hub.detach(viewer)
            return
        viewer.start()  # the recent output (queued by attach) first, then what comes

        def reader() -> None:
            try:
                while True:
                    data = conn.recv(4096)
                    if not data:
                        break
                    hub.type(data, viewer)
            except OSError:
                pass
            hub.detach(viewer)
            _close(conn)

        threading.Thread(target=reader, name="virtkit-console-in", daemon=True).start()


def _hung_up(conn: socket.socket) -> bool:
    """Whether the peer of ``conn`` has closed its end (without reading anything from the socket)."""
    import select

    try:
        p = select.poll()
        p.register(conn, select.POLLRDHUP | select.POLLHUP)
        return any(ev & (select.POLLRDHUP | select.POLLHUP | select.POLLNVAL) for _, ev in p.poll(0))
    except (OSError, ValueError):
        return True


def _close(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        conn.close()
    except OSError:
        pass
