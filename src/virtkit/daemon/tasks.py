"""virtkitd's tasks: a long operation (snapshot, clone, migration, backup, reboot) answers at once with a
task id and runs in a thread; the task's state and progress are kept in the inventory's database, so they
can be polled (``GET /tasks/{id}``), streamed (``/events``) and still read after a daemon restart."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from virtkit.daemon.db import DaemonError, Inventory

STATES = ("running", "succeeded", "failed")


class Task:
    """What a running operation reports through: ``progress(fraction, message)``; its function returns the
    result (a JSON-able dict) or raises with the message the user will see."""

    def __init__(self, tasks: Tasks, tid: str) -> None:
        self.tasks, self.id = tasks, tid
        self._last = 0.0

    def progress(self, fraction: float | None, message: str = "") -> None:
        """Record how far it is (0..1; None: unknown), at most every 0.2 s (the database is fsync'ed)."""
        now = time.monotonic()
        if now - self._last < 0.2:
            return
        self._last = now
        self.tasks.inv.task_update(self.id, progress=None if fraction is None else max(0.0, min(1.0, fraction)),
                                   message=message)


class Tasks:
    """Starts tasks and answers about them; tasks left running by a daemon that ended are marked failed
    when the next one starts (their threads are gone)."""

    def __init__(self, inv: Inventory) -> None:
        self.inv = inv
        inv.task_orphans("the daemon stopped while this task ran (what it did may be partly done)")

    def start(self, kind: str, target: str, who: str, fn: Callable[[Task], dict[str, Any] | None]) -> dict[str, Any]:
        """Record a new task and run ``fn`` in a thread; the task's record."""
        tid = secrets.token_hex(8)
        self.inv.task_create(tid, kind, target, who)
        task = Task(self, tid)

        def run() -> None:
            try:
                result = fn(task) or {}
            except Exception as err:  # noqa: BLE001 (any failure is the task's answer, the daemon goes on)
                self.inv.task_update(tid, state="failed", error=str(err) or type(err).__name__, ended=time.time())
                return
            self.inv.task_update(tid, state="succeeded", progress=1.0, result=result, ended=time.time())

        threading.Thread(target=run, name=f"task-{kind}-{tid}", daemon=True).start()
        return self.inv.task(tid)  # type: ignore[return-value]


def cli_json(*args: str, timeout: float = 3600, json_flag: bool = True) -> Any:
    """``virtkit ARGS... --json`` in the daemon's environment (the CLI's own logic, one place); its JSON
    answer, or DaemonError with virtkit's message. ``json_flag=False``: a command without ``--json``
    (its output is not parsed)."""
    p = subprocess.run([sys.executable, "-m", "virtkit.cli", *args, *(["--json"] if json_flag else [])],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)
    if p.returncode != 0:
        raise DaemonError(p.stderr.strip().removeprefix("virtkit: error: ")[-2000:] or f"exit status {p.returncode}")
    if not json_flag:
        return {"output": p.stdout.strip()}
    try:
        return json.loads(p.stdout) if p.stdout.strip() else {}
    except ValueError:
        raise DaemonError(f"virtkit {args[0]} answered something that is not JSON: {p.stdout[:200]!r}") from None
