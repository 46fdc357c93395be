"""Whole-VM snapshots: RAM, device state and disks taken in one instant, restored, rolled back and cloned.

:mod:`virtkit.machine.snapshot` writes the machine (state records and RAM). This module adds the disks,
taken while the VM is paused, so RAM and disks always agree:

* a **qcow2** disk ``P`` becomes part of the snapshot: the image is moved into the bundle
  (``disk0.qcow2``, made read-only) and ``P`` becomes a new, empty qcow2 overlay on it, which the VM
  goes on writing (QEMU's external snapshot, ``blockdev-snapshot``, with the user's path kept for the
  live disk). The overlay names its backing file by a relative path when the bundle is on the same
  filesystem;
* a **pool volume** ``POOL/VOL`` gets a copy-on-write volume snapshot ``VOL.snap-NAME`` in its pool;
* a **read-only** disk is referenced as it is;
* a **raw** file cannot be snapshotted without a copy: refused, with the conversion that would help.

Restoring (``virtkit snapshot restore``) rolls the disks back: each qcow2 path becomes a fresh overlay
on the bundle's image (what was written since is discarded), each volume is rolled back to its
snapshot. A clone gets its own overlays (or writable volume snapshots) instead and shares everything
it has not written with the snapshot and the other clones.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any

from virtkit.errors import ConfigError
from virtkit.machine import snapshot as snap_mod
from virtkit.machine.snapshot import SnapshotError


def _plan(machine: Any, name: str) -> list[dict]:
    """What each disk becomes in the snapshot (checked before anything changes)."""
    from virtkit.storage.pool import VolumeBackend
    from virtkit.storage.qcow2 import Qcow2

    plans = []
    for i, (d, blk) in enumerate(zip(machine.cfg.disks, machine.disks(), strict=True)):
        b = blk.backend
        entry: dict[str, Any] = {"index": i, "path": d.path, "serial": d.serial, "werror": d.werror,
                                 "rerror": d.rerror, "read_only": d.read_only}
        if d.read_only:
            entry.update(kind="shared", format=d.format)
        elif isinstance(b, VolumeBackend):
            entry.update(kind="volume", snapshot=f"{b.vol.name}.snap-{name}")
            if entry["snapshot"] in b.pool.volumes:
                raise SnapshotError(f"disk {d.path}: pool volume {entry['snapshot']} exists already")
        elif isinstance(b, Qcow2):
            entry.update(kind="qcow2", base=f"disk{i}.qcow2", format="qcow2", cluster_size=b.cluster_size,
                         size=b.size)
        else:
            raise SnapshotError(f"disk {d.path} is a raw file: a snapshot of it would need a full copy. Make it "
                                f"qcow2 (virtkit disk convert -O qcow2 {d.path} NEW.qcow2) or a pool volume, or "
                                "attach it read-only")
        plans.append(entry)
    return plans


def take(machine: Any, dest: str | os.PathLike[str], *, name: str | None = None, compress: bool = False,
         parent: str | os.PathLike[str] | None = None) -> dict:
    """Snapshot a paused (or not yet started) machine with its disks into the new directory ``dest``."""
    dest = Path(dest)
    sname = name or dest.name
    if machine.vm.state not in ("created", "paused", "stopped"):
        raise ConfigError(f"the VM is {machine.vm.state}: pause it first")
    plans = _plan(machine, sname)
    blks = machine.disks()
    for blk in blks:
        if not blk.backend.read_only:
            blk.backend.flush()
    qcow = [p for p in plans if p["kind"] == "qcow2"]
    moved: list[tuple[str, Path]] = []  # (live path, where its image went) to undo on failure
    tmp_dest = dest.parent / f".{dest.name}.disks-{os.getpid()}"

    # 1. the machine bundle (RAM and records), disks described in the manifest
    manifest = snap_mod.save(machine, dest, name=sname, compress=compress, parent=parent,
                             extra={"disks": plans})
    try:
        # 2. pool volumes: a copy-on-write snapshot each (atomic in the pool's metadata)
        for p in plans:
            if p["kind"] == "volume":
                b = blks[p["index"]].backend
                b.pool.snapshot(b.vol.name, p["snapshot"])
        # 3. qcow2 images move into the bundle; the live path becomes an overlay on them
        if qcow:
            tmp_dest.mkdir()
            carried: dict[int, list] = {}  # dirty bitmaps go on counting in the new overlay (incremental backups)
            for p in qcow:
                blk = blks[p["index"]]
                carried[p["index"]] = blk.backend.bitmap_copies(skip_inconsistent=True)
                blk.backend.close()
                target = dest / p["base"]
                os.rename(p["path"], target)
                moved.append((p["path"], target))
                os.chmod(target, 0o444)
            for p in qcow:
                _overlay(p["path"], dest / p["base"], p)
                new = _open(p["path"])
                new.add_bitmaps(carried[p["index"]])
                blks[p["index"]].backend = new
            tmp_dest.rmdir()
    except BaseException as err:
        _undo(machine, plans, moved, dest, blks)
        raise SnapshotError(f"snapshot {dest}: disks could not be taken ({err}); nothing was changed") from err
    manifest["disks"] = plans
    return manifest


def _overlay(live: str, base: Path, p: dict) -> None:
    """A new empty qcow2 at ``live`` (written beside it and renamed in) backed by ``base``."""
    from virtkit.storage.backend import replacing
    from virtkit.storage.qcow2 import Qcow2, backing_ref

    with replacing(live) as tmp:
        Qcow2.create(tmp, p["size"], cluster_size=p["cluster_size"], backing=backing_ref(live, base),
                     backing_fmt="qcow2")


def _open(path: str) -> Any:
    from virtkit.storage import open_disk

    return open_disk(path, fmt="qcow2")


def _undo(machine: Any, plans: list[dict], moved: list[tuple[str, Path]], dest: Path, blks: list[Any]) -> None:
    """Put every disk back as it was before a failed snapshot and remove the bundle."""
    import shutil

    for live, target in moved:
        try:
            os.chmod(target, 0o644)
            os.replace(target, live)
        except OSError:
            pass
    for p in plans:
        blk = blks[p["index"]]
        if p["kind"] == "qcow2" and getattr(blk.backend, "fd", 0) < 0 or getattr(blk.backend, "closed", False):
            try:
                blk.backend = _open(p["path"])
            except Exception:
                pass
        if p["kind"] == "volume":
            b = blk.backend
            try:
                if p["snapshot"] in b.pool.volumes:
                    b.pool.delete_volume(p["snapshot"])
            except Exception:
                pass
    shutil.rmtree(dest, ignore_errors=True)


# ------------------------------------------------------------------------------------------- restore
def restore_disks(bundle: Path, manifest: dict, *, clone: str | None = None,
                  disk_dir: str | os.PathLike[str] | None = None) -> tuple[list[Any], list[str]]:
    """DiskConfigs for a machine restored from ``bundle``, and what was done to the disks.

    Without ``clone``: roll back (each qcow2 path becomes a fresh overlay on the bundle's image; each
    volume is rolled back to its snapshot). With ``clone`` (the clone's name): new overlays in
    ``disk_dir`` (default: beside the original disk) and writable volume snapshots.
    """
    from virtkit.machine.config import DiskConfig
    from virtkit.storage.backend import BlockError
    from virtkit.storage.lock import users
    from virtkit.storage.pool import Pool

    disks, notes = [], []
    for p in manifest.get("disks", []):
        kw = {"serial": p.get("serial"), "werror": p.get("werror", "report"), "rerror": p.get("rerror", "report")}
        kind, path = p.get("kind"), p.get("path")
        if not isinstance(path, str) or kind not in ("shared", "qcow2", "volume"):
            raise SnapshotError(f"{bundle}: disk entry {p!r} is malformed")
        if kind == "shared":
            disks.append(DiskConfig(path=path, format=p.get("format"), read_only=True, **kw))
            continue
        if kind == "volume":
            pool_name, _, vol = path.rpartition("/")
            with Pool.open(pool_name) as pool:
                if p["snapshot"] not in pool.volumes:
                    raise SnapshotError(f"{bundle}: pool volume {pool_name}/{p['snapshot']} is gone")
                if clone is None:
                    pool.rollback(vol, p["snapshot"])
                    notes.append(f"volume {path} rolled back to {p['snapshot']}")
                    disks.append(DiskConfig(path=path, **kw))
                else:
                    cname = f"{vol}.{clone}"
                    pool.snapshot(p["snapshot"], cname, writable=True)
                    notes.append(f"volume {pool_name}/{cname}: a thin clone of {p['snapshot']}")
                    disks.append(DiskConfig(path=f"{pool_name}/{cname}", **kw))
            continue
        base = bundle / p["base"]
        if not base.is_file():
            raise SnapshotError(f"{bundle}: disk image {p['base']} is missing")
        if clone is None:
            live = path
        else:
            d = Path(disk_dir) if disk_dir else Path(os.path.dirname(os.path.abspath(path)))
            d.mkdir(parents=True, exist_ok=True)
            live = str(d / f"{clone}-disk{p['index']}.qcow2")
            if os.path.exists(live):
                raise SnapshotError(f"clone disk {live} exists already")
        if os.path.exists(live) and users(live):
            raise BlockError(f"disk {live} is in use by another VM or process: stop it before restoring")
        _overlay(live, base, p)
        notes.append(f"disk {live}: " + ("rolled back (a new overlay on the snapshot's image)" if clone is None
                                        else "a new overlay on the snapshot's image"))
        disks.append(DiskConfig(path=live, format="qcow2", **kw))
    return disks, notes


def restore(bundle: str | os.PathLike[str], console: Any = None, *, name: str | None = None,
            clone: bool = False, disk_dir: str | os.PathLike[str] | None = None,
            verify_memory: bool = True) -> tuple[Any, list[str]]:
    """A machine built from ``bundle`` with its disks rolled back (or, ``clone``, given new ones), a new
    identity for a clone (name, MAC addresses, generation ID); returns it (not started) and notes."""
    from virtkit.devices.virtio.net import random_mac

    p = Path(bundle)
    manifest = snap_mod.read_manifest(p)
    snap_mod.verify(p, manifest, memory=verify_memory)
    vm_name = name or (None if clone else manifest.get("vm"))
    if clone and not vm_name:
        vm_name = f"{manifest.get('vm') or 'clone'}-{secrets.token_hex(3)}"
    disks, notes = restore_disks(p, manifest, clone=vm_name if clone else None, disk_dir=disk_dir)
    changes: dict[str, Any] = {"disks": disks}
    if clone:
        from virtkit.machine.config import NicConfig

        nics = []
        for n in manifest["machine"].get("nics", []):
            d = dict(n)
            d["mac"] = ":".join(f"{b:02x}" for b in random_mac())
            nics.append(NicConfig.from_dict(d, "nics"))
        changes["nics"] = nics
    m = snap_mod.restore(p, console, name=vm_name, verify_memory=False, changes=changes)
    if clone:
        notes.append(f"clone {vm_name}: new MAC address(es) {', '.join(n.mac or '' for n in changes['nics'])}"
                     if changes["nics"] else f"clone {vm_name}")
    return m, notes


def snapshot_name() -> str:
    """A default snapshot name: the UTC time."""
    return time.strftime("snap-%Y%m%d-%H%M%S", time.gmtime())
