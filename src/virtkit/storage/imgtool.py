"""qemu-img's verbs on virtkit's images: info, convert, map, compare, measure, rebase, commit, resize, bench.

Library calls behind ``virtkit disk``: each works on any disk :func:`virtkit.storage.open_disk` opens (raw
files, qcow2 images, pool volumes) and writes images QEMU's tools read back.
"""

from __future__ import annotations

import json
import os

import numpy as np

from virtkit.storage import open_disk
from virtkit.storage.backend import BlockBackend, BlockError, RawFile
from virtkit.storage.bitmap import true_runs
from virtkit.storage.qcow2 import (
    COMPAT_LAZY_REFCOUNTS,
    INCOMPAT_CORRUPT,
    INCOMPAT_DIRTY,
    Qcow2,
    Qcow2Error,
)


def image_info(path: str, force_share: bool = False, fmt: str | None = None) -> dict:
    """What ``qemu-img info`` shows: format, sizes, cluster size, backing chain, snapshots. An image in another
    format (VMDK...) is reported by name; ``force_share`` (-U) looks at an image another process holds."""
    from virtkit.storage.formats import probe

    if fmt is None:
        p = probe(path)
        fmt = p.name if p.name in ("raw", "qcow2") else p.name
        if not p.supported:
            st = os.stat(path)
            return {"filename": path, "format": fmt, "disk_size": st.st_blocks * 512, "virtual_size": None,
                    "supported": False, "title": p.title}
    st = os.stat(path)
    info: dict = {"filename": path, "format": fmt, "disk_size": st.st_blocks * 512}
    if fmt == "raw":
        r = RawFile(path, read_only=True, force_share=force_share)
        try:
            info["virtual_size"] = r.size
        finally:
            r.close()
        return info
    with Qcow2(path, read_only=True, force_share=force_share) as q:
        info.update({
            "virtual_size": q.size, "cluster_size": q.cluster_size, "version": q.version,
            "refcount_bits": 1 << q.refcount_order, "lazy_refcounts": bool(q.compatible & COMPAT_LAZY_REFCOUNTS),
            "dirty": bool(q.incompatible & INCOMPAT_DIRTY), "corrupt": bool(q.incompatible & INCOMPAT_CORRUPT),
            "backing_file": q.backing_file, "backing_format": q.backing_format,
            "snapshots": [{"id": s.id, "name": s.name, "vm_state_size": s.vm_state_size, "disk_size": s.disk_size,
                           "date": s.date_sec + s.date_nsec / 1e9, "vm_clock_nsec": s.vm_clock_nsec}
                          for s in q.snapshots],
            "bitmaps": q.bitmap_list(),
        })
        chain = []
        b = q.backing
        while b is not None:
            chain.append({"filename": b.path, "format": "qcow2" if isinstance(b, Qcow2) else "raw",
                          "virtual_size": b.size})
            b = getattr(b, "backing", None)
        info["backing_chain"] = chain
    return info


def backing_chain_info(path: str, force_share: bool = False) -> list[dict]:
    """``info --backing-chain``: the info of the image and of every backing file, top first."""
    out = [image_info(path, force_share)]
    for b in out[0].get("backing_chain", []):
        out.append(image_info(b["filename"], force_share, b["format"]))
    return out


def qemu_info(info: dict) -> dict:
    """An :func:`image_info` dict in ``qemu-img info --output=json``'s shape."""
    out: dict = {"virtual-size": info.get("virtual_size"), "filename": info["filename"], "format": info["format"],
                 "actual-size": info["disk_size"], "dirty-flag": bool(info.get("dirty", False))}
    if info["format"] == "qcow2":
        out["cluster-size"] = info["cluster_size"]
        out["format-specific"] = {"type": "qcow2", "data": {
            "compat": "1.1", "compression-type": "zlib", "lazy-refcounts": info["lazy_refcounts"],
            "refcount-bits": info["refcount_bits"], "corrupt": info["corrupt"], "extended-l2": False}}
        if info.get("bitmaps"):
            out["format-specific"]["data"]["bitmaps"] = [
                {"flags": b["flags"], "name": b["name"], "granularity": b["granularity"]} for b in info["bitmaps"]]
        if info.get("backing_file"):
            out["backing-filename"] = info["backing_file"]
            out["full-backing-filename"] = info["backing_chain"][0]["filename"] if info["backing_chain"] else \
                info["backing_file"]
            if info.get("backing_format"):
                out["backing-filename-format"] = info["backing_format"]
        if info.get("snapshots"):
            out["snapshots"] = [{"id": s["id"], "name": s["name"], "vm-state-size": s["vm_state_size"],
                                 "date-sec": int(s["date"]), "date-nsec": int((s["date"] % 1) * 1e9),
                                 "vm-clock-sec": s["vm_clock_nsec"] // 10**9,
                                 "vm-clock-nsec": s["vm_clock_nsec"] % 10**9} for s in info["snapshots"]]
    return out


def _nonzero_runs(buf: memoryview, gran: int) -> list[tuple[int, int]]:
    """Byte runs ``(start, end)`` of ``buf`` that contain non-zero data, at ``gran``-byte granularity."""
    n = len(buf)
    whole = n - n % gran
    runs: list[tuple[int, int]] = []
    if whole:
        arr = np.frombuffer(buf[:whole], dtype=np.uint64 if gran % 8 == 0 else np.uint8).reshape(whole // gran, -1)
        runs = [(a * gran, (a + k) * gran) for a, k in true_runs(arr.any(axis=1))]
    if whole < n and any(buf[whole:]):
        if runs and runs[-1][1] == whole:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((whole, n))
    return runs


def convert(src: str, dst: str, out_format: str = "qcow2", cluster_size: int = 65536,
            progress=None, chunk: int = 8 << 20, src_format: str | None = None, force_share: bool = False,
            bitmaps: bool = False) -> dict:
    """Copy ``src`` (raw, qcow2 or a pool volume, flattening its backing chain) into a new ``dst`` image.

    The new image is written beside ``dst`` and renamed over it only when complete and flushed, and an existing
    ``dst`` another VM or process holds is refused before anything is written: killed at any point, ``dst`` is
    either as it was (absent, or the old image) or the complete copy. Zero regions are skipped, so qcow2->qcow2
    compacts. ``progress(done, total)`` is called after each chunk. ``bitmaps`` (qemu-img convert
    ``--bitmaps``) copies the source's persistent dirty bitmaps into a qcow2 ``dst``. Returns ``{"bytes",
    "written"}``.
    """
    from virtkit.storage.backend import replacing

    if out_format not in ("qcow2", "raw"):
        raise Qcow2Error(f"unknown output format {out_format!r} (qcow2 or raw)")
    if os.path.exists(dst) and os.path.realpath(dst) == os.path.realpath(src):
        raise Qcow2Error("source and destination are the same file")
    s = open_disk(src, read_only=True, fmt=src_format, force_share=force_share)
    carried: list = []
    if bitmaps:
        if out_format != "qcow2" or not isinstance(s, Qcow2):
            s.close()
            raise Qcow2Error("--bitmaps copies dirty bitmaps from a qcow2 image to a qcow2 image")
        try:
            carried = s.bitmap_copies()  # an inconsistent one is an error, as in QEMU
        except BaseException:
            s.close()
            raise
    written = 0
    try:
        size = s.size
        with replacing(dst) as tmp:
            if out_format == "qcow2":
                Qcow2.create(tmp, size, cluster_size=cluster_size)
                d: BlockBackend = Qcow2(tmp)
                gran = cluster_size
            else:
                try:
                    with open(tmp, "wb") as f:
                        f.truncate(size)
                except OSError as err:
                    raise BlockError(f"cannot create {dst!r}: {err.strerror}", err.errno) from None
                d = RawFile(tmp)
                gran = 4096
            try:
                written = _copy_data(s, d, size, gran, chunk, progress)
                if carried:  # after the data: the copy's own writes must not mark them
                    d.add_bitmaps(carried)
                d.flush()
            finally:
                d.close()
    finally:
        s.close()
    return {"bytes": size, "written": written}


def _copy_data(s: BlockBackend, d: BlockBackend, size: int, gran: int, chunk: int, progress) -> int:
    """Copy the non-zero data of ``s`` into ``d`` (reading chunk i+1 while chunk i is written)."""
    from concurrent.futures import ThreadPoolExecutor

    from virtkit.storage.backend import start_writeback

    written = 0
    bufs = [memoryview(bytearray(chunk)) for _ in range(2)]
    fd = getattr(d, "fd", -1)

    def load(pos: int, mv: memoryview) -> tuple[int, list[tuple[int, memoryview]]]:
        """Read one chunk (skipping holes) and cut it into non-zero runs: runs in a helper thread."""
        n = min(chunk, size - pos)
        if isinstance(s, Qcow2):
            extents = s.block_status(pos, n)
        else:
            extents = [(a, b, "zero" if kind == "zero" else "data") for a, b, kind, _ in _extents_here(s, pos, n)]
        runs = []
        for eoff, elen, kind in extents:
            if kind == "zero":
                continue
            seg = mv[eoff - pos:eoff - pos + elen]
            s.readinto(eoff, seg)
            runs += [(eoff + a, seg[a:b]) for a, b in _nonzero_runs(seg, gran)]
        return pos + n, runs

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(load, 0, bufs[0]) if size else None
        k = 0
        while pending is not None:
            done, runs = pending.result()
            k ^= 1
            pending = pool.submit(load, done, bufs[k]) if done < size else None
            for off, data in runs:
                d.write(off, data)
                written += len(data)
            if runs and fd >= 0:
                start_writeback(fd)
            if progress:
                progress(done, size)
    return written


# ---------------------------------------------------------------------------------------------- open helpers
def open_image(path: str, fmt: str | None = None, *, read_only: bool = True, force_share: bool = False) -> BlockBackend:
    """An image for a verb: ``fmt`` given or probed (foreign formats refused, as for VMs), QEMU-compatible locks;
    ``force_share`` (-U) reads an image another process holds."""
    return open_disk(path, read_only=read_only, fmt=fmt, force_share=force_share)


def _chain_of(b: BlockBackend) -> list[BlockBackend]:
    out = [b]
    while getattr(out[-1], "backing", None) is not None:
        out.append(out[-1].backing)  # type: ignore[attr-defined]
    return out


# ---------------------------------------------------------------------------------------------- map
def _extents_here(b: BlockBackend, offset: int, length: int) -> list[tuple[int, int, str, int | None]]:
    """What one image (not its backing files) says about ``[offset, offset+length)``: runs of
    (start, length, "data" | "zero" | "unallocated", host offset or None)."""
    end = min(offset + length, b.size)
    out: list[tuple[int, int, str, int | None]] = []
    if isinstance(b, Qcow2):
        from virtkit.storage.qcow2 import COMPRESSED, OFFSET_MASK, ZERO

        cb = b.cluster_bits
        pos = offset
        while pos < end:
            cl = pos >> cb
            t = b._l2_for_read(cl >> b.l2_bits)
            e = 0 if t is None else int(t[cl & ((1 << b.l2_bits) - 1)])
            n = min(end, (cl + 1) << cb) - pos
            host = e & OFFSET_MASK
            if e & ZERO and not e & COMPRESSED:
                kind, where = "zero", (host + (pos - (cl << cb)) if host else None)
            elif e & COMPRESSED:
                kind, where = "data", None
            elif host:
                kind, where = "data", host + (pos - (cl << cb))
            else:
                kind, where = "unallocated", None
            out.append((pos, n, kind, where))
            pos += n
        return out
    if not isinstance(b, RawFile):  # a pool volume: everything it has is data
        return [(offset, end - offset, "data", None)]
    return [(pos, n, "data" if data else "zero", pos) for pos, n, data in b.extents(offset, end - offset)]


def image_map(b: BlockBackend, start: int = 0, length: int | None = None) -> list[dict]:
    """``qemu-img map``: the image's ranges with the depth in the backing chain that holds them, whether they
    are present, read as zeros, hold data, and where (host offset in that image's file)."""
    chain = _chain_of(b)
    end = b.size if length is None else min(b.size, start + length)
    rows: list[dict] = []

    def walk(depth: int, lo: int, hi: int) -> None:
        img = chain[depth]
        size = img.size
        if lo >= size:  # a shorter backing file: beyond its end the image reads zeros
            rows.append({"start": lo, "length": hi - lo, "depth": depth, "present": False, "zero": True,
                         "data": False})
            return
        for s0, n, kind, where in _extents_here(img, lo, min(hi, size) - lo):
            if kind == "unallocated":
                if depth + 1 < len(chain):
                    walk(depth + 1, s0, s0 + n)
                else:
                    rows.append({"start": s0, "length": n, "depth": depth, "present": False, "zero": True,
                                 "data": False})
                continue
            row = {"start": s0, "length": n, "depth": depth, "present": True, "zero": kind == "zero",
                   "data": kind == "data"}
            if where is not None:
                row["offset"] = where
            rows.append(row)
        if hi > size:
            rows.append({"start": size, "length": hi - size, "depth": depth, "present": False, "zero": True,
                         "data": False})

    walk(0, start, end)
    merged: list[dict] = []
    for r in sorted(rows, key=lambda r: r["start"]):
        p = merged[-1] if merged else None
        if p is not None and all(p[k] == r[k] for k in ("depth", "present", "zero", "data")) and \
                p["start"] + p["length"] == r["start"] and ("offset" in p) == ("offset" in r) and \
                ("offset" not in p or p["offset"] + p["length"] == r["offset"]):
            p["length"] += r["length"]
        else:
            merged.append(dict(r))
    for r in merged:  # the file each mapped range lives in (human output)
        r["_file"] = chain[r["depth"]].path if hasattr(chain[r["depth"]], "path") else ""
    return merged


def map_json(rows: list[dict]) -> str:
    """``qemu-img map --output=json``'s exact text."""
    parts = []
    for r in rows:
        keys = ["start", "length", "depth", "present", "zero", "data"] + (["offset"] if "offset" in r else [])
        parts.append("{ " + ", ".join(f'"{k}": {json.dumps(r[k])}' for k in keys) + "}")
    return "[" + ",\n".join(parts) + "]\n"


def map_human(rows: list[dict]) -> str:
    """``qemu-img map``'s table: the ranges that are mapped to a file."""
    out = [f"{'Offset':<16}{'Length':<16}{'Mapped to':<16}File"]
    for r in rows:
        if r["data"] and "offset" in r:
            out.append(f"{_hex(r['start']):<16}{_hex(r['length']):<16}{_hex(r['offset']):<16}{r['_file']}")
    return "\n".join(out) + "\n"


def _hex(v: int) -> str:
    return "0" if v == 0 else f"{v:#x}"


# ---------------------------------------------------------------------------------------------- compare
class CompareResult:
    """``qemu-img compare``: ``identical``, or where and why not (``message`` as qemu-img prints it)."""

    def __init__(self, identical: bool, message: str, offset: int | None = None) -> None:
        self.identical, self.message, self.offset = identical, message, offset


def compare(a: BlockBackend, b: BlockBackend, strict: bool = False, chunk: int = 1 << 20,
            progress=None) -> CompareResult:
    """Compare the guest-visible content of two images (qemu-img's rules: a size difference is fine when the
    longer image reads zeros past the shorter one's end, unless ``strict``, which also compares allocation)."""
    if strict and a.size != b.size:
        return CompareResult(False, "Strict mode: Image size mismatch!")
    common = min(a.size, b.size)
    ba, bb = bytearray(chunk), bytearray(chunk)
    if strict:
        ma, mb = image_map(a, 0, common), image_map(b, 0, common)
        edges = sorted({r["start"] for r in ma} | {r["start"] for r in mb})
        for e in edges:
            ra = next(r for r in ma if r["start"] <= e < r["start"] + r["length"])
            rb = next(r for r in mb if r["start"] <= e < r["start"] + r["length"])
            if ra["present"] != rb["present"]:
                return CompareResult(False, f"Strict mode: Offset {e} block status mismatch!", e)
    pos = 0
    while pos < common:
        n = min(chunk, common - pos)
        va, vb = memoryview(ba)[:n], memoryview(bb)[:n]
        a.readinto(pos, va)
        b.readinto(pos, vb)
        if va != vb:
            x = np.frombuffer(va, np.uint8) != np.frombuffer(vb, np.uint8)
            first = pos + (int(np.argmax(x)) & ~511)
            return CompareResult(False, f"Content mismatch at offset {first}!", first)
        pos += n
        if progress:
            progress(pos, max(a.size, b.size))
    longer = a if a.size > b.size else b
    pos = common
    while pos < longer.size:
        n = min(chunk, longer.size - pos)
        v = memoryview(ba)[:n]
        longer.readinto(pos, v)
        arr = np.frombuffer(v, np.uint8)
        if arr.any():
            first = pos + (int(np.argmax(arr != 0)) & ~511)
            return CompareResult(False, f"Content mismatch at offset {first}!", first)
        pos += n
    return CompareResult(True, "Images are identical.")


# ---------------------------------------------------------------------------------------------- measure
def _refcount_metadata_size(clusters: int, cluster_size: int, refcount_order: int) -> int:
    """QEMU's qcow2_refcount_metadata_size: refcount blocks and table that count ``clusters`` and themselves."""
    per_table = cluster_size // 8
    per_block = cluster_size * 8 // (1 << refcount_order)
    table = blocks = n = 0
    while True:
        last = n
        blocks = -(-(clusters + table + blocks) // per_block)
        table = -(-blocks // per_table)
        n = clusters + blocks + table
        if n == last:
            return (blocks + table) * cluster_size


def qcow2_prealloc_size(virtual_size: int, cluster_size: int = 65536, refcount_order: int = 4) -> int:
    """QEMU's qcow2_calc_prealloc_size: a fully allocated image's file size (header, L1, L2, refcounts, data)."""
    aligned = -(-virtual_size // cluster_size) * cluster_size
    meta = cluster_size
    nl2e = aligned // cluster_size
    nl2e = -(-nl2e // (cluster_size // 8)) * (cluster_size // 8)
    meta += nl2e * 8
    nl1e = nl2e * 8 // cluster_size
    nl1e = -(-nl1e // (cluster_size // 8)) * (cluster_size // 8)
    meta += nl1e * 8
    meta += _refcount_metadata_size((meta + aligned) // cluster_size, cluster_size, refcount_order)
    return meta + aligned


def measure(out_format: str, size: int | None = None, src: BlockBackend | None = None,
            cluster_size: int = 65536) -> dict:
    """``qemu-img measure``: the file size a new image needs (``required``) and when fully allocated, for a
    given virtual size or for converting ``src`` (its data regions, zeros skipped)."""
    if out_format not in ("raw", "qcow2"):
        raise BlockError(f"measure: output format {out_format!r} is not raw or qcow2")
    if src is not None:
        size = src.size
    if size is None:
        raise BlockError("measure needs --size or an image")
    if out_format == "raw":
        return {"required": size, "fully-allocated": size}
    aligned = -(-size // cluster_size) * cluster_size
    required = 0
    if src is not None:
        for r in image_map(src):
            if r["data"] and not r["zero"]:
                lo = r["start"] - r["start"] % cluster_size
                hi = -(-(r["start"] + r["length"]) // cluster_size) * cluster_size
                required += hi - lo
        # adjacent runs in one cluster would count it twice: recount by clusters
        seen: set[int] = set()
        for r in image_map(src):
            if r["data"] and not r["zero"]:
                seen.update(range(r["start"] // cluster_size, -(-(r["start"] + r["length"]) // cluster_size)))
        required = len(seen) * cluster_size
    full = qcow2_prealloc_size(size, cluster_size)
    out = {"required": full - aligned + required, "fully-allocated": full}
    if src is not None and isinstance(src, Qcow2):
        out = {"bitmaps": 0, **out}
    return out


# ---------------------------------------------------------------------------------------------- chain changes
def rebase(path: str, backing: str | None, backing_fmt: str | None = None, unsafe: bool = False,
           progress=None, chunk: int = 1 << 20) -> None:
    """``qemu-img rebase``: make ``path`` use ``backing`` (or none) without changing what the guest sees.

    Safe mode copies into the image every range its old and new backing files read differently (where the image
    itself has no data), then switches the header; ``unsafe`` (-u) only switches the header. Killed half-way, the
    image still points at the old backing file and reads the same (the copied ranges equal it there)."""
    q = Qcow2(path)
    try:
        base_dir = os.path.dirname(os.path.abspath(path))
        new_b: BlockBackend | None = None
        if backing:
            bpath = backing if os.path.isabs(backing) else os.path.join(base_dir, backing)
            if os.path.realpath(bpath) == os.path.realpath(path):
                raise Qcow2Error(f"backing file loop: {path} cannot back itself")
            from virtkit.storage.qcow2 import open_backing

            new_b = open_backing(bpath, backing_fmt, [os.path.realpath(path)])
            backing_fmt = backing_fmt or ("qcow2" if isinstance(new_b, Qcow2) else "raw")
        try:
            if not unsafe:
                old_b = q.backing
                ba, bb = bytearray(chunk), bytearray(chunk)
                for r in image_map(q):
                    if r["depth"] == 0 and r["present"]:
                        continue  # the image's own data or zeros hide both backing files
                    pos, end = r["start"], r["start"] + r["length"]
                    while pos < end:
                        n = min(chunk, end - pos)
                        va, vb = memoryview(ba)[:n], memoryview(bb)[:n]
                        _read_or_zero(old_b, pos, va)
                        _read_or_zero(new_b, pos, vb)
                        if va != vb:
                            q.write(pos, va)
                        pos += n
                        if progress:
                            progress(pos, q.size)
                q.flush()
            q.set_backing(backing or None, backing_fmt if backing else None)
        finally:
            if new_b is not None:
                new_b.close()
    finally:
        q.close()


def _read_or_zero(b: BlockBackend | None, pos: int, out: memoryview) -> None:
    if b is None or pos >= b.size:
        out[:] = bytes(len(out))
        return
    n = min(len(out), b.size - pos)
    b.readinto(pos, out[:n])
    if n < len(out):
        out[n:] = bytes(len(out) - n)


def commit(path: str, base: str | None = None, drop: bool = True, progress=None, chunk: int = 1 << 20) -> str:
    """``qemu-img commit``: write what the image holds (and the images between it and ``base``) into its backing
    file (or ``base``, deeper in the chain); then, unless ``drop`` is off (-d), empty the image. Returns the base.

    The base is opened for writing with the image locks: a base another VM uses (even through another overlay)
    is refused. Killed half-way the image still holds all its data: it is emptied only after the base is flushed.
    """
    top = Qcow2(path)
    try:
        chain = _chain_of(top)
        if len(chain) < 2:
            raise Qcow2Error(f"{path} has no backing file to commit into")
        idx = 1
        if base:
            real = os.path.realpath(base)
            found = [i for i, b in enumerate(chain) if i and os.path.realpath(b.path) == real]
            if not found:
                raise Qcow2Error(f"{base} is not in the backing chain of {path}")
            idx = found[0]
        target = chain[idx]
        target_path, tfmt = target.path, ("qcow2" if isinstance(target, Qcow2) else "raw")
        rows = [r for r in image_map(top) if r["depth"] < idx and r["present"]]
        parent = chain[idx - 1]
        parent.backing.close()  # type: ignore[attr-defined]  (held read-only: reopened for writing below)
        parent.backing = None  # type: ignore[attr-defined]
        w = open_disk(target_path, fmt=tfmt)
        try:
            buf = bytearray(chunk)
            for r in rows:
                pos, end = r["start"], min(r["start"] + r["length"], w.size)
                while pos < end:
                    n = min(chunk, end - pos)
                    if r["zero"]:
                        w.write_zeroes(pos, n)
                    else:
                        v = memoryview(buf)[:n]
                        top.readinto(pos, v)
                        w.write(pos, v)
                    pos += n
                    if progress:
                        progress(pos, top.size)
            w.flush()
        finally:
            w.close()
        if drop:
            top.unmap_all()
        return target_path
    finally:
        top.close()


def resize(path: str, size_text: str, fmt: str | None = None, shrink: bool = False) -> int:
    """``qemu-img resize``: SIZE, +SIZE or -SIZE (bytes, K, M, G...); shrinking needs ``shrink``. Returns the
    new size. The image must not be in use (it is opened with the writer's locks)."""
    from virtkit.units import parse_size_change

    delta, relative = parse_size_change(size_text, what="size")
    b = open_image(path, fmt, read_only=False)
    try:
        new = b.size + delta if relative else delta
        if new < 0:
            raise BlockError(f"resize: {size_text} would make the size negative")
        if new < b.size and not shrink:
            raise BlockError("use --shrink to make an image smaller (the data past the new end is lost)")
        if isinstance(b, Qcow2):
            b.resize(new, shrink=shrink)
        elif isinstance(b, RawFile):
            os.ftruncate(b.fd, new)
            os.fsync(b.fd)
            b.size = new
        else:
            raise BlockError(f"resize: {path} is a pool volume: use `virtkit volume set POOL/VOL --size`")
        return new
    finally:
        b.close()


def bench(b: BlockBackend, *, count: int = 75000, depth: int = 64, size: int = 4096, offset: int = 0,
          step: int | None = None, write: bool = False, flush_interval: int = 0, pattern: int = 0xA5) -> dict:
    """``qemu-img bench``: ``count`` requests of ``size`` bytes from ``offset`` on, ``step`` apart (default
    ``size``), ``depth`` at a time (a thread pool), reads or writes; the seconds it took."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    step = size if step is None else step
    span = max(1, (b.size - offset - size) // step + 1) if b.size >= offset + size else 0
    if span <= 0:
        raise BlockError(f"bench: the image is smaller than offset {offset} + {size} bytes")
    data = bytes([pattern]) * size
    import threading

    # raw files take concurrent requests (pread/pwrite); a qcow2 image's metadata is one request at a time
    serial = threading.Lock() if not isinstance(b, RawFile) else None

    def one(i: int) -> None:
        pos = offset + (i % span) * step
        if serial is not None:
            serial.acquire()
        try:
            if write:
                b.write(pos, data)
                if flush_interval and i % flush_interval == flush_interval - 1:
                    b.flush()
            else:
                b.readinto(pos, bytearray(size))
        finally:
            if serial is not None:
                serial.release()

    t0 = time.perf_counter()
    if depth <= 1:
        for i in range(count):
            one(i)
    else:
        with ThreadPoolExecutor(min(depth, 64)) as pool:
            list(pool.map(one, range(count), chunksize=max(1, count // (depth * 4))))
    if write:
        b.flush()
    secs = time.perf_counter() - t0
    return {"requests": count, "bytes_each": size, "depth": depth, "write": write, "offset": offset, "step": step,
            "seconds": secs}
