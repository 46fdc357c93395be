"""qemu-img's verbs on virtkit's images: info, convert (and, with the storage issue, resize, rebase, commit...).

Library calls behind ``virtkit disk``: each works on any disk :func:`virtkit.storage.open_disk` opens (raw
files, qcow2 images, pool volumes) and writes images QEMU's tools read back.
"""

from __future__ import annotations

import os

import numpy as np

from virtkit.storage import open_disk
from virtkit.storage.backend import BlockBackend, BlockError, RawFile
from virtkit.storage.qcow2 import (
    COMPAT_LAZY_REFCOUNTS,
    INCOMPAT_CORRUPT,
    INCOMPAT_DIRTY,
    Qcow2,
    Qcow2Error,
    probe_format,
)


def image_info(path: str) -> dict:
    """What ``qemu-img info`` shows: format, sizes, cluster size, backing chain, snapshots."""
    fmt = probe_format(path)
    st = os.stat(path)
    info: dict = {"filename": path, "format": fmt, "disk_size": st.st_blocks * 512}
    if fmt == "raw":
        r = RawFile(path, read_only=True)
        try:
            info["virtual_size"] = r.size
        finally:
            r.close()
        return info
    with Qcow2(path, read_only=True) as q:
        info.update({
            "virtual_size": q.size, "cluster_size": q.cluster_size, "version": q.version,
            "refcount_bits": 1 << q.refcount_order, "lazy_refcounts": bool(q.compatible & COMPAT_LAZY_REFCOUNTS),
            "dirty": bool(q.incompatible & INCOMPAT_DIRTY), "corrupt": bool(q.incompatible & INCOMPAT_CORRUPT),
            "backing_file": q.backing_file, "backing_format": q.backing_format,
            "snapshots": [{"id": s.id, "name": s.name, "vm_state_size": s.vm_state_size, "disk_size": s.disk_size,
                           "date": s.date_sec + s.date_nsec / 1e9, "vm_clock_nsec": s.vm_clock_nsec}
                          for s in q.snapshots],
        })
        chain = []
        b = q.backing
        while b is not None:
            chain.append({"filename": b.path, "format": "qcow2" if isinstance(b, Qcow2) else "raw",
                          "virtual_size": b.size})
            b = getattr(b, "backing", None)
        info["backing_chain"] = chain
    return info


def _nonzero_runs(buf: memoryview, gran: int) -> list[tuple[int, int]]:
    """Byte runs ``(start, end)`` of ``buf`` that contain non-zero data, at ``gran``-byte granularity."""
    n = len(buf)
    whole = n - n % gran
    runs: list[tuple[int, int]] = []
    if whole:
        arr = np.frombuffer(buf[:whole], dtype=np.uint64 if gran % 8 == 0 else np.uint8).reshape(whole // gran, -1)
        nz = arr.any(axis=1)
        idx = np.flatnonzero(np.diff(np.concatenate(([0], nz.view(np.int8), [0]))))
        runs = [(int(a) * gran, int(b) * gran) for a, b in zip(idx[::2], idx[1::2], strict=True)]
    if whole < n and any(buf[whole:]):
        if runs and runs[-1][1] == whole:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((whole, n))
    return runs


def convert(src: str, dst: str, out_format: str = "qcow2", cluster_size: int = 65536,
            progress=None, chunk: int = 8 << 20) -> dict:
    """Copy ``src`` (raw or qcow2, flattening its backing chain) into a new ``dst`` image.

    Zero regions are skipped, so qcow2->qcow2 compacts. ``progress(done, total)`` is called
    after each chunk. Returns ``{"bytes": size, "written": bytes actually written}``.
    """
    if out_format not in ("qcow2", "raw"):
        raise Qcow2Error(f"unknown output format {out_format!r} (qcow2 or raw)")
    if os.path.exists(dst) and os.path.realpath(dst) == os.path.realpath(src):
        raise Qcow2Error("source and destination are the same file")
    s = open_disk(src, read_only=True)
    written = 0
    try:
        size = s.size
        if out_format == "qcow2":
            Qcow2.create(dst, size, cluster_size=cluster_size)
            d: BlockBackend = Qcow2(dst)
            gran = cluster_size
        else:
            try:
                with open(dst, "wb") as f:
                    f.truncate(size)
            except OSError as err:
                raise BlockError(f"cannot create {dst!r}: {err.strerror}") from None
            d = RawFile(dst)
            gran = 4096
        try:
            from concurrent.futures import ThreadPoolExecutor

            bufs = [memoryview(bytearray(chunk)) for _ in range(2)]

            def load(pos: int, mv: memoryview) -> tuple[int, list[tuple[int, memoryview]]]:
                """Read one chunk (skipping holes) and cut it into non-zero runs: runs in a helper thread."""
                n = min(chunk, size - pos)
                extents = s.block_status(pos, n) if isinstance(s, Qcow2) else [(pos, n, "data")]
                runs = []
                for eoff, elen, kind in extents:
                    if kind == "zero":
                        continue
                    seg = mv[eoff - pos:eoff - pos + elen]
                    s.readinto(eoff, seg)
                    runs += [(eoff + a, seg[a:b]) for a, b in _nonzero_runs(seg, gran)]
                return pos + n, runs

            with ThreadPoolExecutor(1) as pool:  # read chunk i+1 while chunk i is written
                pending = pool.submit(load, 0, bufs[0]) if size else None
                k = 0
                while pending is not None:
                    done, runs = pending.result()
                    k ^= 1
                    pending = pool.submit(load, done, bufs[k]) if done < size else None
                    for off, data in runs:
                        d.write(off, data)
                        written += len(data)
                    if progress:
                        progress(done, size)
            d.flush()
        finally:
            d.close()
    finally:
        s.close()
    return {"bytes": size, "written": written}
