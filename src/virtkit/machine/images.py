"""Recognising what a file is before a boot: kernels, initramfs archives, firmware, and what they are not.

A wrong file given as ``--initrd`` or ``--bios`` used to boot into a silent hang. Each check here reads
the magic numbers and refuses, with a message that says what the file looks like instead, anything
that cannot be what it is given as.
"""

from __future__ import annotations

import bz2
import lzma
import os
import zlib
from pathlib import Path

from virtkit.errors import ImageError

CPIO_MAGICS = (b"070701", b"070702", b"070707", b"\xc7\x71", b"\x71\xc7")
#: compressed initramfs formats Linux unpacks: (magic, name)
COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"\xfd7zXZ\x00", "xz"),
              (b"BZh", "bzip2"), (b"\x02\x21\x4c\x18", "lz4"), (b"\x89LZO", "lzo"), (b"\x5d\x00\x00", "lzma"))
RISCV_IMAGE_MAGIC2 = b"RSC\x05"


def read_image(path: str | os.PathLike[str], what: str) -> bytes:
    """The bytes of an image file; ImageError naming ``what`` when it is missing, not a file, empty or unreadable."""
    p = Path(path)
    if not p.exists():
        raise ImageError(f"{what} {str(p)!r} does not exist")
    if not p.is_file():
        raise ImageError(f"{what} {str(p)!r} is not a regular file")
    try:
        data = p.read_bytes()
    except OSError as err:
        raise ImageError(f"cannot read {what} {str(p)!r}: {err.strerror}") from None
    if not data:
        raise ImageError(f"{what} {str(p)!r} is empty")
    return data


def describe(data: bytes) -> str:
    """A short guess of what a file is ('a text file', 'an ELF for x86-64', 'a gzip archive', ...)."""
    from virtkit.machine.elf import MACHINES

    if data[:4] == b"\x7fELF":
        m = int.from_bytes(data[18:20], "little") if len(data) >= 20 else -1
        return f"an ELF file for {MACHINES.get(m, f'machine {m}')}"
    if len(data) >= 64 and data[56:60] == RISCV_IMAGE_MAGIC2:
        return "a RISC-V Linux kernel Image"
    if len(data) >= 0x206 and data[0x202:0x206] == b"HdrS":
        return "an x86 Linux bzImage"
    for magic, name in COMPRESSED:
        if data.startswith(magic):
            return f"a {name}-compressed file"
    if data.startswith(CPIO_MAGICS):
        return "a cpio archive"
    if len(data) >= 0x438 and data[0x438:0x43A] == b"\x53\xef":
        return "an ext2/3/4 file system image"
    if data[:4] == b"QFI\xfb":
        return "a qcow2 disk image"
    if data[:4] == b"\xd0\x0d\xfe\xed":
        return "a device tree blob"
    head = data[:4096]
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
    if head and printable / len(head) > 0.95:
        return "a text file"
    return "an unrecognised binary file"


def _decompressed_head(data: bytes, name: str) -> bytes | None:
    """The first bytes of a compressed initramfs, when the standard library can read its format."""
    try:
        if name == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[: 1 << 16], 512)
        if name in ("xz", "lzma"):
            return lzma.LZMADecompressor().decompress(data[: 1 << 16], 512)
        if name == "bzip2":
            return bz2.BZ2Decompressor().decompress(data[: 1 << 18])[:512]
    except (zlib.error, lzma.LZMAError, OSError, EOFError):
        return b""
    return None  # zstd, lz4, lzo: trust the magic


def check_initrd(data: bytes, path: str) -> None:
    """Refuse a file that is not an initramfs (a cpio archive, possibly gzip/zstd/xz/bzip2/lz4/lzo/lzma)."""
    if data.startswith(CPIO_MAGICS):
        return
    for magic, name in COMPRESSED:
        if data.startswith(magic):
            head = _decompressed_head(data, name)
            if head is None or head.startswith(CPIO_MAGICS):
                return
            inside = describe(head) if head else "unreadable data"
            raise ImageError(f"initrd {path!r} is a {name}-compressed file but holds {inside}, not a cpio archive")
    raise ImageError(f"initrd {path!r} is not an initramfs: it is {describe(data)} "
                     "(expected a cpio archive, possibly gzip/zstd/xz compressed)")


def check_firmware(data: bytes, path: str, max_raw: int) -> None:
    """Refuse a file that cannot be RISC-V firmware (an ELF for RISC-V, or a raw binary of at most ``max_raw``)."""
    kind = describe(data)
    if data[:4] == b"\x7fELF":
        if "RISC-V" not in kind:
            raise ImageError(f"firmware {path!r} is {kind}, not RISC-V firmware")
        return
    if kind != "an unrecognised binary file":
        hint = " (give a kernel with --kernel)" if "kernel" in kind else ""
        raise ImageError(f"firmware {path!r} is {kind}, not firmware{hint}")
    if len(data) > max_raw:
        raise ImageError(f"firmware {path!r} is {len(data)} bytes: larger than the {max_raw >> 20} MiB before the "
                         "kernel (is it really fw_jump.bin?)")
    word = int.from_bytes(data[:4], "little")
    if word in (0, 0xFFFF_FFFF):
        raise ImageError(f"firmware {path!r} does not start with an instruction (first word {word:#010x})")
