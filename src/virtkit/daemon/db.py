"""virtkitd's inventory: an embedded SQLite database (WAL, fully synchronous: a killed daemon loses no
committed change) whose schema is brought up to date by numbered migrations at every open."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from virtkit.errors import VirtkitError

ENV = "VIRTKIT_DAEMON_DIR"
#: set in the daemon's own children (and by users who want the control sockets): the CLI never routes to a
#: daemon then (virtkit.daemon.client)
NO_DAEMON = "VIRTKIT_NO_DAEMON"
SCOPES = ("read", "operate", "admin")  # each includes the ones before it

#: migration N brings the schema from version N to N+1 (PRAGMA user_version); never edit one, add one
MIGRATIONS = [
    """CREATE TABLE vms (name TEXT PRIMARY KEY, config TEXT NOT NULL, restart TEXT NOT NULL DEFAULT 'no',
                         created REAL NOT NULL, updated REAL NOT NULL, version INTEGER NOT NULL DEFAULT 1);
       CREATE TABLE tokens (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, hash TEXT NOT NULL,
                            scope TEXT NOT NULL, vm TEXT, created REAL NOT NULL);
       CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, who TEXT NOT NULL,
                           method TEXT NOT NULL, path TEXT NOT NULL, status INTEGER NOT NULL);""",
    """ALTER TABLE vms ADD COLUMN wanted TEXT NOT NULL DEFAULT 'stopped';""",
    """CREATE TABLE tasks (id TEXT PRIMARY KEY, kind TEXT NOT NULL, target TEXT NOT NULL, who TEXT NOT NULL,
                           state TEXT NOT NULL DEFAULT 'running', progress REAL, message TEXT NOT NULL DEFAULT '',
                           result TEXT, error TEXT, created REAL NOT NULL, ended REAL,
                           seq INTEGER NOT NULL DEFAULT 0);
       CREATE INDEX tasks_created ON tasks (created);""",
    """ALTER TABLE tokens ADD COLUMN pool TEXT;""",
    """CREATE TABLE objects (kind TEXT NOT NULL, name TEXT NOT NULL, origin TEXT NOT NULL,
                             created REAL NOT NULL, seen REAL NOT NULL, labels TEXT NOT NULL DEFAULT '{}',
                             PRIMARY KEY (kind, name));""",
]

#: the kinds of thing the inventory holds
KINDS = ("vm", "container", "image", "pool", "volume", "switch", "snapshot")


class DaemonError(VirtkitError):
    """A daemon request that cannot be done; the message says why."""


def home() -> Path:
    """The daemon's directory: $VIRTKIT_DAEMON_DIR, else /var/lib/virtkit/daemon for root and
    ~/.local/share/virtkit/daemon for anyone else."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    if os.geteuid() == 0:
        return Path("/var/lib/virtkit/daemon")
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "virtkit/daemon"


class Inventory:
    """The database: VM definitions, API tokens, the audit log (one connection, serialised by a lock)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.lock = threading.Lock()
        self.generation = 0  # counts changes of VM definitions (what readers cache on)
        self._vms: tuple[int, list[dict[str, Any]]] | None = None
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.migrate()

    def migrate(self) -> int:
        """Apply the migrations this database has not had yet (each in its own transaction); its version."""
        with self.lock:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise DaemonError(f"{self.path}: schema version {version} is newer than this virtkit knows "
                                  f"({len(MIGRATIONS)}): use a newer virtkit")
            for n in range(version, len(MIGRATIONS)):
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    for stmt in MIGRATIONS[n].split(";"):
                        if stmt.strip():
                            self.db.execute(stmt)
                    self.db.execute(f"PRAGMA user_version = {n + 1}")
                    self.db.execute("COMMIT")
                except BaseException:
                    self.db.execute("ROLLBACK")
                    raise
            return len(MIGRATIONS)

    def _q(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self.lock:
            if sql.startswith(("INSERT INTO vms", "UPDATE vms", "DELETE FROM vms")):
                self.generation += 1
            return self.db.execute(sql, args).fetchall()

    # -- VMs ------------------------------------------------------------------------------------------
    def vms(self) -> list[dict[str, Any]]:
        """Every defined VM, by name (read once per change: only this process writes them; do not modify)."""
        cached = self._vms
        if cached is not None and cached[0] == self.generation:
            return cached[1]
        gen = self.generation
        out = [self._vm(r) for r in self._q("SELECT * FROM vms ORDER BY name")]
        self._vms = (gen, out)
        return out

    def vm(self, name: str) -> dict[str, Any] | None:
        """One VM's definition, or None."""
        rows = self._q("SELECT * FROM vms WHERE name = ?", (name,))
        return self._vm(rows[0]) if rows else None

    @staticmethod
    def _vm(r: sqlite3.Row) -> dict[str, Any]:
        return {"name": r["name"], "config": json.loads(r["config"]), "restart": r["restart"],
                "created": r["created"], "updated": r["updated"], "version": r["version"], "wanted": r["wanted"]}

    def define(self, name: str, config: dict[str, Any], restart: str) -> dict[str, Any]:
        """Add a VM definition; DaemonError if the name is taken."""
        now = time.time()
        try:
            self._q("INSERT INTO vms (name, config, restart, created, updated) VALUES (?, ?, ?, ?, ?)",
                    (name, json.dumps(config), restart, now, now))
        except sqlite3.IntegrityError:
            raise DaemonError(f"a VM named {name!r} is defined already") from None
        return self.vm(name)  # type: ignore[return-value]

    def update(self, name: str, version: int, **changes: Any) -> dict[str, Any] | None:
        """Change a definition if it is still at ``version`` (the ETag); the new one, or None on a mismatch."""
        sets = ", ".join(f"{k} = ?" for k in changes)
        vals = tuple(json.dumps(v) if k == "config" else v for k, v in changes.items())
        with self.lock:
            self.generation += 1
            cur = self.db.execute(f"UPDATE vms SET {sets}, version = version + 1, updated = ? "
                                  "WHERE name = ? AND version = ?", (*vals, time.time(), name, version))
            if cur.rowcount != 1:
                return None
        return self.vm(name)

    def set_wanted(self, name: str, wanted: str) -> None:
        """Record whether the user wants the VM running (the restart policy reads it)."""
        self._q("UPDATE vms SET wanted = ? WHERE name = ?", (wanted, name))

    def undefine(self, name: str) -> bool:
        """Remove a definition; whether there was one."""
        with self.lock:
            self.generation += 1
            return self.db.execute("DELETE FROM vms WHERE name = ?", (name,)).rowcount == 1

    # -- tokens ---------------------------------------------------------------------------------------
    def new_token(self, name: str, scope: str, vm: str | None = None, pool: str | None = None) -> str:
        """A new API token (shown once: only its hash is kept): ``vkt_<id>_<secret>``; ``vm`` or ``pool``
        binds it to one VM or one storage pool."""
        if scope not in SCOPES:
            raise DaemonError(f"scope {scope!r}: one of {', '.join(SCOPES)}")
        if vm is not None and pool is not None:
            raise DaemonError("a token is bound to one VM or one pool, not both")
        tid, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        try:
            self._q("INSERT INTO tokens (id, name, hash, scope, vm, pool, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (tid, name, _hash(secret), scope, vm, pool, time.time()))
        except sqlite3.IntegrityError:
            raise DaemonError(f"a token named {name!r} exists already") from None
        return f"vkt_{tid}_{secret}"

    def check_token(self, token: str) -> dict[str, Any] | None:
        """The token's record (name, scope, vm) if ``token`` is valid, else None (compared in constant time)."""
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != "vkt":
            return None
        rows = self._q("SELECT * FROM tokens WHERE id = ?", (parts[1],))
        if not rows or not secrets.compare_digest(rows[0]["hash"], _hash(parts[2])):
            return None
        r = rows[0]
        return {"id": r["id"], "name": r["name"], "scope": r["scope"], "vm": r["vm"], "pool": r["pool"]}

    def tokens(self) -> list[dict[str, Any]]:
        """Every token's record (never the secret)."""
        return [{"id": r["id"], "name": r["name"], "scope": r["scope"], "vm": r["vm"], "pool": r["pool"],
                 "created": r["created"]}
                for r in self._q("SELECT * FROM tokens ORDER BY created")]

    def revoke(self, name: str) -> bool:
        """Delete a token by name; whether there was one."""
        with self.lock:
            return self.db.execute("DELETE FROM tokens WHERE name = ?", (name,)).rowcount == 1

    # -- audit ----------------------------------------------------------------------------------------
    def audit(self, who: str, method: str, path: str, status: int) -> None:
        """Record a mutating call."""
        self._q("INSERT INTO audit (time, who, method, path, status) VALUES (?, ?, ?, ?, ?)",
                (time.time(), who, method, path, status))

    def audit_log(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """The newest audit records first."""
        return [dict(r) for r in self._q("SELECT * FROM audit ORDER BY id DESC LIMIT ? OFFSET ?", (limit, offset))]


    # -- tasks ----------------------------------------------------------------------------------------
    def task_create(self, tid: str, kind: str, target: str, who: str) -> None:
        """Record a task that starts now."""
        self._q("INSERT INTO tasks (id, kind, target, who, created) VALUES (?, ?, ?, ?, ?)",
                (tid, kind, target, who, time.time()))

    def task_update(self, tid: str, **fields: Any) -> None:
        """Change a task's state, progress, message, result, error or end time (its ``seq`` counts changes:
        what the event stream compares)."""
        sets = ", ".join(f"{k} = ?" for k in fields)
        vals = tuple(json.dumps(v) if k == "result" else v for k, v in fields.items())
        self._q(f"UPDATE tasks SET {sets}, seq = seq + 1 WHERE id = ?", (*vals, tid))

    def task(self, tid: str) -> dict[str, Any] | None:
        """One task, or None."""
        rows = self._q("SELECT * FROM tasks WHERE id = ?", (tid,))
        return self._task(rows[0]) if rows else None

    def tasks(self, limit: int = 50, offset: int = 0, state: str | None = None, since: float = 0.0,
              kind: str | None = None) -> tuple[list[dict[str, Any]], int]:
        """Tasks newest first (optionally in one state, of one kind, or created/ended after ``since``), and
        how many."""
        where, args = "WHERE (created >= ? OR ended >= ? OR state = 'running')", [since, since]
        for col, val in (("state", state), ("kind", kind)):
            if val is not None:
                where += f" AND {col} = ?"
                args.append(val)
        total = self._q(f"SELECT COUNT(*) FROM tasks {where}", tuple(args))[0][0]
        rows = self._q(f"SELECT * FROM tasks {where} ORDER BY created DESC LIMIT ? OFFSET ?", (*args, limit, offset))
        return [self._task(r) for r in rows], total

    def task_orphans(self, why: str) -> int:
        """Mark tasks a previous daemon left running as failed; how many."""
        with self.lock:
            return self.db.execute("UPDATE tasks SET state = 'failed', error = ?, ended = ?, seq = seq + 1 "
                                   "WHERE state = 'running'", (why, time.time())).rowcount

    @staticmethod
    def _task(r: sqlite3.Row) -> dict[str, Any]:
        d = dict(r)
        d["result"] = json.loads(d["result"]) if d["result"] else None
        return d


    # -- the inventory of everything --------------------------------------------------------------------
    def reconcile(self, kind: str, names: set[str], origin: str = "host") -> None:
        """Make the objects of ``kind`` the ``names`` found now: new ones are added (``origin``: made through
        the API, or found on the host), gone ones removed with their labels, the others marked seen."""
        now = time.time()
        with self.lock:
            known = {r[0] for r in self.db.execute("SELECT name FROM objects WHERE kind = ?", (kind,))}
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for name in names - known:
                    self.db.execute("INSERT INTO objects (kind, name, origin, created, seen) VALUES (?, ?, ?, ?, ?)",
                                    (kind, name, origin, now, now))
                for name in known - names:
                    self.db.execute("DELETE FROM objects WHERE kind = ? AND name = ?", (kind, name))
                self.db.execute("UPDATE objects SET seen = ? WHERE kind = ?", (now, kind))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def made(self, kind: str, name: str) -> None:
        """Record an object made through the API (before the next scan finds it)."""
        now = time.time()
        self._q("INSERT INTO objects (kind, name, origin, created, seen) VALUES (?, ?, 'api', ?, ?) "
                "ON CONFLICT (kind, name) DO UPDATE SET origin = 'api', seen = excluded.seen", (kind, name, now, now))

    def forget(self, kind: str, name: str) -> None:
        """An object removed through the API."""
        self._q("DELETE FROM objects WHERE kind = ? AND name = ?", (kind, name))

    def objects(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The inventory, by kind and name."""
        rows = self._q("SELECT * FROM objects" + (" WHERE kind = ?" if kind else "") + " ORDER BY kind, name",
                       (kind,) if kind else ())
        return [dict(r) | {"labels": json.loads(r["labels"])} for r in rows]

    def set_labels(self, kind: str, name: str, labels: dict[str, str]) -> dict[str, Any] | None:
        """Replace an object's labels; the object, or None when there is no such object."""
        with self.lock:
            if self.db.execute("UPDATE objects SET labels = ? WHERE kind = ? AND name = ?",
                               (json.dumps(labels, sort_keys=True), kind, name)).rowcount != 1:
                return None
        return next(o for o in self.objects(kind) if o["name"] == name)


def _hash(secret: str) -> str:
    """A token secret's stored form (the secrets are 256 random bits: a plain SHA-256 is enough)."""
    return hashlib.sha256(secret.encode()).hexdigest()
