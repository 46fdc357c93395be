"""What format a disk image file is in, by its magic numbers, and what virtkit does with it.

virtkit reads and writes raw and qcow2 (version 3). Probing only *accepts* qcow2: a file that looks like
another known image format (VMDK, VDI, VHD, VHDX, QED, qcow2 version 2, ...) is refused with the
``qemu-img convert`` line that would turn it into qcow2, because using it as raw bytes would hand the
guest the container's headers instead of its disk (give ``format=raw`` to do that on purpose). Any
other file is raw.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from virtkit.storage.backend import BlockError


@dataclass(frozen=True)
class Probe:
    """A probe result: ``name`` (qcow2, raw, vmdk...), a human ``title``, and whether virtkit opens it."""

    name: str
    title: str
    supported: bool
    qemu_format: str = ""  # qemu-img's -f name for a conversion


def probe(path: str) -> Probe:
    """The format of the file at ``path`` (BlockError when it cannot be read)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise BlockError(f"disk image {path!r} does not exist") from None
    except OSError as err:
        raise BlockError(f"cannot open disk image {path!r}: {err.strerror}") from None
    try:
        head = os.pread(fd, 4096, 0)
        size = os.lseek(fd, 0, os.SEEK_END)
        tail = os.pread(fd, 512, size - 512) if size >= 512 else b""
    finally:
        os.close(fd)
    return probe_bytes(head, tail)


def probe_bytes(head: bytes, tail: bytes = b"") -> Probe:
    """:func:`probe` on the first 4 KiB and the last 512 bytes of a file."""
    if head[:4] == b"QFI\xfb" and len(head) >= 8:
        version = struct.unpack(">I", head[4:8])[0]
        if version == 3:
            return Probe("qcow2", "qcow2", True, "qcow2")
        if version == 2:
            return Probe("qcow2v2", "a qcow2 version 2 (compat=0.10) image", False, "qcow2")
        return Probe("qcow", f"a qcow version {version} image", False, "qcow" if version == 1 else "qcow2")
    if head[:4] == b"QED\x00":
        return Probe("qed", "a QED image", False, "qed")
    if head[:4] == b"KDMV" or head[:4] == b"COWD" or head[:21] == b"# Disk DescriptorFile":
        return Probe("vmdk", "a VMDK image", False, "vmdk")
    if len(head) >= 0x44 and struct.unpack("<I", head[0x40:0x44])[0] == 0xBEDA107F:
        return Probe("vdi", "a VDI (VirtualBox) image", False, "vdi")
    if head[:8] == b"vhdxfile":
        return Probe("vhdx", "a VHDX (Hyper-V) image", False, "vhdx")
    if head[:8] == b"conectix" or tail[:8] == b"conectix":
        return Probe("vhd", "a VHD (Virtual PC) image", False, "vpc")
    if head[:6] == b"LUKS\xba\xbe":
        return Probe("luks", "a LUKS encrypted volume", False, "luks")
    if head[:16] in (b"WithoutFreeSpace", b"WithouFreSpacExt"):
        return Probe("parallels", "a Parallels image", False, "parallels")
    if tail[:4] == b"koly":
        return Probe("dmg", "a DMG (Apple disk image)", False, "dmg")
    return Probe("raw", "raw", True, "raw")


def refusal(path: str, p: Probe) -> str:
    """The one-line error for a file in a format virtkit does not open, with the conversion that would help."""
    stem = os.path.splitext(path)[0]
    if p.name == "qcow2v2":
        fix = f"`qemu-img amend -f qcow2 -o compat=1.1 {path}`"
    else:
        fix = f"`qemu-img convert -f {p.qemu_format} -O qcow2 {path} {stem}.qcow2`"
    return (f"disk image {path!r} is {p.title}: virtkit reads raw and qcow2 (version 3); convert it with {fix}, "
            "or give format=raw to use the file's bytes as they are")
