"""The one ELF64 parser: PT_LOAD segments, entry point and symbols of firmware, kernels and programs.

Boards load firmware and kernels with it, bare-metal programs report through symbols found with it.
Every field read from the file is bounds-checked (the image may be hostile or truncated): a malformed
ELF raises :class:`virtkit.errors.ImageError` with a one-line reason naming the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from virtkit.errors import ImageError
from virtkit.machine.memory import GuestMemory

EM_RISCV = 243
EM_X86_64 = 62
MACHINES = {EM_RISCV: "RISC-V", EM_X86_64: "x86-64", 3: "i386", 40: "ARM", 183: "AArch64", 8: "MIPS", 21: "PowerPC64"}
ELF_MAGIC = b"\x7fELF"
PT_LOAD = 1
SHT_SYMTAB = 2


@dataclass
class ElfImage:
    """A parsed ELF: entry point, loadable segments (paddr, file bytes, memsz) and symbols."""

    entry: int
    segments: list[tuple[int, bytes, int]] = field(default_factory=list)
    symbols: dict[str, int] = field(default_factory=dict)


def _unpack(fmt: str, data: bytes, off: int, what: str) -> tuple:
    size = struct.calcsize(fmt)
    if off < 0 or off + size > len(data):
        raise ImageError(f"truncated ELF: {what} at offset {off:#x} is past the end of the file ({len(data)} bytes)")
    return struct.unpack_from(fmt, data, off)


def is_elf(data: bytes) -> bool:
    """Whether ``data`` starts like an ELF file."""
    return data[:4] == ELF_MAGIC


def parse_elf(data: bytes, name: str = "ELF", machine: int = EM_RISCV) -> ElfImage:
    """Parse and validate a little-endian ELF64 executable for ``machine`` (RISC-V by default)."""
    if len(data) < 64:
        raise ImageError(f"{name}: not an ELF file (only {len(data)} bytes)")
    if data[:4] != b"\x7fELF":
        raise ImageError(f"{name}: not an ELF file (bad magic {data[:4]!r})")
    if data[4] != 2:
        raise ImageError(f"{name}: not a 64-bit ELF (class {data[4]})")
    if data[5] != 1:
        raise ImageError(f"{name}: not a little-endian ELF")
    (e_type, e_machine, _ver, entry, phoff, shoff, _flags, _ehsize, phentsize, phnum, shentsize, shnum,
     _shstrndx) = _unpack("<HHIQQQIHHHHHH", data, 16, "ELF header")
    if e_machine != machine:
        raise ImageError(f"{name}: an ELF for {MACHINES.get(e_machine, f'machine {e_machine}')}, "
                         f"not {MACHINES.get(machine, machine)}")
    if e_type not in (2, 3):
        raise ImageError(f"{name}: ELF type {e_type} is not an executable (a relocatable object?)")
    if phnum == 0:
        raise ImageError(f"{name}: ELF has no program headers")
    if phentsize < 56:
        raise ImageError(f"{name}: bad program header size {phentsize}")
    img = ElfImage(entry=entry)
    for i in range(phnum):
        p_type, _pf, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, _align = _unpack(
            "<IIQQQQQQ", data, phoff + i * phentsize, f"program header {i}")
        if p_type != PT_LOAD or p_memsz == 0:
            continue
        if p_filesz > p_memsz:
            raise ImageError(f"{name}: segment {i} file size {p_filesz:#x} exceeds its memory size {p_memsz:#x}")
        if p_offset + p_filesz > len(data):
            raise ImageError(f"{name}: truncated ELF: segment {i} data [{p_offset:#x}, +{p_filesz:#x}) past the end")
        img.segments.append((p_paddr, bytes(data[p_offset:p_offset + p_filesz]), p_memsz))
    if not img.segments:
        raise ImageError(f"{name}: ELF has no loadable segments")
    if shoff and shnum and shentsize >= 64:
        img.symbols = _symbols(data, shoff, shnum, shentsize, name)
    return img


def _symbols(data: bytes, shoff: int, shnum: int, shentsize: int, name: str) -> dict[str, int]:
    secs = [_unpack("<IIQQQQIIQQ", data, shoff + i * shentsize, f"section header {i}") for i in range(shnum)]
    out: dict[str, int] = {}
    for sec in secs:
        if sec[1] != SHT_SYMTAB:
            continue
        off, size, link, entsize = sec[4], sec[5], sec[6], sec[9] or 24
        if link >= len(secs) or off + size > len(data):
            raise ImageError(f"{name}: truncated ELF: symbol table past the end of the file")
        stroff, strsize = secs[link][4], secs[link][5]
        if stroff + strsize > len(data):
            raise ImageError(f"{name}: truncated ELF: string table past the end of the file")
        strtab = data[stroff:stroff + strsize]
        for k in range(size // entsize):
            st_name, _info, _other, _shndx, value, _sz = _unpack("<IBBHQQ", data, off + k * entsize, "symbol")
            if st_name and st_name < len(strtab):
                end = strtab.find(b"\0", st_name)
                sym = strtab[st_name:end if end >= 0 else len(strtab)].decode("ascii", "replace")
                out.setdefault(sym, value)
    return out


def load_elf(source: str | Path | bytes, mem: GuestMemory) -> ElfImage:
    """Parse an ELF file (path or bytes) and copy its segments into ``mem`` (zero-filling .bss)."""
    if isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), "ELF"
    else:
        name = str(source)
        try:
            data = Path(source).read_bytes()
        except OSError as err:
            raise ImageError(f"cannot read {name}: {err.strerror}") from None
    img = parse_elf(data, name)
    for paddr, _body, memsz in img.segments:
        if not mem.contains(paddr, memsz):
            raise ImageError(f"{name}: segment [{paddr:#x}, +{memsz:#x}) is outside RAM "
                             f"[{mem.base:#x}, {mem.end:#x})")
    for paddr, body, memsz in img.segments:
        mem.write(paddr, body)
        if memsz > len(body):
            mem.write(paddr + len(body), bytes(memsz - len(body)))
    return img
