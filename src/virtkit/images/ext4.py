"""ext4 disk images for tests and guests: ``mke2fs -t ext4 -d DIR`` (e2fsprogs), no root, no loop mounts."""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

from virtkit.errors import ImageError
from virtkit.images.cache import require_program

_SIZE = re.compile(r"^(\d+)([KMG]?)(i?B)?$", re.I)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
MIN_SIZE = 1 << 20


def parse_size(size: int | str) -> int:
    """A byte count from an int or a string like ``64M``, ``512K``, ``1G`` (binary units)."""
    if isinstance(size, bool):
        raise ImageError(f"ext4: size {size!r} is not a size")
    if isinstance(size, int):
        n = size
    elif isinstance(size, str):
        m = _SIZE.match(size.strip())
        if not m:
            raise ImageError(f"ext4: size {size!r} is not a size (examples: 64M, 1G, 1048576)")
        n = int(m.group(1)) * _UNITS[m.group(2).upper()]
    else:
        raise ImageError(f"ext4: size {size!r} is not a size")
    if n < MIN_SIZE:
        raise ImageError(f"ext4: size {n} bytes is too small (at least 1M)")
    return n


def _check_rel(name: str) -> Path:
    if not isinstance(name, str) or name.strip("/") == "" or "\0" in name:
        raise ImageError(f"ext4: bad file name {name!r}")
    parts = name.strip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ImageError(f"ext4: file name {name!r} has an empty, '.' or '..' component")
    return Path(*parts)


def make_ext4(path: str | Path, size: int | str, files: dict[str, bytes | str] | None = None,
              label: str = "virtkit") -> Path:
    """Create an ext4 image file of ``size`` at ``path`` holding ``files`` ({path in fs: contents}).

    The image is written next to ``path`` and renamed into place, so a failure leaves nothing behind.
    """
    require_program("mke2fs", "e2fsprogs", "ext4")
    nbytes = parse_size(size)
    path = Path(path)
    files = dict(files or {})
    entries = [(_check_rel(name), data) for name, data in files.items()]
    for rel, data in entries:
        if not isinstance(data, bytes | bytearray | str):
            raise ImageError(f"ext4: contents of {str(rel)!r} must be bytes or str, not {type(data).__name__}")
    if not path.parent.is_dir():
        raise ImageError(f"ext4: directory {path.parent} does not exist")
    with tempfile.TemporaryDirectory(prefix="virtkit-ext4-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        for rel, data in entries:
            target = root / rel
            if target.exists() and target.is_dir():
                raise ImageError(f"ext4: {str(rel)!r} is both a file and a directory")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError) as err:
                raise ImageError(f"ext4: {str(rel)!r}: a parent is also given as a file") from err
            target.write_bytes(data.encode() if isinstance(data, str) else bytes(data))
        tmp_img = path.with_name(f".{path.name}.tmp")
        tmp_img.unlink(missing_ok=True)
        with open(tmp_img, "wb") as f:
            f.truncate(nbytes)
        proc = subprocess.run(
            ["mke2fs", "-q", "-F", "-t", "ext4", "-L", label, "-E", "root_owner=0:0", "-d", str(root),
             str(tmp_img)],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            tmp_img.unlink(missing_ok=True)
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise ImageError(f"ext4: mke2fs failed: {msg[-1] if msg else proc.returncode}")
        tmp_img.rename(path)
    return path


def read_ext4_file(image: str | Path, name: str) -> bytes:
    """Read one file out of an ext4 image with ``debugfs`` (e2fsprogs), no mount needed."""
    require_program("debugfs", "e2fsprogs", "ext4")
    rel = _check_rel(name)
    proc = subprocess.run(["debugfs", "-R", f"cat /{rel}", str(image)], capture_output=True, check=False)
    err = proc.stderr.decode(errors="replace")
    if proc.returncode != 0 or "File not found" in err:
        raise ImageError(f"ext4: cannot read /{rel} from {image}: {err.strip().splitlines()[-1] if err else ''}")
    return proc.stdout
