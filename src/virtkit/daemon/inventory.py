"""One inventory of everything on the host: VMs, containers, images, pools, volumes, switches and
snapshots, kept in the daemon's SQLite database (kind, name, where it came from, when it was first and last
seen, labels). Each kind's own store stays the truth for its state (the pool's metadata, the container
store, the switch's configuration: the CLI writes them too); the inventory is reconciled with the stores
when the daemon starts, every ``PERIOD`` seconds, on demand, and at once when the API makes or removes
something. What the daemon alone owns (labels, origin) lives only here."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from virtkit.daemon.db import Inventory

PERIOD = 10.0


def _names(kind: str, running: Any) -> set[str]:
    """The names of every object of ``kind`` on the host now (a store that cannot be read raises)."""
    if kind == "vm":
        return set(running.get(PERIOD))
    if kind == "container":
        from virtkit.containers.frontend import Containers

        return {c["name"] for c in Containers().all()}
    if kind == "image":
        from virtkit.containers.images import Store

        return {i["ref"] if i["ref"] != "<none>" else i["id"] for i in Store().images()}
    if kind in ("pool", "volume"):
        from virtkit.storage.pool import pool_statuses

        out = set()
        for entry, st, _err in pool_statuses():
            if kind == "pool":
                out.add(entry)
            elif st is not None:
                out |= {f"{entry}/{v['name'] if isinstance(v, dict) else v}" for v in st["volumes"]}
        return out
    if kind == "switch":
        from virtkit.network import control as net

        return {s["name"] for s in net.list_switches()}
    if kind == "snapshot":
        from virtkit.machine.snapshot import list_snapshots

        return {s["name"] for s in list_snapshots()}
    raise ValueError(kind)


class Scanner:
    """Reconciles the inventory with the stores (at most one scan at a time; a recent one is reused)."""

    def __init__(self, inv: Inventory, running: Any) -> None:
        self.inv, self.running = inv, running
        self.lock = threading.Lock()
        self.at = 0.0
        self.errors: dict[str, str] = {}

    def scan(self, max_age: float = 0.0) -> dict[str, str]:
        """Reconcile every kind (unless a scan finished less than ``max_age`` ago); the kinds whose store
        could not be read, with why (their objects are left as they were)."""
        asked = time.monotonic()
        with self.lock:
            if self.at >= asked - max_age and self.at:
                return self.errors
            errors = {}
            defined = {d["name"] for d in self.inv.vms()}
            for kind in ("vm", "container", "image", "pool", "volume", "switch", "snapshot"):
                try:
                    names = _names(kind, self.running) | (defined if kind == "vm" else set())
                except Exception as err:  # noqa: BLE001 (one broken store must not hide the others)
                    errors[kind] = f"{type(err).__name__}: {err}"
                    continue
                self.inv.reconcile(kind, names)
            self.at, self.errors = time.monotonic(), errors
            return errors

    def run(self, stop: threading.Event) -> None:
        """The daemon's thread: a scan at start, then every PERIOD seconds."""
        while True:
            try:
                self.scan()
            except Exception as err:  # noqa: BLE001
                print(f"virtkitd: inventory scan: {err}", file=sys.stderr, flush=True)
            if stop.wait(PERIOD):
                return
