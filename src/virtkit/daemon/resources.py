"""virtkitd's API beyond a VM's life cycle: tasks, snapshots and clones, migration, backups, reboot, pool
volumes, switch ports and security groups, container actions. Long operations answer ``202`` with a task
(``GET /tasks/{id}``, or ``event: task`` on ``/events``); the work is done by the same code as the CLI."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Depends, FastAPI, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from virtkit.daemon.db import KINDS
from virtkit.daemon.tasks import Task, Tasks, cli_json
from virtkit.errors import VirtkitError

NAME = r"^[a-zA-Z0-9][a-zA-Z0-9_.+-]{0,62}$"
Kind = Literal[KINDS]  # type: ignore[valid-type]  (the inventory's kinds: vm, container, image, ...)
PAGE = {"limit": Query(50, ge=1, le=1000), "offset": Query(0, ge=0, le=1_000_000_000)}


@dataclass
class Ctx:
    """What these routes share with the VM routes of :mod:`virtkit.daemon.app`."""

    inv: Any
    tasks: Tasks
    need: Any  # need(scope) -> a dependency answering the caller (Who)
    live: Any  # () -> running VMs by name, asked now
    ctl: Any  # (name, op, wait, **args) -> the VM's reply, ApiError 409 on failure
    api_error: Any  # ApiError(status, code, message, field)
    start_vm: Any  # (name, config) -> None
    gone: Any  # (name, seconds) -> whether it stopped
    scanner: Any = None  # the inventory's Scanner


class TaskView(BaseModel):
    """A long operation: ``running`` until ``succeeded`` (with its ``result``) or ``failed`` (``error``)."""

    id: str
    kind: str
    target: str
    who: str
    state: Literal["running", "succeeded", "failed"]
    progress: float | None = Field(None, description="0..1 while it runs, when it can tell")
    message: str = ""
    result: dict[str, Any] | list[Any] | None = None
    error: str | None = None
    created: float
    ended: float | None = None
    seq: int = Field(0, description="counts the task's changes")


class SnapshotCreate(BaseModel):
    """A snapshot of a running VM (RAM, devices, disks; the guest pauses for the copy)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    snapshot: str | None = Field(None, pattern=NAME, description="its name (default: the time)")
    compress: bool = Field(False, description="RAM compressed with zstd")


class CloneCreate(BaseModel):
    """New VMs started from a snapshot (copy-on-write RAM and disks)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    count: int = Field(1, ge=1, le=64)
    prefix: str | None = Field(None, pattern=NAME, description="clones are PREFIX-1, PREFIX-2, ...")


class MigrateStart(BaseModel):
    """A live migration to a target waiting with ``virtkit run --incoming tcp:HOST:PORT``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    uri: str = Field(pattern=r"^tcp:[^\s]{1,255}:\d{1,5}$", description="tcp:HOST:PORT")
    token: str = Field(min_length=1, max_length=256, description="the token the target printed")
    bandwidth: float | None = Field(None, gt=0, description="bytes/s while the guest runs")
    downtime: float = Field(0.05, gt=0, le=60)
    max_downtime: float = Field(1.0, gt=0, le=60)
    auto_converge: bool = True
    postcopy: bool = False
    copy_storage: bool = False


class BackupStart(BaseModel):
    """A live backup of a VM's disk (or of every disk into a directory ending in '/')."""

    model_config = ConfigDict(extra="forbid", strict=True)
    to: str = Field(min_length=2, max_length=4096, description="absolute path, DIR/ or POOL/VOLUME to create")
    incremental: bool = False
    disk: int | None = Field(None, ge=0, le=63)


class VolumeCreate(BaseModel):
    """A pool volume."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(pattern=NAME)
    size: str | int = Field(description="bytes, or 512M, 1G, ...")
    layout: Literal["linear", "stripe", "mirror", "raid5", "raid6"] = "linear"
    thin: bool = False


class ModesRun(BaseModel):
    """``virtkit modes``: the same guest booted in each virtualization mode, side by side."""

    model_config = ConfigDict(extra="forbid", strict=True)
    exec: str = Field("true", min_length=1, max_length=1000, description="the command each guest runs")
    modes: list[Literal["emulation", "paravirt", "trap", "nested"]] = Field(
        default_factory=list, max_length=4, description="only these (default: every mode)")
    cpus: int = Field(1, ge=1, le=8)
    runs: int = Field(1, ge=1, le=10)


class ContainerRun(BaseModel):
    """A container made from an image and started in the background (``virtkit container run -d``)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    image: str = Field(min_length=1, max_length=255, pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.:/@-]*$")
    name: str | None = Field(None, pattern=NAME)
    command: list[str] = Field(default_factory=list, max_length=256, description="default: the image's")
    env: dict[str, str] = Field(default_factory=dict, max_length=256)
    memory: str | None = Field(None, pattern=r"^\d+[kmgKMG]?$", description="a limit: 64m, 1g")
    cpus: float | None = Field(None, gt=0, le=1024)
    pids_limit: int | None = Field(None, ge=1, le=1 << 22)
    restart: str = Field("no", pattern=r"^(no|always|unless-stopped|on-failure(:\d{1,6})?)$")
    net: str = Field("none", pattern=r"^(none|host|switch:[a-zA-Z0-9_.,=:/-]{1,200})$")


class Labels(BaseModel):
    """An inventory object's labels (replacing the ones it had)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    labels: dict[str, str] = Field(max_length=64, description="key: value, keys 1-63 of [a-z0-9_.-/]")


class SwitchCreate(BaseModel):
    """A new 802.1Q switch (its daemon is started)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(pattern=NAME)


class PortSettings(BaseModel):
    """A switch port's VLANs, security group and priority (as ``virtkit net port set``)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    access: int | None = Field(None, ge=1, le=4094, description="untagged member of this VLAN")
    trunk: str | None = Field(None, max_length=4096, description="VLAN list ('10,20-30') or 'all'")
    native: int | Literal["none"] | None = None
    group: str | None = Field(None, max_length=64)
    priority: int | None = Field(None, ge=0, le=7)
    qinq: bool | None = None


class PortAdd(PortSettings):
    """A new switch port."""

    spec: str = Field(max_length=300, description="tap:IF | host:IF | udp:LPORT:HOST:RPORT | vm:ID")
    name: str | None = Field(None, pattern=NAME)


class GroupCreate(BaseModel):
    """A security group: a VLAN and ordered ingress rules."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(pattern=NAME)
    vlan: int = Field(ge=1, le=4094)
    default: Literal["allow", "deny"] = "deny"


class RuleAdd(BaseModel):
    """An ingress rule (first match wins)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    action: Literal["allow", "deny"]
    proto: Literal["tcp", "udp", "icmp", "any"] = "any"
    port: str = Field("any", max_length=16, pattern=r"^(any|\d{1,5}(-\d{1,5})?)$")
    source: str = Field("any", max_length=64)
    position: int | None = Field(None, ge=1, le=100000)


def register(app: FastAPI, c: Ctx) -> None:
    """Add these routes to ``app``."""
    from virtkit.daemon.pages import paged

    def page(rows: list[Any], limit: int, offset: int) -> dict[str, Any]:
        return paged(rows, limit, offset).model_dump()

    err = c.api_error

    def accepted(task: dict[str, Any]) -> Response:
        from fastapi.responses import JSONResponse

        return JSONResponse(TaskView(**task).model_dump(), status_code=202,
                            headers={"Location": f"/tasks/{task['id']}"})

    def start(kind: str, target: str, who: Any, work: Any) -> Response:
        """Run ``work`` as a task; when it ends the shared view of running VMs is refreshed (a task that
        started, stopped or moved VMs is seen at once by the next read)."""
        def run(task: Task) -> Any:
            try:
                return work(task)
            finally:
                c.live()

        return accepted(c.tasks.start(kind, target, who_of(who), run))

    def running(name: str) -> None:
        if name not in c.live():
            raise err(409, "conflict", f"VM {name!r} is not running")

    def who_of(who: Any) -> str:
        return "unix-socket" if who.name == "unix-socket" else f"token:{who.name}"

    # -- tasks ------------------------------------------------------------------------------------------
    @app.get("/tasks", summary="Long operations, newest first")
    def list_tasks(state: Literal["running", "succeeded", "failed"] | None = None, limit: int = PAGE["limit"],
                   offset: int = PAGE["offset"], who: Any = Depends(c.need("read"))) -> dict[str, Any]:
        if who.bound() is not None:  # (a bound token sees the tasks about its VM or pool)
            rows = [r for r in c.inv.tasks(10_000, 0, state)[0] if r["target"] == who.bound()]
            return page([TaskView(**r) for r in rows], limit, offset)
        rows, total = c.inv.tasks(limit, offset, state)
        return {"items": [TaskView(**r) for r in rows], "total": total, "limit": limit, "offset": offset}

    @app.get("/tasks/{tid}", response_model=TaskView, summary="One task: its state, progress and result")
    def get_task(tid: str, who: Any = Depends(c.need("read"))) -> TaskView:
        t = c.inv.task(tid)
        if t is None or who.bound() is not None and t["target"] != who.bound():
            raise err(404, "not_found", f"no task {tid!r}")
        return TaskView(**t)

    # -- the inventory -------------------------------------------------------------------------------------
    @app.get("/inventory", summary="Everything on the host: VMs, containers, images, pools, volumes, switches, "
             "snapshots (SQLite, reconciled with their stores)",
             description="What the CLI made on the host shows within 1 s; `unreadable` names the stores that "
                         "could not be read (their objects are left as they were).")
    def inventory(kind: Kind | None = None,
                  label: str | None = Query(None, max_length=200, pattern=r"^[^=]+=.*$",
                                            description="only objects with this label: key=value"),
                  limit: int = PAGE["limit"], offset: int = PAGE["offset"],
                  who: Any = Depends(c.need("read"))) -> dict[str, Any]:
        errors = c.scanner.scan(max_age=1.0) if c.scanner is not None else {}
        rows = c.inv.objects(kind)
        if label is not None:
            key, _, value = label.partition("=")
            rows = [r for r in rows if r["labels"].get(key) == value]
        return page(rows, limit, offset) | {"unreadable": errors}

    @app.put("/inventory/{kind}/{name:path}/labels", summary="Set an object's labels (the daemon keeps them)")
    def set_labels(kind: Kind, name: str, body: Labels,
                   who: Any = Depends(c.need("admin"))) -> dict[str, Any]:
        import re

        for key, value in body.labels.items():
            if not re.fullmatch(r"[a-z0-9][a-z0-9_./-]{0,62}", key) or len(value) > 256:
                raise err(422, "invalid", f"labels: {key!r}: keys are 1-63 of a-z 0-9 _ . / -, values at most "
                          "256 characters", "labels")
        obj = c.inv.set_labels(kind, name, body.labels)
        if obj is None and c.scanner is not None:  # (made a moment ago, not yet scanned)
            c.scanner.scan()
            obj = c.inv.set_labels(kind, name, body.labels)
        if obj is None:
            raise err(404, "not_found", f"no {kind} {name!r} in the inventory")
        return obj

    # -- snapshots and clones ------------------------------------------------------------------------
    @app.get("/snapshots", summary="VM snapshots (virtkit snapshot list)")
    def snapshots(limit: int = PAGE["limit"], offset: int = PAGE["offset"],
                  who: Any = Depends(c.need("read"))) -> dict[str, Any]:
        from virtkit.machine.snapshot import list_snapshots

        return page(list_snapshots(), limit, offset)

    @app.post("/vms/{name}/snapshots", status_code=202, response_model=TaskView,
              summary="Snapshot a running VM (a task)")
    def snapshot_vm(name: str, body: SnapshotCreate, who: Any = Depends(c.need("operate"))) -> Response:
        from virtkit.machine.snapshot import resolve
        from virtkit.machine.vmsnap import snapshot_name

        running(name)
        dest = resolve(body.snapshot or snapshot_name()).absolute()
        if dest.exists():
            raise err(409, "conflict", f"snapshot {dest.name!r} exists already", "snapshot")

        def work(task: Task) -> dict[str, Any]:
            task.progress(None, "pausing the VM and writing its state")
            out = c.ctl(name, "snapshot", wait=600, path=str(dest), compress=body.compress, name=dest.name)
            c.inv.made("snapshot", dest.name)
            return out

        return start("snapshot", name, who, work)

    def existing_snapshot(snap: str) -> None:
        """404 unless ``snap`` names a snapshot in the snapshot directory (never a path)."""
        from virtkit.machine.snapshot import snapshot_root

        if not _named(snap) or not (snapshot_root() / snap).is_dir():
            raise err(404, "not_found", f"no snapshot {snap!r}")

    @app.delete("/snapshots/{snap}", status_code=204, summary="Delete a snapshot (and its volume snapshots)")
    def delete_snapshot(snap: str, who: Any = Depends(c.need("admin"))) -> Response:
        existing_snapshot(snap)
        try:
            cli_json("snapshot", "delete", snap)
        except VirtkitError as e:
            raise err(409, "conflict", str(e)) from None
        c.inv.forget("snapshot", snap)
        return Response(status_code=204)

    @app.post("/snapshots/{snap}/clone", status_code=202, response_model=TaskView,
              summary="Start new VMs from a snapshot (a task; its result lists them)")
    def clone(snap: str, body: CloneCreate, who: Any = Depends(c.need("operate"))) -> Response:
        existing_snapshot(snap)

        def work(task: Task) -> dict[str, Any]:
            task.progress(None, f"starting {body.count} clone(s)")
            names = cli_json("clone", snap, "--count", str(body.count),
                             *(["--name-prefix", body.prefix] if body.prefix else []))
            for n in names:
                c.inv.made("vm", n["name"])
            return {"clones": names}

        return start("clone", snap, who, work)

    # -- migration and backups -------------------------------------------------------------------------
    @app.post("/vms/{name}/migrate", status_code=202, response_model=TaskView,
              summary="Migrate a running VM live to another virtkit (a task with progress)")
    def migrate(name: str, body: MigrateStart, who: Any = Depends(c.need("admin"))) -> Response:
        running(name)
        c.ctl(name, "migrate", wait=30, **body.model_dump())  # (refusals answer now, as 409)

        def work(task: Task) -> dict[str, Any]:
            st: dict[str, Any] = {"state": "setup"}
            while True:
                try:
                    st = c.ctl(name, "migration", wait=20, until_end=True, timeout=1.0)
                except Exception:  # noqa: BLE001 (the VM ended: after a completed switch-over it stops)
                    if st.get("downtime"):
                        st["state"] = "completed"
                    break
                if st["state"] in ("completed", "failed", "cancelled"):
                    break
                ram = max(1, st.get("ram_pages", 0))
                task.progress(min(0.99, st.get("pages_sent", 0) / ram),
                              f"{st['state']}: round {st.get('round', 0)}, {st.get('dirty_pages', 0)} dirty pages")
            if st["state"] != "completed":
                raise VirtkitError(f"migration {st['state']}: {st.get('error') or 'see the VM log'}")
            return {k: v for k, v in st.items() if k != "log"}

        return start("migrate", name, who, work)

    @app.post("/vms/{name}/backups", status_code=202, response_model=TaskView,
              summary="Back up a running VM's disks live (a task with progress)")
    def backup(name: str, body: BackupStart, who: Any = Depends(c.need("admin"))) -> Response:
        running(name)
        args: dict[str, Any] = {"to": body.to, "incremental": body.incremental, "disk": body.disk}
        if body.to.endswith("/"):
            args.update(to=body.to.rstrip("/"), into_dir=True)
        if not os.path.isabs(args["to"]):  # POOL/VOLUME: the pool's directory
            from virtkit.storage.pool import pools_root

            args["to"] = str(pools_root() / args["to"])
        c.ctl(name, "backup", wait=60, **args)

        def work(task: Task) -> dict[str, Any]:
            while True:
                st = c.ctl(name, "backup-status", wait=20, until_end=True, timeout=1.0)
                if st.get("state") != "running":
                    break
                task.progress(st.get("done", 0) / max(1, st.get("total", 0)), f"{st.get('done', 0):,} bytes copied")
            if st.get("state") != "completed":
                raise VirtkitError(f"backup {st.get('state')}: {st.get('error') or 'see the VM log'}")
            return st

        return start("backup", name, who, work)

    @app.post("/vms/{name}/reboot", status_code=202, response_model=TaskView,
              summary="Power the guest off and start it again from its definition (a task)")
    def reboot(name: str, timeout: float = Query(10, gt=0, le=3600), who: Any = Depends(c.need("operate"))) -> Response:
        d = c.inv.vm(name)
        if d is None:
            raise err(404, "not_found", f"no VM {name!r} is defined here (only a defined VM can start again)")
        running(name)

        def work(task: Task) -> dict[str, Any]:
            task.progress(0.1, "stopping")
            try:
                c.ctl(name, "stop", wait=timeout + 40, timeout=timeout)
            except Exception:  # noqa: BLE001 (a VM that ends may close before it answers)
                pass
            if not c.gone(name, 15):
                raise VirtkitError(f"VM {name!r} did not stop")
            task.progress(0.5, "starting")
            c.start_vm(name, d["config"])
            c.inv.set_wanted(name, "running")
            now = c.live().get(name) or {}
            return {"name": name, "state": now.get("state", "stopped"), "pid": now.get("pid")}

        return start("reboot", name, who, work)

    # -- the modes comparison ----------------------------------------------------------------------------
    @app.post("/modes", status_code=202, response_model=TaskView,
              summary="Compare the virtualization modes on the default guest (a task; virtkit modes --json)")
    def run_modes(body: ModesRun, who: Any = Depends(c.need("operate"))) -> Response:
        def work(task: Task) -> dict[str, Any]:
            task.progress(None, f"booting the guest in {len(body.modes) or 'every'} mode(s)")
            args = ["modes", "--exec", body.exec, "--cpus", str(body.cpus), "--runs", str(body.runs)]
            for m in body.modes:
                args += ["--mode", m]
            return cli_json(*args)

        return start("modes", "default guest", who, work)

    @app.get("/modes", summary="The latest finished modes comparison (404 before the first)")
    def last_modes(who: Any = Depends(c.need("read"))) -> dict[str, Any]:
        rows, _ = c.inv.tasks(1, 0, "succeeded", kind="modes")
        if not rows:
            raise err(404, "not_found", "no modes comparison has run yet: POST /modes")
        return rows[0]["result"] | {"task": rows[0]["id"], "ended": rows[0]["ended"]}

    # -- pool volumes -----------------------------------------------------------------------------------
    def pool_open(pool: str) -> Any:
        from virtkit.storage.pool import Pool, PoolError, pools_root

        if not _named(pool) or not (pools_root() / pool).is_dir():
            raise err(404, "not_found", f"no pool {pool!r}")
        try:
            return Pool.open(pool)
        except PoolError as e:
            raise err(409, "conflict", str(e)) from None

    @app.get("/pools/{pool}/volumes", summary="A pool's volumes")
    def volumes(pool: str, limit: int = PAGE["limit"], offset: int = PAGE["offset"],
                who: Any = Depends(c.need("read"))) -> dict[str, Any]:
        with pool_open(pool) as p:
            rows = p.status()["volumes"]
        return page(rows, limit, offset)

    @app.post("/pools/{pool}/volumes", status_code=201, summary="Create a volume")
    def create_volume(pool: str, body: VolumeCreate, who: Any = Depends(c.need("admin"))) -> dict[str, Any]:
        from virtkit.storage.pool import PoolError

        with pool_open(pool) as p:
            try:
                vol = p.create_volume(body.name, body.size, body.layout, thin=body.thin)
            except PoolError as e:
                code = 409 if "exists" in str(e) or "space" in str(e) else 422
                raise err(code, "conflict" if code == 409 else "invalid", str(e),
                          None if code == 409 else "size") from None
            c.inv.made("volume", f"{pool}/{vol.name}")
            return {"name": vol.name, "size": vol.size, "layout": body.layout, "thin": vol.thin}

    @app.delete("/pools/{pool}/volumes/{vol}", status_code=204, summary="Delete a volume (not while in use)")
    def delete_volume(pool: str, vol: str, who: Any = Depends(c.need("admin"))) -> Response:
        from virtkit.storage.pool import PoolError

        with pool_open(pool) as p:
            if vol not in p.volumes:
                raise err(404, "not_found", f"no volume {vol!r} in pool {pool!r}")
            try:
                p.delete_volume(vol)
            except PoolError as e:
                raise err(409, "conflict", str(e)) from None
        c.inv.forget("volume", f"{pool}/{vol}")
        return Response(status_code=204)

    # -- switches: ports, VLANs, security groups ------------------------------------------------------
    def net(switch: str, op: str, **args: Any) -> dict[str, Any]:
        from virtkit.network import control as netctl

        if not _named(switch) or not netctl.is_running(switch):
            raise err(404, "not_found", f"no running switch {switch!r}")
        try:
            return netctl.request(switch, op, **args)
        except VirtkitError as e:
            raise err(409, "conflict", str(e)) from None

    @app.post("/switches", status_code=201, summary="Create a switch and start it")
    def create_switch(body: SwitchCreate, who: Any = Depends(c.need("admin"))) -> dict[str, Any]:
        from virtkit.network import control as netctl

        try:
            netctl.create(body.name)
        except VirtkitError as e:
            raise err(409, "conflict", str(e), "name") from None
        c.inv.made("switch", body.name)
        return {"name": body.name, "running": netctl.is_running(body.name)}

    @app.delete("/switches/{switch}", status_code=204, summary="Stop a switch and remove its configuration")
    def delete_switch(switch: str, who: Any = Depends(c.need("admin"))) -> Response:
        from virtkit.network import control as netctl

        if not _named(switch):
            raise err(404, "not_found", f"no switch {switch!r}")
        try:
            netctl.delete(switch)
        except VirtkitError as e:
            raise err(404 if "no switch" in str(e) else 409, "not_found" if "no switch" in str(e) else "conflict",
                      str(e)) from None
        c.inv.forget("switch", switch)
        return Response(status_code=204)

    @app.get("/switches/{switch}", summary="A switch: ports, VLANs, counters, MAC table, groups")
    def show_switch(switch: str, who: Any = Depends(c.need("read"))) -> dict[str, Any]:
        return net(switch, "show")

    @app.post("/switches/{switch}/ports", status_code=201, summary="Add a port")
    def add_port(switch: str, body: PortAdd, who: Any = Depends(c.need("admin"))) -> dict[str, Any]:
        args = body.model_dump(exclude_none=True)
        reply = net(switch, "port_add", spec=args.pop("spec"), name=args.pop("name", None), **args)
        return {"switch": switch, "port": reply["port"]}

    @app.patch("/switches/{switch}/ports/{port}", summary="Change a port's VLANs, group or priority")
    def set_port(switch: str, port: str, body: PortSettings, who: Any = Depends(c.need("admin"))) -> dict[str, Any]:
        net(switch, "port_set", name=port, **body.model_dump(exclude_none=True))
        return {"switch": switch, "port": port}

    @app.delete("/switches/{switch}/ports/{port}", status_code=204, summary="Remove a port")
    def remove_port(switch: str, port: str, who: Any = Depends(c.need("admin"))) -> Response:
        net(switch, "port_remove", name=port)
        return Response(status_code=204)

    @app.post("/switches/{switch}/groups", status_code=201, summary="Create a security group")
    def add_group(switch: str, body: GroupCreate, who: Any = Depends(c.need("admin"))) -> dict[str, Any]:
        net(switch, "group_create", group=body.name, vlan=body.vlan, default=body.default)
        return {"switch": switch, "group": body.name}

    @app.delete("/switches/{switch}/groups/{group}", status_code=204, summary="Delete an unused security group")
    def delete_group(switch: str, group: str, who: Any = Depends(c.need("admin"))) -> Response:
        net(switch, "group_delete", group=group)
        return Response(status_code=204)

    @app.post("/switches/{switch}/groups/{group}/rules", status_code=201, summary="Add an ingress rule")
    def add_rule(switch: str, group: str, body: RuleAdd, who: Any = Depends(c.need("admin"))) -> dict[str, Any]:
        return net(switch, "rule_add", group=group, **body.model_dump(exclude_none=True))

    @app.delete("/switches/{switch}/groups/{group}/rules/{index}", status_code=204, summary="Remove rule INDEX")
    def remove_rule(switch: str, group: str, index: int, who: Any = Depends(c.need("admin"))) -> Response:
        net(switch, "rule_remove", group=group, index=index)
        return Response(status_code=204)

    # -- containers --------------------------------------------------------------------------------------
    def container_action(verb: str) -> Any:
        def action(cid: str, who: Any = Depends(c.need("operate" if verb != "rm" else "admin"))) -> dict[str, Any]:
            from virtkit.containers.frontend import ContainerError, Containers

            try:
                rec = Containers().find(cid) if _named(cid) else None
            except ContainerError:
                rec = None
            if rec is None:
                raise err(404, "not_found", f"no container {cid!r}")
            try:
                cli_json("container", verb, *(["-f"] if verb == "rm" else []), rec["id"], json_flag=False,
                         timeout=120)
            except VirtkitError as e:
                raise err(409, "conflict", str(e)) from None
            state = "removed" if verb == "rm" else Containers().get(rec["id"])["status"]
            if verb == "rm":
                c.inv.forget("container", rec["name"])
            return {"id": rec["id"], "name": rec["name"], "state": state, "at": time.time()}
        return action

    @app.post("/containers", status_code=201, summary="Make a container from an image and start it (run -d)")
    def run_container(body: ContainerRun, who: Any = Depends(c.need("operate"))) -> dict[str, Any]:
        from virtkit.containers.frontend import Containers

        args = ["container", "run", "-d", "--restart", body.restart, "--net", body.net]
        if body.name:
            args += ["--name", body.name]
        for k, v in body.env.items():
            if not k or "=" in k or "\0" in k + v:
                raise err(422, "invalid", f"env: {k!r} is not a variable name", "env")
            args += ["-e", f"{k}={v}"]
        for flag, val in (("--memory", body.memory), ("--cpus", body.cpus), ("--pids-limit", body.pids_limit)):
            if val is not None:
                args += [flag, str(val)]
        if any("\0" in a for a in body.command):
            raise err(422, "invalid", "command: an argument holds a NUL byte", "command")
        try:
            out = cli_json(*args, body.image, *body.command, json_flag=False, timeout=300)
        except VirtkitError as e:
            conflict = any(w in str(e) for w in ("exists", "in use", "taken"))
            raise err(409 if conflict else 422, "conflict" if conflict else "run_failed", str(e)) from None
        cid = out["output"].split()[-1]
        rec = Containers().get(cid)
        c.inv.made("container", rec["name"])
        return rec

    @app.delete("/containers/{cid}", status_code=204, summary="Remove a container (stopped first)")
    def delete_container(cid: str, who: Any = Depends(c.need("admin"))) -> Response:
        container_action("rm")(cid, who)
        return Response(status_code=204)

    @app.delete("/images/{ref:path}", status_code=204, summary="Remove an image name (force: even if a "
                "container uses it; its layers stay while the container does)")
    def delete_image(ref: str, force: bool = False, who: Any = Depends(c.need("admin"))) -> Response:
        import re

        if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.:/@-]{0,254}", ref) or ".." in ref:
            raise err(404, "not_found", f"no image {ref!r}")
        try:
            cli_json("image", "rm", *(["-f"] if force else []), ref, json_flag=False, timeout=120)
        except VirtkitError as e:
            missing = "not in the store" in str(e)
            raise err(404 if missing else 409, "not_found" if missing else "conflict", str(e)) from None
        c.inv.forget("image", ref)
        return Response(status_code=204)

    for verb, doc in (("start", "Start a created or stopped container"), ("stop", "Stop a container"),
                      ("restart", "Restart a container"), ("pause", "Freeze a container"),
                      ("resume", "Thaw a container"), ("rm", "Remove a container (stopped first)")):
        app.post(f"/containers/{{cid}}/{verb}", summary=doc)(container_action(verb))


def _named(name: str) -> bool:
    """Whether ``name`` is a plain name (no path: '/' and '..' never reach the file system)."""
    import re

    return bool(re.match(NAME, name)) and ".." not in name
