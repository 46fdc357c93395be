"""On-disk formats of a storage pool: the device label and the checksummed metadata document.

Every physical device starts with a 4 KiB label (magic, pool and device UUIDs, extent size) so a
device is recognised even when its path changes. The pool's metadata (devices, chunks, volumes)
is a JSON document preceded by a header line carrying a sequence number, the body length and its
SHA-256. It is kept in two alternating slot files, each replaced atomically (write temp, fsync,
rename, fsync dir): a torn or corrupt copy is detected and the previous good one is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virtkit.errors import VirtkitError

META_VERSION = 1
META_MAGIC = "virtkit-pool-metadata"
SLOTS = ("metadata.0", "metadata.1")
MAX_META_BYTES = 256 << 20

LABEL_MAGIC = b"VKPOOLPV"
LABEL_VERSION = 1
LABEL_SIZE = 4096
DATA_START = 1 << 20  # first extent starts 1 MiB into the device, like LVM's default pe_start
_LABEL = struct.Struct("<8sIQQQ16s16s64s")  # magic, version, extent, data_start, pe_count, pool, dev, name


class PoolError(VirtkitError):
    """A pool or volume operation that cannot be done (bad name, no space, device in use...)."""


class MetadataError(PoolError):
    """Pool metadata that is missing, corrupt, or written by a newer virtkit."""


# --------------------------------------------------------------------------- device label


@dataclass
class Label:
    """The identity block at the start of each physical device of a pool."""

    pool_uuid: str
    dev_uuid: str
    extent_size: int
    data_start: int
    pe_count: int
    pool_name: str

    def pack(self) -> bytes:
        """Serialize to a LABEL_SIZE block: the fields, their CRC32, zero padding."""
        body = _LABEL.pack(
            LABEL_MAGIC,
            LABEL_VERSION,
            self.extent_size,
            self.data_start,
            self.pe_count,
            uuid.UUID(self.pool_uuid).bytes,
            uuid.UUID(self.dev_uuid).bytes,
            self.pool_name.encode()[:64],
        )
        body += struct.pack("<I", zlib.crc32(body))
        return body.ljust(LABEL_SIZE, b"\0")


def unpack_label(raw: bytes) -> Label | None:
    """Parse a label block; None when there is no pool label, MetadataError when it is damaged."""
    if len(raw) < _LABEL.size + 4 or raw[:8] != LABEL_MAGIC:
        return None
    body = raw[: _LABEL.size]
    (crc,) = struct.unpack_from("<I", raw, _LABEL.size)
    if zlib.crc32(body) != crc:
        raise MetadataError("device label checksum mismatch (damaged label)")
    magic, version, extent, data_start, pe_count, pool_b, dev_b, name_b = _LABEL.unpack(body)
    if version != LABEL_VERSION:
        raise MetadataError(f"device label version {version} not supported (this virtkit knows {LABEL_VERSION})")
    return Label(
        pool_uuid=str(uuid.UUID(bytes=pool_b)),
        dev_uuid=str(uuid.UUID(bytes=dev_b)),
        extent_size=extent,
        data_start=data_start,
        pe_count=pe_count,
        pool_name=name_b.rstrip(b"\0").decode(errors="replace"),
    )


def read_label(fd: int) -> Label | None:
    """Read and parse the label of an open device."""
    return unpack_label(os.pread(fd, LABEL_SIZE, 0))


# --------------------------------------------------------------------------- metadata document


def encode_metadata(body: dict[str, Any]) -> bytes:
    """Serialize a metadata body: one JSON header line (seq, length, sha256) then the JSON body."""
    data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    header = {
        "magic": META_MAGIC,
        "version": body["version"],
        "seq": body["seq"],
        "length": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    return json.dumps(header, sort_keys=True).encode() + b"\n" + data


def decode_metadata(raw: bytes, where: str = "metadata") -> dict[str, Any]:
    """Parse and verify one metadata copy; MetadataError with a one-line reason otherwise."""
    nl = raw.find(b"\n", 0, 4096)
    if nl < 0:
        raise MetadataError(f"{where}: no header line (not pool metadata or truncated)")
    try:
        header = json.loads(raw[:nl])
    except (ValueError, UnicodeDecodeError):
        raise MetadataError(f"{where}: header is not valid JSON") from None
    if not isinstance(header, dict) or header.get("magic") != META_MAGIC:
        raise MetadataError(f"{where}: bad magic (not virtkit pool metadata)")
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise MetadataError(f"{where}: header has no version")
    if version > META_VERSION or version < 1:
        raise MetadataError(f"{where}: metadata version {version} not supported (this virtkit knows {META_VERSION})")
    length, digest, seq = header.get("length"), header.get("sha256"), header.get("seq")
    if not isinstance(length, int) or not isinstance(digest, str) or not isinstance(seq, int):
        raise MetadataError(f"{where}: header lacks length/sha256/seq")
    data = raw[nl + 1 :]
    if len(data) != length:
        raise MetadataError(f"{where}: body is {len(data)} bytes, header says {length} (truncated or appended)")
    if hashlib.sha256(data).hexdigest() != digest:
        raise MetadataError(f"{where}: checksum mismatch (corrupt metadata)")
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise MetadataError(f"{where}: body is not valid JSON") from None
    if not isinstance(body, dict) or body.get("seq") != seq or body.get("version") != version:
        raise MetadataError(f"{where}: body does not match its header")
    return body


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_slot(pool_dir: Path, body: dict[str, Any]) -> None:
    """Atomically replace the slot of ``body['seq']`` (the older of the two) with ``body``."""
    raw = encode_metadata(body)
    target = pool_dir / SLOTS[body["seq"] % 2]
    tmp = pool_dir / (target.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        mv = memoryview(raw)
        while mv:
            mv = mv[os.write(fd, mv) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    _fsync_dir(pool_dir)


@dataclass
class LoadResult:
    """The newest valid metadata body and what was wrong with the other copies."""

    body: dict[str, Any]
    problems: list[str]  # one line per corrupt/unreadable slot that was skipped
    bad_slots: list[str]  # file names of newer-but-corrupt slots (preserved before overwrite)


def load_slots(pool_dir: Path) -> LoadResult:
    """Read both slots and return the valid copy with the highest sequence number."""
    good: list[dict[str, Any]] = []
    problems: list[str] = []
    bad: list[str] = []
    present = 0
    for name in SLOTS:
        path = pool_dir / name
        try:
            if path.stat().st_size > MAX_META_BYTES:
                raise MetadataError(f"{name}: larger than {MAX_META_BYTES} bytes")
            raw = path.read_bytes()
        except FileNotFoundError:
            continue
        except MetadataError as err:
            present += 1
            problems.append(str(err))
            bad.append(name)
            continue
        except OSError as err:
            present += 1
            problems.append(f"{name}: unreadable ({err.strerror})")
            bad.append(name)
            continue
        present += 1
        try:
            good.append(decode_metadata(raw, name))
        except MetadataError as err:
            problems.append(str(err))
            bad.append(name)
    if present == 0:
        raise MetadataError(f"no pool metadata in {pool_dir} (not a pool, or it was deleted)")
    if not good:
        raise MetadataError(f"pool metadata in {pool_dir} is unusable: " + "; ".join(problems))
    best = max(good, key=lambda b: b["seq"])
    return LoadResult(best, problems, bad)
