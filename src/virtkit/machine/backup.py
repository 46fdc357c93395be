"""``virtkit backup``: copy a running VM's disk as of one instant to a file or a pool volume, fully or only
what changed since the last backup; and the point-in-time view a pull-mode NBD export serves.

The instant: the VM is paused, its disk flushed, the dirty bitmap that will count the next incremental
swapped for a fresh one, and a copy-before-write filter (:class:`virtkit.storage.backup.PointInTime`) put
in front of the disk; then the VM runs on (paused for milliseconds) while :class:`BackupJob` copies.

Incremental backups follow Proxmox and QEMU: a persistent dirty bitmap (``virtkit-backup`` unless
``--bitmap``) is kept in the qcow2 image itself; a full backup starts it, each backup copies the chunks it
marks and starts it again. The new file is a qcow2 overlay whose backing file is the previous backup, so
the chain reads as the whole disk at that instant (for a pool, a writable snapshot of the previous backup
volume takes the changed chunks). Which backup was last is remembered per disk and bitmap in
``$XDG_DATA_HOME/virtkit/backups`` (``--base`` overrides). A backup that fails puts the bitmap's chunks back,
so the next incremental still copies everything since the last backup that succeeded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from virtkit.machine.snapshot import snapshot_root
from virtkit.storage import bitmap as bm
from virtkit.storage.backend import BlockBackend, BlockError
from virtkit.storage.backup import (
    BackupError,
    BackupJob,
    PointInTime,
    ViewBackend,
    allocated_runs,
    chunk_runs,
    runs_to_chunks,
)

DEFAULT_BITMAP = "virtkit-backup"


def records_dir() -> Path:
    """Where the last backup of each disk and bitmap is remembered (beside the snapshot directory)."""
    return snapshot_root().parent / "backups"


def _disk_key(backend: Any) -> str:
    pool = getattr(backend, "pool", None)
    if pool is not None and hasattr(backend, "vol"):
        return f"pool:{Path(pool.path).resolve()}/{backend.vol.name}"
    return os.path.realpath(getattr(backend, "path", "?"))


def _record_path(backend: Any, bitmap: str) -> Path:
    h = hashlib.sha256(f"{_disk_key(backend)}\0{bitmap}".encode()).hexdigest()[:24]
    return records_dir() / f"{h}.json"


def last_backup(backend: Any, bitmap: str) -> dict | None:
    """The record of the last backup that succeeded for this disk and bitmap, or None."""
    try:
        return json.loads(_record_path(backend, bitmap).read_text())
    except (OSError, ValueError):
        return None


def _remember(backend: Any, bitmap: str, target: str, kind: str) -> None:
    p = _record_path(backend, bitmap)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"disk": _disk_key(backend), "bitmap": bitmap, "last": target, "kind": kind,
                               "time": time.time()}))
    os.replace(tmp, p)


# ------------------------------------------------------------------------------------------------ targets
def _volume_target(spec: str) -> tuple[str, str] | None:
    """``(pool dir, volume)`` when ``spec`` names a volume in an existing pool, else None (a file)."""
    from virtkit.storage.pool import is_volume_spec, resolve_pool_dir

    if not is_volume_spec(spec):
        return None
    pool_part, _, vol = spec.rpartition("/")
    return str(resolve_pool_dir(pool_part).resolve()), vol


@contextlib.contextmanager
def _pool(path: str):
    from virtkit.storage.pool import Pool, shared_pool

    held = shared_pool(path)
    if held is not None:
        yield held
        return
    with Pool.open(path) as p:
        yield p


class Target:
    """The new image a backup writes: created before the backup's instant, removed again if it fails."""

    def __init__(self, spec: str, size: int, fmt: str | None, base: str | None) -> None:
        from virtkit.storage import open_disk
        from virtkit.storage.backend import create_raw
        from virtkit.storage.qcow2 import Qcow2, backing_ref

        self.spec, self.kind = spec, "file"
        vol = _volume_target(spec)
        if vol is not None:
            self.kind, (self.pool_dir, self.volume) = "volume", vol
            with _pool(self.pool_dir) as p:
                if self.volume in p.volumes:
                    raise BackupError(f"backup target {spec} exists already: give a new volume name")
                if base is not None:
                    bvol = base.rpartition("/")[2]
                    based = _volume_target(base)
                    if based is None or based[0] != self.pool_dir:
                        raise BackupError(f"an incremental backup to {spec} needs the previous backup ({base}) "
                                          "in the same pool")
                    if p.volume(bvol).size != size:
                        raise BackupError(f"the previous backup {base} is not the size of the disk")
                    p.snapshot(bvol, self.volume, writable=True)
                else:
                    p.create_volume(self.volume, size, thin=True)
            self.fmt = "volume"
            self.backend: BlockBackend = open_disk(spec)
            return
        if os.path.exists(spec) or os.path.islink(spec):
            raise BackupError(f"backup target {spec} exists already: a backup never overwrites a file")
        parent = os.path.dirname(os.path.abspath(spec))
        if not os.path.isdir(parent):
            raise BackupError(f"backup target {spec}: directory {parent} does not exist")
        self.fmt = fmt or ("raw" if spec.endswith((".raw", ".img")) and base is None else "qcow2")
        if self.fmt not in ("qcow2", "raw"):
            raise BackupError(f"backup format {self.fmt!r}: use qcow2 or raw")
        if base is not None and self.fmt != "qcow2":
            raise BackupError("an incremental backup is a qcow2 overlay on the previous one: use -O qcow2")
        try:
            if self.fmt == "qcow2":
                from virtkit.storage.formats import probe

                Qcow2.create(spec, size, backing=None if base is None else backing_ref(spec, base),
                             backing_fmt=None if base is None else probe(base).name)
            else:
                create_raw(spec, size)
            self.backend = open_disk(spec, fmt=self.fmt)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(spec)
            raise

    def close(self) -> None:
        self.backend.close()

    def remove(self) -> None:
        """Delete what a failed backup wrote (it is ours: created by this backup)."""
        with contextlib.suppress(Exception):
            self.backend.close()
        if self.kind == "volume":
            with contextlib.suppress(Exception), _pool(self.pool_dir) as p:
                p.delete_volume(self.volume)
        else:
            with contextlib.suppress(OSError):
                os.unlink(self.spec)

    @property
    def name(self) -> str:
        """How the record names it: an absolute path, or POOL_DIR/VOLUME."""
        return f"{self.pool_dir}/{self.volume}" if self.kind == "volume" else os.path.abspath(self.spec)


def dir_target(to_dir: str, disk_path: str, fmt: str | None, index: int | None = None) -> str:
    """The file a backup into directory ``to_dir`` writes for a disk: ``disk<index>-<name>.qcow2`` (a VM's
    disk) or ``<name>.qcow2`` (an image backed up offline); ``.raw`` for ``fmt`` raw."""
    stem = os.path.splitext(os.path.basename(disk_path.rstrip("/")))[0] or "disk"
    return os.path.join(to_dir, ("" if index is None else f"disk{index}-") + stem + (".raw" if fmt == "raw" else
                                                                                  ".qcow2"))


def scratch_dir(backend: Any) -> str | None:
    """Where the copy-before-write scratch file goes: beside the disk (the same storage, not a RAM-backed
    /tmp), else the default temporary directory."""
    p = getattr(backend, "path", None)
    d = os.path.dirname(os.path.abspath(p)) if isinstance(p, str) and os.path.exists(p) else None
    if d is None and getattr(backend, "pool", None) is not None:
        d = str(backend.pool.path)
    return d if d and os.access(d, os.W_OK) else None


# ------------------------------------------------------------------------------------------------ the instant
class Instant:
    """Stops the world for the backup's instant: the VM paused (if any) and its disk flushed."""

    def __init__(self, vm: Any = None) -> None:
        self.vm = vm
        self.was_running = False

    def __enter__(self) -> Instant:
        if self.vm is not None and self.vm.state == "running":
            if not self.vm.pause("taking a backup"):
                raise BackupError("the VM did not pause for the backup's instant")
            self.was_running = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.was_running:
            self.vm.resume()


def _bitmap_for(backend: Any, name: str) -> tuple[Any, bm.DirtyBitmap | None]:
    """The image that keeps the disk's bitmaps (qcow2) and bitmap ``name`` in it (None if it has none)."""
    from virtkit.storage.qcow2 import Qcow2

    if not isinstance(backend, Qcow2):
        return None, None
    if backend.has_bitmap(name):
        return backend, backend.bitmap(name)  # BitmapError when inconsistent
    return backend, None


class LiveBackup:
    """One backup of one disk (of a running VM when ``blk`` is its virtio-blk device, else offline)."""

    def __init__(self, backend: BlockBackend, to: str, *, incremental: bool = False, base: str | None = None,
                 bitmap: str = DEFAULT_BITMAP, fmt: str | None = None, blk: Any = None, vm: Any = None,
                 label: str = "disk", speed: float | None = None) -> None:
        self.blk, self.vm, self.label, self.speed = blk, vm, label, speed
        self.source = backend
        self.to, self.bitmap_name, self.incremental = to, bitmap, incremental
        bm.check_name(bitmap)
        image, live = _bitmap_for(backend, bitmap)
        if incremental:
            if image is None:
                raise BackupError(f"{label}: an incremental backup needs a dirty bitmap, kept in qcow2 images: "
                                  f"{getattr(backend, 'path', label)} is not qcow2 (take full backups, or use a "
                                  "qcow2 disk)")
            if live is None:
                raise BackupError(f"{label}: no bitmap {bitmap!r} yet: take a full backup first")
            if base is None:
                rec = last_backup(backend, bitmap)
                if rec is None:
                    raise BackupError(f"{label}: no earlier backup recorded for bitmap {bitmap!r}: take a full "
                                      "backup first or give --base")
                base = rec["last"]
            if _volume_target(base) is None and not os.path.exists(base):
                raise BackupError(f"the previous backup {base} is gone: take a full backup (or give --base)")
        self.base = base if incremental else None
        self.target = Target(to, backend.size, fmt, self.base)
        self.image, self.frozen = image, None
        self.job: BackupJob | None = None
        self.pit: PointInTime | None = None

    def start(self) -> BackupJob:
        """Take the instant and start copying in the background."""
        try:
            with Instant(self.vm):
                self.arm()
        except BaseException:
            self.disarm()
            raise
        return self.launch()

    def arm(self) -> None:
        """At the instant (the VM paused by the caller): flush, start the bitmap again, put the filter in."""
        b = self.source
        if not b.read_only:
            b.flush()
        chunk = bm.DEFAULT_GRANULARITY
        if self.image is not None:
            live = self.image.bitmap(self.bitmap_name) if self.image.has_bitmap(self.bitmap_name) else None
            if live is None:
                live = self.image.bitmap_add(self.bitmap_name)
                self.frozen = live.copy()
                self.frozen.bits[:] = 1  # nothing was known before: a failed full backup leaves all dirty
            else:
                self.frozen = live.copy()
            if self.incremental:
                chunk = live.granularity
            self.image.bitmap_clear(self.bitmap_name)
        if self.incremental:
            runs = self.frozen.runs()
        else:
            runs = allocated_runs(b)
        protect = runs_to_chunks(runs, b.size, chunk)
        runs = chunk_runs(protect, b.size, chunk)
        self.pit = PointInTime(b, chunk, protect, scratch_dir=self._scratch_dir())
        self.pit.before_close = self._undo_bitmap  # the VM stops mid-backup: its bitmap is stored whole
        if self.blk is not None:
            self.blk.backend = self.pit
        self._runs = runs

    def disarm(self) -> None:
        """Undo :meth:`arm` (another disk of the same instant failed, or arming did): nothing is kept."""
        self._undo_bitmap()
        if self.pit is not None:
            if self.blk is not None and self.blk.backend is self.pit:
                self.blk.backend = self.source
            self.pit.release_scratch()
        self.target.remove()

    def launch(self) -> BackupJob:
        """Start copying (after :meth:`arm`)."""
        assert self.pit is not None
        self.job = BackupJob(self.pit, self.target.backend, self._runs, on_end=self._end, speed=self.speed,
                             over_older=self.incremental)
        self.job.start()
        return self.job

    def running(self) -> bool:
        return self.job is not None and not self.job.ended.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.job is None or self.job.wait(timeout)

    def _scratch_dir(self) -> str | None:
        return scratch_dir(self.source)

    def _undo_bitmap(self) -> None:
        if self.image is not None and self.frozen is not None:
            with contextlib.suppress(Exception):
                self.image.bitmap_merge(self.frozen, self.bitmap_name)

    def _end(self, job: BackupJob) -> None:
        """Keep or remove the target, record the backup or give the bitmap back, take the filter out."""
        pit = self.pit
        ok = job.state == "completed"
        if ok:
            try:
                self.target.close()
                _remember(self.source, self.bitmap_name, self.target.name,
                          "incremental" if self.incremental else "full")
            except Exception as err:  # noqa: BLE001 - reported as the job's result
                job.state, job.error, ok = "failed", f"the backup could not be finished: {err}", False
        with pit.lock:  # the guest's writes (which mark the bitmap) wait while it is given back
            if not ok:
                self._undo_bitmap()
            if self.blk is not None and self.blk.backend is pit:
                self.blk.backend = self.source  # a request in flight still finishes through the filter
            pit.release_scratch()
        if not ok:
            self.target.remove()

    def status(self) -> dict[str, Any]:
        out = {"disk": self.label, "target": self.target.name, "format": self.target.fmt,
               "kind": "incremental" if self.incremental else "full", "bitmap": self.bitmap_name,
               "base": self.base}
        if self.job is not None:
            out.update(self.job.status)
        return out


class GroupBackup:
    """Every disk of a VM backed up as of one instant (one pause for all, so the disks agree with each
    other), into a directory, with the VM's config beside them (``vm.json``), as Proxmox's vzdump."""

    def __init__(self, machine: Any, vm: Any, to_dir: str, *, incremental: bool = False, bitmap: str = DEFAULT_BITMAP,
                 fmt: str | None = None, speed: float | None = None) -> None:
        if os.path.exists(to_dir) and not os.path.isdir(to_dir):
            raise BackupError(f"backup target {to_dir} is a file, not a directory")
        os.makedirs(to_dir, exist_ok=True)
        self.dir, self.machine, self.vm, self.incremental = to_dir, machine, vm, incremental
        self.backups: list[LiveBackup] = []
        try:
            for i, (blk, dc) in enumerate(zip(machine.disks(), machine.cfg.disks, strict=True)):
                self.backups.append(LiveBackup(blk.backend, dir_target(to_dir, dc.path, fmt, i),
                                               incremental=incremental, bitmap=bitmap, fmt=fmt, blk=blk, vm=vm,
                                               label=f"disk {i} ({dc.path})", speed=speed))
        except BaseException:
            for b in self.backups:
                b.target.remove()
            raise
        if not self.backups:
            raise BackupError("the VM has no disks")

    def start(self) -> None:
        armed: list[LiveBackup] = []
        try:
            with Instant(self.vm):
                for b in self.backups:
                    b.arm()
                    armed.append(b)
        except BaseException:
            for b in self.backups:
                b.disarm() if b in armed else b.target.remove()
            raise
        for b in self.backups:
            b.launch()
        threading.Thread(target=self._finish, name="virtkit-backup-group", daemon=True).start()

    def _finish(self) -> None:
        for b in self.backups:
            b.wait()
        if all(b.job is not None and b.job.state == "completed" for b in self.backups):
            cfg = self.machine.cfg.to_dict()
            tmp = os.path.join(self.dir, f".vm.json.{os.getpid()}.tmp")
            with open(tmp, "w") as f:
                json.dump({"machine": cfg, "disks": [b.target.name for b in self.backups], "time": time.time(),
                           "kind": "incremental" if self.incremental else "full"}, f, indent=1)
            os.replace(tmp, os.path.join(self.dir, "vm.json"))
        self.finished = True

    def running(self) -> bool:
        return any(b.running() for b in self.backups) or not getattr(self, "finished", False)

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def cancel(self) -> None:
        for b in self.backups:
            if b.job is not None:
                b.job.cancel()

    def status(self) -> dict[str, Any]:
        parts = [b.status() for b in self.backups]
        states = [p.get("state") for p in parts]
        state = ("running" if self.running() else "failed" if "failed" in states else
                 "cancelled" if "cancelled" in states else "completed")
        errors = [f"{p['disk']}: {p['error']}" for p in parts if p.get("error")]
        out: dict[str, Any] = {"state": state, "disk": "all", "target": self.dir, "format": parts[0]["format"],
                               "kind": "incremental" if self.incremental else "full", "bitmap": parts[0]["bitmap"],
                               "base": None, "error": "; ".join(errors) or None, "disks": parts}
        for k in ("total", "done", "written", "saved_by_cbw"):
            out[k] = sum(p.get(k, 0) for p in parts)
        out["seconds"] = max(p.get("seconds", 0) for p in parts)
        out["rate"] = round(out["done"] / max(out["seconds"], 1e-9))
        return out


# ------------------------------------------------------------------------------------------------ pull mode
class PullExport:
    """A point-in-time view of a running VM's disk served over NBD from the VM's process, with the
    ``qemu:dirty-bitmap:NAME`` context of the bitmap as of the same instant."""

    _ids = 0
    _lock = threading.Lock()

    def __init__(self, blk: Any, vm: Any, label: str, bitmap: str | None = None, reset_bitmap: bool = False,
                 export_name: str = "") -> None:
        from virtkit.storage.nbd import NbdExport, NbdServer

        self.blk, self.label = blk, label
        source = blk.backend
        if isinstance(source, PointInTime):
            raise BackupError(f"{label}: a backup or export of this disk is running already")
        frozen: dict[str, bm.DirtyBitmap] = {}
        with Instant(vm):
            if not source.read_only:
                source.flush()
            if bitmap is not None:
                image, live = _bitmap_for(source, bitmap)
                if live is None:
                    raise BackupError(f"{label}: no bitmap {bitmap!r}" + ("" if image is not None else
                                                                          " (bitmaps are kept in qcow2 disks)"))
                frozen[bitmap] = live.copy()
                if reset_bitmap:
                    image.bitmap_clear(bitmap)
            self.pit = PointInTime(source, bm.DEFAULT_GRANULARITY, None, scratch_dir=scratch_dir(source))
            blk.backend = self.pit
        self.source = source
        self.view = ViewBackend(self.pit, frozen)
        self.server = NbdServer([NbdExport(export_name, self.view, read_only=True,
                                           description=f"{label} as of {time.strftime('%H:%M:%S')}")])
        with PullExport._lock:
            PullExport._ids += 1
            self.id = PullExport._ids
        self.bitmap = bitmap

    def listen(self, host: str | None, port: int | None, socket_path: str | None) -> list[str]:
        if socket_path:
            self.server.listen_unix(socket_path)
        if port is not None or not socket_path:
            self.server.listen_tcp(host or "127.0.0.1", 10809 if port is None else port)
        self.server.start()
        return self.server.addresses

    def stop(self) -> None:
        """Stop serving and take the filter out (the scratch file goes)."""
        self.server.stop()
        if self.blk.backend is self.pit:
            self.blk.backend = self.source
        self.pit.release_scratch()


def pick_disk(machine: Any, index: int | None) -> tuple[Any, str]:
    """Disk ``index`` (default: the only one) as (virtio-blk device, label)."""
    blks = machine.disks()
    if not blks:
        raise BackupError("the VM has no disks")
    if index is None:
        if len(blks) > 1:
            raise BackupError(f"the VM has {len(blks)} disks: say which with --disk 0..{len(blks) - 1}")
        index = 0
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(blks):
        raise BackupError(f"no disk {index!r}: the VM has disks 0..{len(blks) - 1}")
    return blks[index], f"disk {index} ({machine.cfg.disks[index].path})"


__all__ = ["BackupError", "BlockError", "LiveBackup", "PullExport", "last_backup", "pick_disk"]


# ------------------------------------------------------------------------------------------------ control ops
class BackupOps:
    """The control-socket operations of one running VM: ``backup``, ``backup-status``, ``backup-cancel``,
    ``nbd-export``, ``nbd-export-stop``. One backup at a time; exports of other disks may run beside it."""

    def __init__(self, machine: Any, vm: Any, migrating: Any = lambda: False) -> None:
        self.machine, self.vm, self.migrating = machine, vm, migrating
        self.backup: LiveBackup | GroupBackup | None = None
        self.exports: dict[int, PullExport] = {}
        self.delivered = threading.Event()
        vm.closers.insert(0, ("nbd exports", self.stop_exports))

    def busy(self) -> str | None:
        """Why a snapshot or a migration must wait now, or None."""
        if self.backup is not None and self.backup.running():
            return "a backup is running (wait for it or cancel it: virtkit backup NAME --cancel)"
        if self.exports:
            return "a point-in-time NBD export of its disk is open (stop the virtkit nbd serve --vm first)"
        return None

    def stop_exports(self) -> None:
        for e in list(self.exports.values()):
            e.stop()
        self.exports.clear()

    def _disk(self, disk: Any) -> tuple[Any, str]:
        if disk is not None and (isinstance(disk, bool) or not isinstance(disk, int)):
            raise ValueError("disk must be a disk index")
        return pick_disk(self.machine, disk)

    def handlers(self) -> dict[str, Any]:
        def start(to: str, disk: int | None = None, incremental: bool = False, base: str | None = None,
                  bitmap: str = DEFAULT_BITMAP, format: str | None = None,  # noqa: A002
                  speed: float | None = None, into_dir: bool = False) -> dict[str, Any]:
            if not isinstance(to, str) or not (os.path.isabs(to)):
                raise ValueError("to must be an absolute path (or POOL_DIR/VOLUME)")
            if base is not None and (not isinstance(base, str) or not os.path.isabs(base)):
                raise ValueError("base must be an absolute path (or POOL_DIR/VOLUME)")
            if not isinstance(incremental, bool) or not isinstance(bitmap, str):
                raise ValueError("incremental must be true or false, bitmap a name")
            if speed is not None and (isinstance(speed, bool) or not isinstance(speed, int | float) or speed <= 0):
                raise ValueError("speed must be bytes per second")
            if self.vm.state not in ("running", "paused"):
                raise ValueError(f"the VM is {self.vm.state}")
            if not isinstance(into_dir, bool):
                raise ValueError("into_dir must be true or false")
            if self.backup is not None and self.backup.running():
                raise ValueError("a backup of this VM is running already")
            if self.migrating():
                raise ValueError("the VM is migrating: back it up where it lands")
            if into_dir and disk is None:  # every disk, one instant, into a directory
                if base is not None:
                    raise ValueError("--base names one previous backup: with a directory, each disk builds on its own")
                if any(isinstance(b.backend, PointInTime) for b in self.machine.disks()):
                    raise ValueError("a point-in-time export of a disk of this VM is open")
                group = GroupBackup(self.machine, self.vm, to, incremental=incremental, bitmap=bitmap, fmt=format,
                                    speed=speed)
                group.start()
                self.backup = group
                return group.status()
            blk, label = self._disk(disk)
            if into_dir:
                os.makedirs(to, exist_ok=True)
                to = dir_target(to, self.machine.cfg.disks[disk].path, format, disk)
            if isinstance(blk.backend, PointInTime):
                raise ValueError(f"{label}: a point-in-time export of it is open")
            self.backup = LiveBackup(blk.backend, to, incremental=incremental, base=base, bitmap=bitmap,
                                     fmt=format, blk=blk, vm=self.vm, label=label, speed=speed)
            self.backup.start()
            return self.backup.status()

        def status(until_end: bool = False, timeout: float = 0.5) -> dict[str, Any]:
            b = self.backup
            if b is None:
                raise ValueError("no backup has been taken of this VM")
            if until_end:
                b.wait(min(max(float(timeout), 0.0), 10.0))
            return b.status()

        def cancel() -> dict[str, Any]:
            b = self.backup
            if b is None or not b.running():
                raise ValueError("no backup is running")
            if isinstance(b, GroupBackup):
                b.cancel()
            elif b.job is not None:
                b.job.cancel()
            return {"state": "cancelling"}

        def export(disk: int | None = None, bitmap: str | None = None, reset_bitmap: bool = False,
                   host: str | None = None, port: int | None = None, socket: str | None = None,
                   name: str = "") -> dict[str, Any]:
            if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535):
                raise ValueError(f"invalid port {port!r}")
            if socket is not None and (not isinstance(socket, str) or not os.path.isabs(socket)):
                raise ValueError("socket must be an absolute path")
            if bitmap is not None and not isinstance(bitmap, str) or not isinstance(name, str):
                raise ValueError("bitmap and name must be strings")
            if self.vm.state not in ("running", "paused"):
                raise ValueError(f"the VM is {self.vm.state}")
            if self.backup is not None and self.backup.running():
                raise ValueError("a backup of this VM is running: wait for it first")
            blk, label = self._disk(disk)
            e = PullExport(blk, self.vm, label, bitmap=bitmap, reset_bitmap=bool(reset_bitmap), export_name=name)
            try:
                addresses = e.listen(host, port, socket)
            except BaseException:
                e.stop()
                raise
            self.exports[e.id] = e
            return {"id": e.id, "addresses": addresses, "disk": label, "size": e.view.size,
                    "contexts": ["base:allocation"] + ([f"qemu:dirty-bitmap:{bitmap}"] if bitmap else [])}

        def export_stop(id: int) -> dict[str, Any]:  # noqa: A002
            e = self.exports.pop(id, None) if isinstance(id, int) else None
            if e is None:
                raise ValueError(f"no NBD export {id!r} (open: {sorted(self.exports) or 'none'})")
            e.stop()
            return {"stopped": id}

        return {"backup": start, "backup-status": status, "backup-cancel": cancel, "nbd-export": export,
                "nbd-export-stop": export_stop}
