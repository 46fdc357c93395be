"""x86 boot protocols: what a loader writes into guest RAM and which registers it sets, for the three kinds
of kernel the microVM takes, recognised by their headers (no flag needed):

- **Multiboot v1** (``0x1BADB002`` in the first 8 KiB; ELF32 or the a.out kludge): 32-bit protected mode,
  ``eax = 0x2BADB002``, ``ebx`` = the Multiboot information (memory map, command line, the initrd as a module);
- **PVH** (an ELF ``vmlinux`` with the ``XEN_ELFNOTE_PHYS32_ENTRY`` note): 32-bit protected mode,
  ``ebx`` = ``hvm_start_info`` (command line, memory map, the initrd as a module);
- **Linux bzImage** (``HdrS`` at 0x202, boot protocol 2.12 or later): the 64-bit entry at load address +
  0x200, long mode with identity-mapped page tables, ``rsi`` = ``boot_params`` (the zero page: setup header,
  e820 map, command line, initrd).

Each loader returns a :class:`BootPlan`: the bytes to put where, and the vCPU state to start from."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from virtkit.errors import ConfigError

MULTIBOOT_MAGIC = 0x1BADB002
MULTIBOOT_BOOTLOADER_MAGIC = 0x2BADB002
PVH_START_MAGIC = 0x336EC578
XEN_ELFNOTE_PHYS32_ENTRY = 18

KERNEL_ADDR = 0x10_0000  # 1 MiB
GDT_ADDR = 0x500
INFO_ADDR = 0x7000  # boot_params / hvm_start_info / multiboot_info
MMAP_ADDR = 0x8000  # memory map entries
PML4_ADDR = 0x9000  # identity page tables for the 64-bit entry: PML4, PDPT, 4 page directories (4 GiB)
CMDLINE_ADDR = 0x2_0000
CMDLINE_MAX = 0x1_0000
LOW_RAM_END = 0x9_FC00  # below: usable; up to 1 MiB: the EBDA, video memory and the BIOS area
E820_RAM, E820_RESERVED = 1, 2

#: the boot GDT: null, null, 64-bit code (0x10), data (0x18), 32-bit code (0x20): Linux's __BOOT_CS/DS
GDT = [0, 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF, 0x00CF9A000000FFFF]


@dataclass
class Seg:
    """A segment register's visible selector and hidden descriptor."""

    selector: int
    type: int
    l: int = 0  # noqa: E741 (the descriptor bit's name)
    db: int = 1


@dataclass
class BootPlan:
    """What the loader decided: ``writes`` (address, bytes), the entry state of the boot vCPU."""

    protocol: str
    entry: int
    writes: list[tuple[int, bytes]] = field(default_factory=list)
    regs: dict[str, int] = field(default_factory=dict)
    long_mode: bool = False  # paging and long mode on (bzImage's 64-bit entry), else 32-bit flat, paging off
    kernel_end: int = 0
    notes: list[str] = field(default_factory=list)


def e820_map(memory: int) -> list[tuple[int, int, int]]:
    """The RAM map the guest is told: low RAM, the legacy hole, RAM from 1 MiB to the end."""
    return [(0, LOW_RAM_END, E820_RAM), (LOW_RAM_END, 0x10_0000 - LOW_RAM_END, E820_RESERVED),
            (0x10_0000, memory - 0x10_0000, E820_RAM)]


def kind_of(data: bytes) -> str:
    """``bzimage``, ``multiboot``, ``pvh`` or ``elf`` (an ELF with no PVH note), else ConfigError."""
    if len(data) >= 0x208 and data[0x202:0x206] == b"HdrS" and data[0x1FE:0x200] == b"\x55\xaa":
        return "bzimage"
    if _multiboot_header(data) is not None:
        return "multiboot"
    if data[:4] == b"\x7fELF":
        return "pvh" if _pvh_entry(data) is not None else "elf"
    raise ConfigError("kernel: not a Linux bzImage, a Multiboot kernel or an ELF vmlinux with a PVH entry "
                      f"(it starts with {data[:8].hex()})")


# -- Multiboot v1 ----------------------------------------------------------------------------------------------
def _multiboot_header(data: bytes) -> int | None:
    for off in range(0, min(len(data), 8192) - 11, 4):
        magic, flags, check = struct.unpack_from("<III", data, off)
        if magic == MULTIBOOT_MAGIC and (magic + flags + check) & 0xFFFFFFFF == 0:
            return off
    return None


def multiboot(data: bytes, memory: int, cmdline: str, initrd: bytes | None) -> BootPlan:
    """Load a Multiboot v1 kernel (the a.out kludge's addresses, or its ELF32 segments)."""
    off = _multiboot_header(data)
    assert off is not None
    # flags: bit 0 (modules page aligned) and bit 1 (memory information) are always honoured; bit 2 (a
    # video mode) cannot be: there is no video, the console is the 16550
    flags = struct.unpack_from("<I", data, off + 4)[0]
    plan = BootPlan("multiboot", 0)
    if flags & (1 << 16):
        if off + 32 > len(data):
            raise ConfigError("kernel: the Multiboot header is cut short")
        header_addr, load_addr, load_end, bss_end, entry = struct.unpack_from("<IIIII", data, off + 12)
        start = off - (header_addr - load_addr)
        if header_addr < load_addr or start < 0:
            raise ConfigError("kernel: Multiboot header_addr is below load_addr")
        size = (load_end - load_addr) if load_end else len(data) - start
        if size < 0 or start + size > len(data):
            raise ConfigError("kernel: Multiboot load_end_addr lies beyond the file")
        plan.writes.append((load_addr, data[start:start + size]))
        end = max(load_addr + size, bss_end or 0)
        if bss_end and bss_end > load_addr + size:
            plan.writes.append((load_addr + size, bytes(bss_end - load_addr - size)))
        plan.entry, plan.kernel_end = entry, end
    else:
        entry, segs = _elf_segments(data, want_class=1)
        for addr, chunk, memsz in segs:
            plan.writes.append((addr, chunk + bytes(memsz - len(chunk))))
        plan.entry = entry
        plan.kernel_end = max(a + m for a, _, m in segs)
    _check_fits(plan, memory)
    # the information structure
    mods_addr = MMAP_ADDR + 0x400
    info = bytearray(120)
    mem_upper = (memory - 0x10_0000) >> 10
    info_flags = 1 | (1 << 2) | (1 << 6) | (1 << 9)
    struct.pack_into("<III", info, 0, info_flags, 639, mem_upper)
    cmd = cmdline.encode() + b"\0"
    struct.pack_into("<I", info, 16, CMDLINE_ADDR)
    plan.writes.append((CMDLINE_ADDR, cmd))
    mm = b"".join(struct.pack("<IQQI", 20, base, length, kind) for base, length, kind in e820_map(memory))
    struct.pack_into("<II", info, 44, len(mm), MMAP_ADDR)
    plan.writes.append((MMAP_ADDR, mm))
    name_addr = mods_addr + 0x100
    plan.writes.append((name_addr, b"virtkit\0"))
    struct.pack_into("<I", info, 64, name_addr)
    if initrd:
        at = _initrd_addr(memory, len(initrd), plan.kernel_end)
        plan.writes.append((at, initrd))
        plan.writes.append((mods_addr, struct.pack("<IIII", at, at + len(initrd), CMDLINE_ADDR, 0)))
        info_flags |= 1 << 3
        struct.pack_into("<III", info, 0, info_flags, 639, mem_upper)
        struct.pack_into("<II", info, 20, 1, mods_addr)
    plan.writes.append((INFO_ADDR, bytes(info)))
    plan.regs = {"rax": MULTIBOOT_BOOTLOADER_MAGIC, "rbx": INFO_ADDR}
    return plan


# -- ELF and PVH -----------------------------------------------------------------------------------------------
def _elf_segments(data: bytes, want_class: int | None = None) -> tuple[int, list[tuple[int, bytes, int]]]:
    """(entry, [(physical address, file bytes, memory size)]) of an ELF's PT_LOAD segments."""
    if len(data) < 52 or data[:4] != b"\x7fELF":
        raise ConfigError("kernel: not an ELF file")
    cls = data[4]
    if want_class is not None and cls != want_class:
        raise ConfigError(f"kernel: a Multiboot ELF kernel must be ELF{32 if want_class == 1 else 64}")
    if data[5] != 1:
        raise ConfigError("kernel: a big-endian ELF is no x86 kernel")
    if cls == 1:
        entry, phoff = struct.unpack_from("<II", data, 24)
        phentsize, phnum = struct.unpack_from("<HH", data, 42)
        fmt = "<IIIIIIII"
    elif cls == 2:
        entry, phoff = struct.unpack_from("<QQ", data, 24)
        phentsize, phnum = struct.unpack_from("<HH", data, 54)
        fmt = "<IIQQQQQQ"
    else:
        raise ConfigError("kernel: unknown ELF class")
    machine = struct.unpack_from("<H", data, 18)[0]
    if machine not in (3, 62):
        raise ConfigError(f"kernel: an ELF for machine {machine}, not x86 (3) or x86-64 (62)")
    segs = []
    for i in range(phnum):
        o = phoff + i * phentsize
        if o + struct.calcsize(fmt) > len(data):
            raise ConfigError("kernel: ELF program headers lie beyond the file")
        if cls == 1:
            p_type, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, _f, _a = struct.unpack_from(fmt, data, o)
        else:
            p_type, _flags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, _a = struct.unpack_from(fmt, data, o)
        if p_type != 1 or p_memsz == 0:
            continue
        if p_filesz > p_memsz or p_offset + p_filesz > len(data):
            raise ConfigError(f"kernel: ELF segment {i} is larger than its file or its memory size")
        segs.append((p_paddr, data[p_offset:p_offset + p_filesz], p_memsz))
    if not segs:
        raise ConfigError("kernel: the ELF has no loadable segment")
    for a, (pa, _, ma) in enumerate(segs):
        for pb, _, mb in segs[a + 1:]:
            if pa < pb + mb and pb < pa + ma:
                raise ConfigError("kernel: ELF segments overlap")
    return entry, segs


def _pvh_entry(data: bytes) -> int | None:
    """The 32-bit entry of an ELF64 vmlinux's XEN_ELFNOTE_PHYS32_ENTRY note, or None."""
    if len(data) < 64 or data[4] != 2:
        return None
    phoff = struct.unpack_from("<Q", data, 32)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    for i in range(phnum):
        o = phoff + i * phentsize
        if o + 56 > len(data):
            return None
        p_type, _f, p_offset, _v, _p, p_filesz = struct.unpack_from("<IIQQQQ", data, o)
        if p_type != 4:  # PT_NOTE
            continue
        n, end = p_offset, min(p_offset + p_filesz, len(data))
        while n + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", data, n)
            name = data[n + 12:n + 12 + namesz].rstrip(b"\0")
            desc = n + 12 + ((namesz + 3) & ~3)
            if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY and descsz >= 4:
                return struct.unpack_from("<I", data, desc)[0]
            n = desc + ((descsz + 3) & ~3)
    return None


def pvh(data: bytes, memory: int, cmdline: str, initrd: bytes | None) -> BootPlan:
    """Load an ELF vmlinux at its physical addresses and enter it through its PVH note."""
    entry = _pvh_entry(data)
    assert entry is not None
    _, segs = _elf_segments(data)
    plan = BootPlan("pvh", entry)
    for addr, chunk, memsz in segs:
        plan.writes.append((addr, chunk + bytes(memsz - len(chunk))))
    plan.kernel_end = max(a + m for a, _, m in segs)
    _check_fits(plan, memory)
    plan.writes.append((CMDLINE_ADDR, cmdline.encode() + b"\0"))
    mm = b"".join(struct.pack("<QQII", base, length, kind, 0) for base, length, kind in e820_map(memory))
    plan.writes.append((MMAP_ADDR, mm))
    nmods, modlist = 0, 0
    if initrd:
        at = _initrd_addr(memory, len(initrd), plan.kernel_end)
        modlist = MMAP_ADDR + 0x400
        plan.writes += [(at, initrd), (modlist, struct.pack("<QQQQ", at, len(initrd), 0, 0))]
        nmods = 1
    info = struct.pack("<IIIIQQQQII", PVH_START_MAGIC, 1, 0, nmods, modlist, CMDLINE_ADDR, 0, MMAP_ADDR,
                       len(e820_map(memory)), 0)
    plan.writes.append((INFO_ADDR, info))
    plan.regs = {"rbx": INFO_ADDR}
    return plan


# -- Linux bzImage ---------------------------------------------------------------------------------------------
def bzimage(data: bytes, memory: int, cmdline: str, initrd: bytes | None) -> BootPlan:
    """Load a bzImage's protected-mode kernel at 1 MiB and enter its 64-bit entry (boot protocol >= 2.12)."""
    version = struct.unpack_from("<H", data, 0x206)[0]
    if version < 0x020C:
        raise ConfigError(f"kernel: bzImage boot protocol {version >> 8}.{version & 0xFF}: 2.12 or later needed "
                          "(the 64-bit entry)")
    xloadflags = struct.unpack_from("<H", data, 0x236)[0]
    if not xloadflags & 1:
        raise ConfigError("kernel: this bzImage has no 64-bit entry (XLF_KERNEL_64)")
    setup_sects = data[0x1F1] or 4
    pm_start = (setup_sects + 1) * 512
    if pm_start >= len(data):
        raise ConfigError("kernel: the bzImage is cut short (no protected-mode kernel after its setup)")
    kernel = data[pm_start:]
    init_size = struct.unpack_from("<I", data, 0x260)[0]
    plan = BootPlan("bzimage", KERNEL_ADDR + 0x200, long_mode=True)
    plan.writes.append((KERNEL_ADDR, kernel))
    plan.kernel_end = KERNEL_ADDR + max(len(kernel), init_size)
    _check_fits(plan, memory)
    cmd = cmdline.encode() + b"\0"
    cmdline_size = struct.unpack_from("<I", data, 0x238)[0] if version >= 0x0206 else 255
    if len(cmd) - 1 > max(cmdline_size, 255):
        raise ConfigError(f"cmdline: {len(cmd) - 1} bytes; this kernel takes at most {cmdline_size}")
    plan.writes.append((CMDLINE_ADDR, cmd))
    zero = bytearray(4096)
    hdr_end = 0x202 + data[0x201]
    zero[0x1F1:hdr_end] = data[0x1F1:hdr_end]
    zero[0x210] = 0xFF  # type_of_loader: undefined
    zero[0x211] |= 0x80 | 0x01  # loadflags: CAN_USE_HEAP, LOADED_HIGH
    struct.pack_into("<H", zero, 0x224, 0xFE00)  # heap_end_ptr
    struct.pack_into("<I", zero, 0x228, CMDLINE_ADDR)  # cmd_line_ptr
    struct.pack_into("<H", zero, 0x1FA, 0xFFFF)  # vid_mode: normal
    if initrd:
        limit = struct.unpack_from("<I", data, 0x22C)[0] or 0x37FFFFFF
        at = _initrd_addr(min(memory, limit + 1), len(initrd), plan.kernel_end)
        plan.writes.append((at, initrd))
        struct.pack_into("<II", zero, 0x218, at, len(initrd))
    e820 = e820_map(memory)
    zero[0x1E8] = len(e820)
    for i, (base, length, kind) in enumerate(e820):
        struct.pack_into("<QQI", zero, 0x2D0 + 20 * i, base, length, kind)
    plan.writes.append((INFO_ADDR, bytes(zero)))
    plan.writes.append((PML4_ADDR, identity_page_tables()))
    plan.regs = {"rsi": INFO_ADDR}
    return plan


def identity_page_tables() -> bytes:
    """PML4, one PDPT and four page directories of 2 MiB pages mapping the first 4 GiB 1:1 (at PML4_ADDR)."""
    out = bytearray(6 * 4096)
    struct.pack_into("<Q", out, 0, (PML4_ADDR + 0x1000) | 3)
    for i in range(4):
        struct.pack_into("<Q", out, 0x1000 + 8 * i, (PML4_ADDR + 0x2000 + i * 0x1000) | 3)
    for i in range(4 * 512):
        struct.pack_into("<Q", out, 0x2000 + 8 * i, (i << 21) | 0x83)  # present, writable, 2 MiB
    return bytes(out)


def gdt() -> bytes:
    """The boot GDT's bytes (at GDT_ADDR)."""
    return b"".join(struct.pack("<Q", d) for d in GDT)


# -- helpers ------------------------------------------------------------------------------------------------------
def _check_fits(plan: BootPlan, memory: int) -> None:
    for addr, chunk in plan.writes:
        if addr < 0x10_0000 and addr + len(chunk) > LOW_RAM_END and addr >= 0x9_0000:
            raise ConfigError(f"kernel: a segment at {addr:#x} lands in the legacy hole below 1 MiB")
        if addr + len(chunk) > memory:
            raise ConfigError(f"kernel: it needs RAM up to {addr + len(chunk):#x}; the VM has {memory:#x} "
                              "(give more --mem)")


def _initrd_addr(memory: int, size: int, kernel_end: int) -> int:
    """The initrd's place: as high in RAM as it fits (page aligned), above the kernel."""
    at = (memory - size) & ~0xFFF
    if at < ((kernel_end + 0xFFF) & ~0xFFF):
        raise ConfigError(f"initrd: {size} bytes do not fit in RAM above the kernel (give more --mem)")
    return at


def load(data: bytes, memory: int, cmdline: str, initrd: bytes | None) -> BootPlan:
    """The plan for ``data``, by the protocol its header says."""
    kind = kind_of(data)
    if kind == "elf":
        raise ConfigError("kernel: an ELF without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) or a Multiboot "
                          "header: build the kernel with CONFIG_PVH=y, or give its bzImage")
    return {"bzimage": bzimage, "multiboot": multiboot, "pvh": pvh}[kind](data, memory, cmdline, initrd)
