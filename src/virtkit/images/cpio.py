"""A writer (and a small reader) for the ``newc`` cpio format Linux unpacks as an initramfs.

Format (see the kernel's Documentation/driver-api/early-userspace/buffer-format.rst): each member
is a 110-byte ASCII header ``070701`` + 13 eight-digit hex fields, the NUL-terminated name padded
to a multiple of 4 bytes, then the data padded to 4; the archive ends with a ``TRAILER!!!`` member.
We write it ourselves so images are reproducible (fixed mtimes, inode numbers and owners) and
need no root to create device nodes.
"""

from __future__ import annotations

import gzip
import io
import stat
from dataclasses import dataclass
from typing import BinaryIO

from virtkit.errors import ImageError

MAGIC = b"070701"
HEADER_LEN = 110
TRAILER = "TRAILER!!!"
#: Bumped when the bytes this module writes change (part of the initramfs cache key).
FORMAT_VERSION = 1
MAX_NAME = 4095  # PATH_MAX - 1: the kernel refuses longer names
MAX_FIELD = 0xFFFFFFFF


class CpioError(ImageError):
    """A member that cannot be written (bad path, mode, device number...) or a malformed archive."""


def _normalize(path: str) -> str:
    """Validate an archive path and return it without a leading '/' (the kernel unpacks relative to /)."""
    if not isinstance(path, str):
        raise CpioError(f"cpio: path must be a string, not {type(path).__name__}")
    if "\0" in path:
        raise CpioError(f"cpio: path {path!r} contains a NUL byte")
    name = path.strip("/")
    if name == "":
        raise CpioError(f"cpio: empty path {path!r} (the root directory exists implicitly)")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise CpioError(f"cpio: path {path!r} has an empty, '.' or '..' component")
    if len(name.encode()) > MAX_NAME:
        raise CpioError(f"cpio: path {path[:40]!r}... is longer than {MAX_NAME} bytes")
    return name


def _check_perm(path: str, mode: int) -> int:
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o7777:
        raise CpioError(f"cpio: {path}: permission bits {mode!r} out of range (0..0o7777)")
    return mode


@dataclass(frozen=True)
class Member:
    """One archive member as read back by :func:`read_cpio`."""

    name: str
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    data: bytes
    rdevmajor: int
    rdevminor: int

    @property
    def kind(self) -> str:
        """'file', 'dir', 'symlink', 'char', 'block', 'fifo' or 'other'."""
        fmt = stat.S_IFMT(self.mode)
        return {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFCHR: "char",
                stat.S_IFBLK: "block", stat.S_IFIFO: "fifo"}.get(fmt, "other")


class CpioWriter:
    """Write a newc archive member by member; parents must be added before their children.

    Owners default to root, mtimes to 0 (reproducible). Each path may appear once.
    """

    def __init__(self, out: BinaryIO, mtime: int = 0) -> None:
        if not 0 <= mtime <= MAX_FIELD:
            raise CpioError(f"cpio: mtime {mtime} out of range")
        self.out = out
        self.mtime = mtime
        self.ino = 300000  # arbitrary start; the kernel only uses inode numbers to find hard links
        self.names: set[str] = set()
        self.dirs: set[str] = set()
        self.closed = False

    def _header(self, name: str, mode: int, nlink: int, size: int, uid: int, gid: int,
                rmajor: int = 0, rminor: int = 0) -> bytes:
        for label, value in (("uid", uid), ("gid", gid), ("size", size), ("major", rmajor), ("minor", rminor)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_FIELD:
                raise CpioError(f"cpio: {name}: {label} {value!r} out of range (0..{MAX_FIELD})")
        self.ino += 1
        encoded = name.encode()
        fields = (self.ino, mode, uid, gid, nlink, self.mtime, size, 0, 0, rmajor, rminor, len(encoded) + 1, 0)
        head = MAGIC + b"".join(b"%08X" % f for f in fields) + encoded + b"\0"
        return head + b"\0" * (-len(head) % 4)

    def _add(self, path: str, mode: int, data: bytes, nlink: int, uid: int, gid: int,
             rmajor: int = 0, rminor: int = 0) -> None:
        if self.closed:
            raise CpioError("cpio: archive already closed")
        name = _normalize(path)
        if name in self.names:
            raise CpioError(f"cpio: duplicate path {name!r}")
        parent = name.rpartition("/")[0]
        if parent and parent not in self.dirs:
            raise CpioError(f"cpio: {name}: parent directory {parent!r} not added first")
        header = self._header(name, mode, nlink, len(data), uid, gid, rmajor, rminor)
        self.out.write(header)
        self.out.write(data)
        self.out.write(b"\0" * (-len(data) % 4))
        self.names.add(name)

    def add_dir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        """Add a directory."""
        name = _normalize(path)
        self._add(name, stat.S_IFDIR | _check_perm(name, mode), b"", 2, uid, gid)
        self.dirs.add(name)

    def add_file(self, path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        """Add a regular file with the given contents."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise CpioError(f"cpio: {path}: file data must be bytes, not {type(data).__name__}")
        self._add(path, stat.S_IFREG | _check_perm(path, mode), bytes(data), 1, uid, gid)

    def add_symlink(self, path: str, target: str, uid: int = 0, gid: int = 0) -> None:
        """Add a symbolic link (the target is stored as the member's data)."""
        if not isinstance(target, str) or target == "" or "\0" in target:
            raise CpioError(f"cpio: {path}: symlink target {target!r} must be a non-empty string without NUL")
        self._add(path, stat.S_IFLNK | 0o777, target.encode(), 1, uid, gid)

    def add_device(self, path: str, kind: str, major: int, minor: int, mode: int = 0o600,
                   uid: int = 0, gid: int = 0) -> None:
        """Add a character ('c') or block ('b') device node: no root needed, the kernel creates it."""
        if kind not in ("c", "b"):
            raise CpioError(f"cpio: {path}: device kind {kind!r} must be 'c' or 'b'")
        for label, value, limit in (("major", major, 0xFFF), ("minor", minor, 0xFFFFF)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
                raise CpioError(f"cpio: {path}: device {label} {value!r} out of range (0..{limit})")
        fmt = stat.S_IFCHR if kind == "c" else stat.S_IFBLK
        self._add(path, fmt | _check_perm(path, mode), b"", 1, uid, gid, major, minor)

    def close(self) -> None:
        """Write the trailer; the archive is complete after this."""
        if self.closed:
            return
        self.out.write(self._header(TRAILER, 0, 1, 0, 0, 0))
        # pad the archive to a 512-byte block like GNU cpio does (the kernel ignores trailing zeros)
        pos = self.out.tell() if self.out.seekable() else None
        if pos is not None:
            self.out.write(b"\0" * (-pos % 512))
        self.closed = True

    def __enter__(self) -> CpioWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def read_cpio(data: bytes) -> list[Member]:
    """Parse a newc archive (optionally gzip-compressed) into its members, stopping at the trailer."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise CpioError(f"cpio: bad gzip stream: {err}") from err
    members: list[Member] = []
    pos = 0
    while True:
        head = data[pos:pos + HEADER_LEN]
        if len(head) < HEADER_LEN:
            raise CpioError(f"cpio: truncated header at offset {pos} (no {TRAILER} member)")
        if head[:6] != MAGIC:
            raise CpioError(f"cpio: bad magic {head[:6]!r} at offset {pos} (only newc 070701 is supported)")
        try:
            f = [int(head[6 + 8 * i: 14 + 8 * i], 16) for i in range(13)]
        except ValueError as err:
            raise CpioError(f"cpio: non-hex header field at offset {pos}") from err
        _ino, mode, uid, gid, nlink, mtime, size, _dmaj, _dmin, rmaj, rmin, namesize, _check = f
        if namesize == 0:
            raise CpioError(f"cpio: zero name size at offset {pos}")
        name_end = pos + HEADER_LEN + namesize
        if name_end > len(data):
            raise CpioError(f"cpio: name runs past end of archive at offset {pos}")
        raw = data[pos + HEADER_LEN:name_end]
        if raw[-1:] != b"\0":
            raise CpioError(f"cpio: name not NUL-terminated at offset {pos}")
        name = raw[:-1].decode(errors="replace")
        dstart = name_end + (-name_end % 4)
        dend = dstart + size
        if dend > len(data):
            raise CpioError(f"cpio: {name}: data runs past end of archive ({size} bytes)")
        if name == TRAILER:
            return members
        members.append(Member(name, mode, uid, gid, nlink, mtime, bytes(data[dstart:dend]), rmaj, rmin))
        pos = dend + (-dend % 4)


def gzip_bytes(data: bytes) -> bytes:
    """Gzip with a zero mtime and no file name, so identical input gives identical output."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        gz.write(data)
    return buf.getvalue()
