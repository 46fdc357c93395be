"""Snapshots of a whole machine: a self-describing, versioned, checksummed bundle (``docs/vm-state.md``).

A snapshot is a directory::

    NAME/
      manifest.json   format, version, the machine config, the memory layout, checksums of the files
      state.json      the engine's and every device's record (virtkit.machine.state)
      memory.bin      guest RAM: sparse (zero pages are holes) -- or memory.zst, compressed with zstd
      pages.bin       diff snapshots only: one bit per page, set where memory.bin holds the page

Restore maps ``memory.bin`` copy-on-write over guest RAM (:meth:`GuestMemory.map_file`): the guest runs
before its memory is read, and clones of one snapshot share every page neither of them wrote. A diff
snapshot stores only the pages that differ from its parent (named by relative path): restore maps the
base and copies each layer's pages over it.

Nothing here touches disks: :mod:`virtkit.machine.vmsnap` takes the disks in the same instant.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np

from virtkit.errors import VirtkitError
from virtkit.machine.memory import nonzero_pages
from virtkit.storage.bitmap import true_runs

FORMAT = "virtkit-snapshot"
VERSION = 1
PAGE = 4096
CHUNK = 4 << 20  # memory is scanned and written in pieces this large
MANIFEST, STATE, MEMORY, MEMORY_ZST, PAGES = "manifest.json", "state.json", "memory.bin", "memory.zst", "pages.bin"


class SnapshotError(VirtkitError):
    """A snapshot cannot be written or read back (missing, truncated, corrupt, another version or machine)."""


# ------------------------------------------------------------------------------------------- locations
def snapshot_root() -> Path:
    """Where named snapshots live: ``$VIRTKIT_SNAPSHOTS``, else ``$XDG_DATA_HOME/virtkit/snapshots``."""
    env = os.environ.get("VIRTKIT_SNAPSHOTS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "virtkit" / "snapshots"


def template_root() -> Path:
    """Where templates live: beside the snapshot directory."""
    return snapshot_root().parent / "templates"


def template_path(name: str) -> Path:
    """The bundle of template ``name`` (checked to exist)."""
    from virtkit.errors import ConfigError

    p = template_root() / name
    if not (p / MANIFEST).exists():
        root = template_root()
        known = sorted(x.name for x in root.iterdir()) if root.is_dir() else []
        raise ConfigError(f"no template {name!r}" + (f" (templates: {', '.join(known)})" if known else ""))
    return p


def resolve(spec: str) -> Path:
    """A snapshot argument: a path when it contains ``/`` (or names an existing directory), else a name in
    :func:`snapshot_root`."""
    if "/" in spec or spec in (".", "..") or Path(spec).is_dir() and (Path(spec) / MANIFEST).exists():
        return Path(spec)
    if not spec or spec.startswith(".") or not all(c.isalnum() or c in "-_.+@" for c in spec):
        raise SnapshotError(f"bad snapshot name {spec!r}: letters, digits and - _ . + @ (or give a path)")
    return snapshot_root() / spec


# ------------------------------------------------------------------------------------------- writing
def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _nonzero_pages(block: np.ndarray) -> np.ndarray:
    """Which pages of a page-aligned uint8 block hold anything but zeros."""
    return block.view(np.uint64).reshape(-1, PAGE // 8).any(axis=1)


class PageDigest:
    """The checksum of a memory image that does not depend on how it is stored: SHA-256 over every maximal
    run of non-zero pages, in order (the pages' bytes, then the run's first page and length), so a sparse
    file, the same file copied without holes and RAM itself give the same digest, and only the non-zero
    data is ever hashed."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.start: int | None = None
        self.next = 0

    def add(self, first: int, data: np.ndarray | memoryview | bytes) -> None:
        """Pages ``first, first+1, ...`` (all non-zero) with their bytes; call in increasing page order."""
        if self.start is not None and first != self.next:
            self._close()
        if self.start is None:
            self.start = first
        self.h.update(data)
        self.next = first + len(data) // PAGE

    def _close(self) -> None:
        assert self.start is not None
        self.h.update(struct.pack("<QQ", self.start, self.next - self.start))
        self.start = None

    def hexdigest(self) -> str:
        """The digest (closing the last run)."""
        if self.start is not None:
            self._close()
        return "sha256-pages:" + self.h.hexdigest()


def write_memory(ram: np.ndarray, path: Path, parent: np.ndarray | None = None,
                 resident: np.ndarray | None = None) -> tuple[int, np.ndarray | None, str]:
    """Write RAM sparsely to ``path``: only non-zero pages (and, with ``parent``, only pages that differ from
    it). ``resident`` (``GuestMemory.resident_pages``): pages of anonymous RAM that are not resident were never
    written and are zero, so they are not even read (reading would fault each one in). Returns the number
    of pages written, for a diff the page mask, and the :class:`PageDigest`."""
    npages = ram.size // PAGE
    mask_all = np.zeros(npages, dtype=bool) if parent is not None else None
    nonzero = nonzero_pages(ram, resident) if parent is None else None
    written = 0
    digest = PageDigest()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    try:
        os.ftruncate(fd, ram.size)
        for off in range(0, ram.size, CHUNK):
            block = ram[off:off + CHUNK]
            if parent is not None:
                pb = parent[off:off + CHUNK]
                mask = (block.view(np.uint64) != pb.view(np.uint64)).reshape(-1, PAGE // 8).any(axis=1)
                assert mask_all is not None
                mask_all[off // PAGE: off // PAGE + mask.size] = mask
                keep = mask & _nonzero_pages(block)  # changed to zero: the mask says so, the hole reads zero
            else:
                assert nonzero is not None
                keep = nonzero[off // PAGE: off // PAGE + block.size // PAGE]
            for first, count in true_runs(keep):
                data = block[first * PAGE:(first + count) * PAGE]
                os.pwrite(fd, data, off + first * PAGE)
                digest.add(off // PAGE + first, data)
                written += count
        os.fsync(fd)
    finally:
        os.close(fd)
    return written, mask_all, digest.hexdigest()


def memory_digest(path: Path) -> str:
    """:class:`PageDigest` of a memory file, reading only where the file has data (holes are zero pages)."""
    digest = PageDigest()
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
                end = os.lseek(fd, start, os.SEEK_HOLE)
            except OSError:  # no more data (ENXIO) or no SEEK_DATA: the rest is holes / read it all
                if pos == 0 and not hasattr(os, "SEEK_DATA"):
                    start, end = 0, size
                else:
                    break
            start -= start % PAGE
            for off in range(start, end, CHUNK):
                n = min(CHUNK, end - off)
                n += (-n) % PAGE
                buf = os.pread(fd, n, off)
                if len(buf) % PAGE:
                    buf += bytes(PAGE - len(buf) % PAGE)
                block = np.frombuffer(buf, np.uint8)
                for first, count in true_runs(_nonzero_pages(block)):
                    digest.add(off // PAGE + first, block[first * PAGE:(first + count) * PAGE])
            pos = end
    finally:
        os.close(fd)
    return digest.hexdigest()


def write_memory_zstd(ram: np.ndarray, path: Path, level: int = 3) -> int:
    """Write RAM compressed with zstd (zero pages cost next to nothing); returns the compressed size."""
    import zstandard

    cctx = zstandard.ZstdCompressor(level=level, threads=-1)
    with open(path, "xb") as f:
        with cctx.stream_writer(f, size=ram.size, closefd=False) as w:
            for off in range(0, ram.size, CHUNK):
                w.write(ram[off:off + CHUNK])
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o444)
    return path.stat().st_size


def save(machine: Any, dest: str | os.PathLike[str], *, name: str | None = None, compress: bool = False,
         parent: str | os.PathLike[str] | None = None, extra: dict | None = None) -> dict:
    """Write a snapshot of ``machine`` (paused, or not started) to the new directory ``dest``.

    The bundle is written beside ``dest`` and renamed into place when complete, so ``dest`` is either
    absent or a whole snapshot. ``parent``: store only the pages that differ from that snapshot's memory.
    ``extra`` goes into the manifest (the disks taken with it). Returns the manifest.
    """
    dest = Path(dest)
    if dest.exists():
        raise SnapshotError(f"snapshot {dest} already exists")
    if compress and parent is not None:
        raise SnapshotError("a diff snapshot is stored sparse, not compressed")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    t0 = time.monotonic()
    try:
        state = machine.save_state()
        (tmp / STATE).write_text(json.dumps(state, separators=(",", ":")))
        mem = machine.mem
        ram = mem.array[: mem.size]
        mem_info: dict[str, Any] = {"base": mem.base, "size": mem.size}
        parent_rel = None
        if parent is not None:
            ppath = Path(parent)
            pman = read_manifest(ppath)
            if pman["memory"]["size"] != mem.size or pman["memory"]["base"] != mem.base:
                raise SnapshotError(f"parent snapshot {ppath} has another RAM layout")
            pram = load_memory_array(ppath, pman)
            written, mask, mdigest = write_memory(ram, tmp / MEMORY, pram)
            assert mask is not None
            (tmp / PAGES).write_bytes(np.packbits(mask, bitorder="little").tobytes())
            parent_rel = os.path.relpath(ppath.resolve(), os.path.abspath(dest))  # relocatable with its parent
            mem_info.update(encoding="diff", file=MEMORY, pages=written, changed=int(mask.sum()),
                            parent=parent_rel, digest=mdigest)
        elif compress:
            csize = write_memory_zstd(ram, tmp / MEMORY_ZST)
            mem_info.update(encoding="zstd", file=MEMORY_ZST, compressed=csize)
        else:
            written, _, mdigest = write_memory(ram, tmp / MEMORY, resident=mem.resident_pages())
            mem_info.update(encoding="sparse", file=MEMORY, pages=written, digest=mdigest)
        # the memory file is checked by its page digest (only its data is read), the others whole
        files = {f.name: _sha256_file(f) for f in sorted(tmp.iterdir()) if f.name != MEMORY}
        cfg = machine.cfg.to_dict()
        manifest = {"format": FORMAT, "version": VERSION, "name": name or dest.name,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "vm": machine.vm.name or None, "machine": cfg, "memory": mem_info, "files": files,
                    **(extra or {})}
        manifest["checksum"] = _manifest_sum(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        _fsync_dir(tmp)
        os.rename(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest["seconds"] = round(time.monotonic() - t0, 3)
    return manifest


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _manifest_sum(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k not in ("checksum", "seconds")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ------------------------------------------------------------------------------------------- reading
def read_manifest(path: str | os.PathLike[str]) -> dict:
    """The manifest of the snapshot at ``path``, checked: format, version, its own checksum, the fields
    restore needs."""
    p = Path(path)
    mf = p / MANIFEST
    if not p.is_dir():
        raise SnapshotError(f"no snapshot at {p}" + (" (a file, not a snapshot directory)" if p.exists() else ""))
    try:
        manifest = json.loads(mf.read_text())
    except FileNotFoundError:
        raise SnapshotError(f"{p}: no {MANIFEST}: not a virtkit snapshot (or an unfinished one)") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise SnapshotError(f"{mf}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SnapshotError(f"{p}: not a virtkit snapshot (format {manifest.get('format')!r})"
                            if isinstance(manifest, dict) else f"{mf}: not a virtkit snapshot manifest")
    if manifest.get("version") != VERSION:
        raise SnapshotError(f"{p}: snapshot format version {manifest.get('version')!r}; this virtkit reads "
                            f"version {VERSION}")
    if manifest.get("checksum") != _manifest_sum(manifest):
        raise SnapshotError(f"{mf}: checksum mismatch: the manifest was changed or damaged")
    mem = manifest.get("memory")
    if (not isinstance(mem, dict) or mem.get("encoding") not in ("sparse", "zstd", "diff")
            or not isinstance(mem.get("size"), int) or not isinstance(mem.get("base"), int)
            or not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("machine"), dict)):
        raise SnapshotError(f"{mf}: incomplete manifest")
    return manifest


def verify(path: str | os.PathLike[str], manifest: dict | None = None, memory: bool = True) -> None:
    """Check every file of the snapshot against its recorded checksum (``memory=False``: all but the
    memory, which is the slow part); parents of a diff snapshot too."""
    p = Path(path)
    manifest = manifest or read_manifest(p)
    for fname, digest in manifest["files"].items():
        if not memory and fname in (MEMORY, MEMORY_ZST):
            continue
        f = p / fname
        if not f.is_file():
            raise SnapshotError(f"{p}: {fname} is missing")
        if _sha256_file(f) != digest:
            raise SnapshotError(f"{p}: {fname} is corrupt (checksum mismatch)")
    info = manifest["memory"]
    size = info["size"]
    if info["encoding"] in ("sparse", "diff"):
        f = p / MEMORY
        if not f.is_file():
            raise SnapshotError(f"{p}: {MEMORY} is missing")
        if f.stat().st_size != size:
            raise SnapshotError(f"{p}: {MEMORY} is truncated ({f.stat().st_size} of {size} bytes)")
        if memory and memory_digest(f) != info.get("digest"):
            raise SnapshotError(f"{p}: {MEMORY} is corrupt (checksum mismatch)")
    if info["encoding"] == "diff":
        verify(parent_of(p, manifest), memory=memory)


def parent_of(path: Path, manifest: dict) -> Path:
    """The parent snapshot of a diff snapshot (its path is stored relative to the snapshot)."""
    rel = manifest["memory"].get("parent")
    if not isinstance(rel, str):
        raise SnapshotError(f"{path}: diff snapshot without a parent")
    parent = (path / rel).resolve()
    if not (parent / MANIFEST).exists():
        raise SnapshotError(f"{path}: its parent snapshot {parent} is missing")
    return parent


def read_state(path: str | os.PathLike[str], manifest: dict) -> dict:
    """The engine and device records (checked against the manifest's checksum)."""
    f = Path(path) / STATE
    try:
        data = f.read_bytes()
    except FileNotFoundError:
        raise SnapshotError(f"{path}: {STATE} is missing") from None
    if hashlib.sha256(data).hexdigest() != manifest["files"].get(STATE):
        raise SnapshotError(f"{path}: {STATE} is corrupt (checksum mismatch)")
    try:
        state = json.loads(data)
    except ValueError as err:
        raise SnapshotError(f"{path}: {STATE} is not valid JSON ({err})") from None
    if not isinstance(state, dict) or not isinstance(state.get("engine"), dict) \
            or not isinstance(state.get("devices"), dict):
        raise SnapshotError(f"{path}: {STATE} lacks the engine or device records")
    return state


def _layers(path: Path, manifest: dict) -> list[tuple[Path, dict]]:
    """The chain base-first: [(path, manifest) of the full snapshot, then each diff on top]."""
    chain = [(path, manifest)]
    seen = {path.resolve()}
    while chain[-1][1]["memory"]["encoding"] == "diff":
        p = parent_of(*chain[-1])
        if p.resolve() in seen:
            raise SnapshotError(f"{path}: its chain of parents loops at {p}")
        seen.add(p.resolve())
        chain.append((p, read_manifest(p)))
    return chain[::-1]


def load_memory(mem: Any, path: str | os.PathLike[str], manifest: dict) -> None:
    """Put the snapshot's memory into ``mem`` (a GuestMemory of the same size): a sparse base is mapped
    copy-on-write, a compressed one decompressed, diff layers copied on top."""
    p = Path(path)
    for lp, lman in _layers(p, manifest):
        info = lman["memory"]
        if info["size"] != mem.size or info["base"] != mem.base:
            raise SnapshotError(f"{lp}: RAM of {info['size']} bytes at {info['base']:#x}, the machine has "
                                f"{mem.size} at {mem.base:#x}")
        enc = info["encoding"]
        if enc == "sparse":
            f = lp / MEMORY
            if not f.is_file() or f.stat().st_size != mem.size:
                raise SnapshotError(f"{lp}: {MEMORY} is missing or truncated")
            mem.map_file(str(f))
        elif enc == "zstd":
            _decompress_into(lp / MEMORY_ZST, mem)
        else:
            _apply_diff(lp, mem)


def _decompress_into(f: Path, mem: Any) -> None:
    import zstandard

    ram = mem.array
    try:
        with open(f, "rb") as src, zstandard.ZstdDecompressor().stream_reader(src) as r:
            view = memoryview(ram)[: mem.size]
            got = 0
            while got < mem.size:
                n = r.readinto(view[got:got + CHUNK])
                if n == 0:
                    break
                got += n
    except FileNotFoundError:
        raise SnapshotError(f"{f} is missing") from None
    except zstandard.ZstdError as err:
        raise SnapshotError(f"{f}: corrupt compressed memory ({err})") from None
    if got != mem.size:
        raise SnapshotError(f"{f}: compressed memory ends after {got} of {mem.size} bytes")
    if mem.on_write is not None:
        mem.on_write(0, mem.size)


def _apply_diff(lp: Path, mem: Any) -> None:
    npages = mem.size // PAGE
    bits = (lp / PAGES).read_bytes() if (lp / PAGES).exists() else b""
    if len(bits) != (npages + 7) // 8:
        raise SnapshotError(f"{lp}: {PAGES} is missing or has the wrong size")
    mask = np.unpackbits(np.frombuffer(bits, np.uint8), bitorder="little")[:npages].astype(bool)
    f = lp / MEMORY
    if not f.is_file() or f.stat().st_size != mem.size:
        raise SnapshotError(f"{lp}: {MEMORY} is missing or truncated")
    with open(f, "rb") as src:
        mm = mmap.mmap(src.fileno(), mem.size, prot=mmap.PROT_READ)
        try:
            layer = np.frombuffer(mm, np.uint8)
            for first, count in true_runs(mask):
                a, b = first * PAGE, (first + count) * PAGE
                mem.array[a:b] = layer[a:b]
            del layer
        finally:
            mm.close()
    if mem.on_write is not None:
        mem.on_write(0, mem.size)


def load_memory_array(path: Path, manifest: dict) -> np.ndarray:
    """The snapshot's whole memory as an array (for diffing a child against it)."""
    from virtkit.machine.memory import GuestMemory

    info = manifest["memory"]
    mem = GuestMemory(info["size"], info["base"])
    load_memory(mem, path, manifest)
    return mem.array[: mem.size]


def info(path: str | os.PathLike[str]) -> dict:
    """What ``virtkit snapshot info`` shows: the manifest and the files' sizes on disk."""
    p = Path(path)
    manifest = read_manifest(p)
    on_disk = 0
    for f in p.iterdir():
        st = f.stat()
        on_disk += st.st_blocks * 512
    return {**manifest, "path": str(p), "disk_usage": on_disk}


def list_snapshots(root: Path | None = None) -> list[dict]:
    """Every snapshot under ``root`` (default :func:`snapshot_root`), unreadable ones with their error."""
    root = root or snapshot_root()
    out = []
    if not root.is_dir():
        return out
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or not p.is_dir():
            continue
        try:
            out.append(info(p))
        except SnapshotError as err:
            out.append({"name": p.name, "path": str(p), "error": str(err)})
    return out


def delete(path: str | os.PathLike[str]) -> None:
    """Remove a snapshot; refused while another snapshot in the same directory is a diff on top of it."""
    p = Path(path)
    read_manifest(p)
    for other in list_snapshots(p.parent):
        if "error" in other or other["memory"]["encoding"] != "diff":
            continue
        try:
            if parent_of(Path(other["path"]), other).resolve() == p.resolve():
                raise SnapshotError(f"snapshot {other['name']} is a diff on top of {p.name}: delete it first")
        except SnapshotError as err:
            if "diff on top" in str(err):
                raise
    shutil.rmtree(p)


# ------------------------------------------------------------------------------------------- restore
def restore(path: str | os.PathLike[str], console: Any = None, *, name: str | None = None,
            verify_memory: bool = True, changes: dict | None = None) -> Any:
    """A new machine in the snapshot's state, ready to run: built from the saved config without reading
    any image (RAM comes from the snapshot), memory mapped copy-on-write, every record restored.

    ``changes`` are MachineConfig fields to override (a clone's name and NICs). ``verify_memory=False``
    skips hashing the memory file (the other files are always checked).
    """
    from virtkit.machine.builder import Builder
    from virtkit.machine.config import MachineConfig
    from virtkit.machine.console import ConsoleHub

    p = Path(path)
    manifest = read_manifest(p)
    verify(p, manifest, memory=verify_memory)
    state = read_state(p, manifest)
    cfg = MachineConfig.from_dict(manifest["machine"], "snapshot machine")
    if name is not None:
        cfg.name = name
    for k, v in (changes or {}).items():
        setattr(cfg, k, v)
    hub = console if isinstance(console, ConsoleHub) else ConsoleHub()
    if callable(console) and not isinstance(console, ConsoleHub):
        hub.sinks.append(console)
    m = Builder(cfg, hub, restoring=True).build()
    try:
        load_memory(m.mem, p, manifest)
        m.restore_state(state)
        m.new_generation()  # a restored snapshot may run beside its original, or rewind it: a new generation
    except BaseException:
        m.vm.close()
        raise
    m.announce()  # as after a migration: the switch learns where the (restored or cloned) MAC lives
    return m


def restore_into(machine: Any, path: str | os.PathLike[str], verify_memory: bool = False) -> float:
    """Put a machine that exists already (paused, or not started; same board, RAM and devices) into the
    snapshot's state; returns the seconds it took (the in-process restore of bench/snapshot.py)."""
    t0 = time.perf_counter()
    p = Path(path)
    manifest = read_manifest(p)
    verify(p, manifest, memory=verify_memory)
    state = read_state(p, manifest)
    load_memory(machine.mem, p, manifest)
    machine.restore_state(state)
    machine.new_generation()
    return time.perf_counter() - t0
