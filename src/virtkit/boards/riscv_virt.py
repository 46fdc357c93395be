"""The ``riscv64-virt`` board: QEMU's ``virt`` machine memory map, device tree and boot placement.

Memory map (as QEMU 7.2 ``hw/riscv/virt.c``)::

    0x0010_0000  sifive_test (poweroff / reboot)      0x0c00_0000  PLIC
    0x0010_1000  goldfish RTC (irq 11)                0x1000_0000  NS16550A UART0 (irq 10)
    0x0200_0000  CLINT (inside the CPU engine)        0x1000_1000 + 0x1000*i  virtio-mmio slot i (irq 1+i)
    0x8000_0000  RAM

Boot (like ``qemu-system-riscv64 -M virt -bios fw_jump.bin -kernel Image -initrd ...``): the
firmware is loaded at the start of RAM, the kernel at the next 2 MiB boundary (0x8020_0000, where
OpenSBI fw_jump jumps), the initrd half-way into RAM (at most 128 MiB after the kernel) and the
device tree at the top of RAM (below 3 GiB), 2 MiB aligned. Every hart starts at 0x8000_0000
with a0 = hart id and a1 = the device tree address (OpenSBI relocates it to FW_JUMP_FDT_ADDR).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virtkit.devices.goldfish_rtc import GoldfishRtc
from virtkit.devices.plic import Plic, plic_size
from virtkit.devices.sifive_test import SifiveTest
from virtkit.devices.uart16550 import Uart16550
from virtkit.devices.virtio.blk import VirtioBlk
from virtkit.devices.virtio.console import VirtioConsole
from virtkit.devices.virtio.device import VirtioDevice
from virtkit.devices.virtio.mmio import WINDOW, MmioTransport
from virtkit.devices.virtio.net import VirtioNet
from virtkit.devices.virtio.rng import VirtioRng
from virtkit.errors import ConfigError, ImageError
from virtkit.fdt import Fdt
from virtkit.machine.bus import Bus
from virtkit.machine.memory import GuestMemory
from virtkit.machine.vm import RunResult, Vm

MiB = 1 << 20
RAM_BASE = 0x8000_0000
TEST_BASE, TEST_SIZE = 0x10_0000, 0x1000
RTC_BASE, RTC_SIZE, RTC_IRQ = 0x10_1000, 0x1000, 11
CLINT_BASE, CLINT_SIZE = 0x0200_0000, 0x1_0000
PLIC_BASE = 0x0C00_0000
UART0_BASE, UART0_SIZE, UART0_IRQ = 0x1000_0000, 0x100, 10
VIRTIO_BASE, VIRTIO_COUNT = 0x1000_1000, 8
PLIC_NDEV = 96
TIMEBASE_HZ = 10_000_000
UART_CLOCK_HZ = 3_686_400
ISA = "rv64imafdc"
MAX_CPUS = 8
MIN_RAM_MIB = 16
FDT_PAD = 16 * 1024  # room for OpenSBI's and the kernel's in-place fix-ups
DEFAULT_APPEND = "console=ttyS0 earlycon=sbi"

RISCV_IMAGE_MAGIC2 = b"RSC\x05"
ELF_MAGIC = b"\x7fELF"
EM_RISCV = 243


# -- image loading ----------------------------------------------------------------------------
@dataclass
class Segment:
    """Bytes to copy to a guest-physical address (plus zero-filled ``memsz`` beyond them)."""

    addr: int
    data: bytes
    memsz: int


def _read_image(path: str | os.PathLike, what: str) -> bytes:
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


def parse_elf(data: bytes, what: str) -> tuple[int, list[Segment]]:
    """Entry point and PT_LOAD segments (by physical address) of a 64-bit little-endian RISC-V ELF."""
    if len(data) < 64 or data[:4] != ELF_MAGIC:
        raise ImageError(f"{what} is not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ImageError(f"{what} is not a 64-bit little-endian ELF")
    e_machine, = struct.unpack_from("<H", data, 18)
    if e_machine != EM_RISCV:
        raise ImageError(f"{what} is an ELF for machine {e_machine}, not RISC-V")
    entry, phoff = struct.unpack_from("<QQ", data, 24)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    if phentsize < 56 or phoff + phnum * phentsize > len(data):
        raise ImageError(f"{what}: program headers lie outside the file (truncated?)")
    segs = []
    for i in range(phnum):
        p_type, _flags, off, _vaddr, paddr, filesz, memsz, _align = struct.unpack_from("<IIQQQQQQ", data,
                                                                                      phoff + i * phentsize)
        if p_type != 1 or memsz == 0:
            continue
        if off + filesz > len(data) or filesz > memsz:
            raise ImageError(f"{what}: segment {i} lies outside the file (truncated?)")
        segs.append(Segment(paddr, data[off : off + filesz], memsz))
    if not segs:
        raise ImageError(f"{what} has no loadable segment")
    return entry, segs


def kernel_image_size(data: bytes, what: str = "kernel") -> int:
    """Memory footprint of a RISC-V Linux ``Image`` (from its header), or ImageError if it is not one."""
    if data[:2] == b"\x1f\x8b":
        raise ImageError(f"{what} is gzip-compressed (Image.gz): give the uncompressed Image")
    if len(data) < 64 or data[56:60] != RISCV_IMAGE_MAGIC2:
        raise ImageError(f"{what} is neither a RISC-V Linux Image (no 'RSC\\x05' magic) nor an ELF")
    image_size, = struct.unpack_from("<Q", data, 16)
    return max(image_size, len(data))


# -- configuration ------------------------------------------------------------------------------
@dataclass
class DiskSpec:
    """One ``--disk PATH[,ro]``."""

    path: str
    read_only: bool = False

    @classmethod
    def parse(cls, text: str) -> DiskSpec:
        """Parse ``PATH[,ro|,rw]``; a clear ConfigError for anything else."""
        path, *opts = text.split(",")
        if not path:
            raise ConfigError(f"bad --disk {text!r}: expected PATH[,ro]")
        ro = False
        for o in opts:
            if o in ("ro", "readonly", "read-only"):
                ro = True
            elif o == "rw":
                ro = False
            else:
                raise ConfigError(f"bad --disk option {o!r} in {text!r} (known: ro, rw)")
        return cls(path, ro)


@dataclass
class NetSpec:
    """One ``--net tap:NAME[,mac=XX:..]`` or ``--net switch:NAME[,vlan=N][,port=ID][,group=G][,mac=XX:..]``."""

    kind: str
    name: str
    mac: str | None = None
    #: For ``switch:``: the text handed to :func:`virtkit.network.switchport.from_netspec` (name + options).
    switch_spec: str | None = None

    @classmethod
    def parse(cls, text: str) -> NetSpec:
        """Parse ``tap:NAME[,mac=..]`` or ``switch:NAME[,vlan=N][,port=ID][,group=G][,mac=..]``."""
        head, *opts = text.split(",")
        kind, sep, name = head.partition(":")
        if kind not in ("tap", "switch") or not sep or not name:
            raise ConfigError(f"bad --net {text!r}: expected tap:NAME[,mac=52:54:00:12:34:56] "
                              "or switch:NAME[,vlan=N][,port=ID][,group=G]")
        mac = None
        sw_opts = []
        for o in opts:
            k, _, v = o.partition("=")
            if k == "mac" and v:
                mac = v
            elif kind == "switch" and k in ("vlan", "port", "group") and v:
                sw_opts.append(o)
            else:
                known = "mac=" if kind == "tap" else "vlan=, port=, group=, mac="
                raise ConfigError(f"bad --net option {o!r} in {text!r} (known: {known})")
        switch_spec = ",".join([name, *sw_opts]) if kind == "switch" else None
        return cls(kind, name, mac, switch_spec)


def parse_mem(text: str | int) -> int:
    """``256``, ``256M``, ``1G`` -> MiB (QEMU's ``-m`` syntax)."""
    if isinstance(text, int):
        return text
    t = text.strip().upper().removesuffix("B")
    mult = 1
    if t.endswith("G"):
        mult, t = 1024, t[:-1]
    elif t.endswith("M"):
        t = t[:-1]
    try:
        v = int(t) * mult
    except ValueError:
        raise ConfigError(f"bad memory size {text!r} (examples: 256, 256M, 1G)") from None
    return v


@dataclass
class BoardConfig:
    """What ``virtkit run`` asks for."""

    kernel: str
    initrd: str | None = None
    firmware: str | None = None  # None/"none": kernel runs from reset in M-mode
    append: str = DEFAULT_APPEND
    cpus: int = 1
    mem_mib: int = 256
    disks: list[DiskSpec] = field(default_factory=list)
    nets: list[NetSpec] = field(default_factory=list)
    rng: bool = True
    virtio_console: bool = False
    mmu: str = "sv48"

    def validate(self) -> None:
        """Range checks with clear errors."""
        if not 1 <= self.cpus <= MAX_CPUS:
            raise ConfigError(f"--cpus must be 1..{MAX_CPUS}: {self.cpus}")
        if self.mem_mib < MIN_RAM_MIB:
            raise ConfigError(f"--mem must be at least {MIN_RAM_MIB} MiB: {self.mem_mib}")
        if self.mem_mib > 16 * 1024:
            raise ConfigError(f"--mem at most 16 GiB: {self.mem_mib} MiB")
        if self.mmu not in ("sv39", "sv48"):
            raise ConfigError(f"mmu must be sv39 or sv48: {self.mmu!r}")
        nvirtio = len(self.disks) + len(self.nets) + int(self.rng) + int(self.virtio_console)
        if nvirtio > VIRTIO_COUNT:
            raise ConfigError(f"too many virtio devices ({nvirtio}): the board has {VIRTIO_COUNT} slots")
        if "\0" in self.append:
            raise ConfigError("kernel command line contains a NUL byte")


# -- the device tree --------------------------------------------------------------------------
def build_fdt(cfg: BoardConfig, ram_size: int, virtio_ids: list[int], initrd: tuple[int, int] | None = None,
              rng_seed: bytes | None = None) -> bytes:
    """The board's device tree (what QEMU's ``virt`` generates, minus PCI, flash and fw_cfg)."""
    f = Fdt()
    root = f.root
    root.set_u32("#address-cells", 2).set_u32("#size-cells", 2)
    root.set_str("compatible", "riscv-virtio").set_str("model", "riscv-virtio,virtkit")

    chosen = f.node("/chosen")
    if cfg.append:
        chosen.set_str("bootargs", cfg.append)
    chosen.set_str("stdout-path", f"/soc/serial@{UART0_BASE:x}")
    if initrd:
        chosen.set_u64("linux,initrd-start", initrd[0]).set_u64("linux,initrd-end", initrd[1])
    chosen.set_bytes("rng-seed", rng_seed if rng_seed is not None else os.urandom(32))

    f.node(f"/memory@{RAM_BASE:x}").set_str("device_type", "memory").set_reg("reg", (RAM_BASE, ram_size))

    cpus = f.node("/cpus")
    cpus.set_u32("#address-cells", 1).set_u32("#size-cells", 0).set_u32("timebase-frequency", TIMEBASE_HZ)
    intcs = []
    for h in range(cfg.cpus):
        cpu = f.node(f"/cpus/cpu@{h}")
        cpu.set_str("device_type", "cpu").set_u32("reg", h).set_str("status", "okay")
        cpu.set_str("compatible", "riscv").set_str("riscv,isa", ISA).set_str("mmu-type", f"riscv,{cfg.mmu}")
        f.phandle(cpu)
        intc = f.node(f"/cpus/cpu@{h}/interrupt-controller")
        intc.set_u32("#interrupt-cells", 1).set_empty("interrupt-controller").set_str("compatible", "riscv,cpu-intc")
        intcs.append(f.phandle(intc))
    cmap = f.node("/cpus/cpu-map/cluster0")
    for h in range(cfg.cpus):
        cmap.add(f"core{h}").set_u32("cpu", f.phandle(f.node(f"/cpus/cpu@{h}")))

    soc = f.node("/soc")
    soc.set_u32("#address-cells", 2).set_u32("#size-cells", 2).set_str("compatible", "simple-bus").set_empty("ranges")

    clint = f.node(f"/soc/clint@{CLINT_BASE:x}")
    clint.set_strings("compatible", ["sifive,clint0", "riscv,clint0"]).set_reg("reg", (CLINT_BASE, CLINT_SIZE))
    clint.set_u32("interrupts-extended", *[c for ph in intcs for c in (ph, 3, ph, 7)])

    plic = f.node(f"/soc/plic@{PLIC_BASE:x}")
    plic_ph = f.phandle(plic)
    plic.set_u32("#interrupt-cells", 1).set_u32("#address-cells", 0)
    plic.set_strings("compatible", ["sifive,plic-1.0.0", "riscv,plic0"]).set_empty("interrupt-controller")
    plic.set_u32("interrupts-extended", *[c for ph in intcs for c in (ph, 11, ph, 9)])
    plic.set_reg("reg", (PLIC_BASE, plic_size(cfg.cpus))).set_u32("riscv,ndev", PLIC_NDEV)

    for i in range(VIRTIO_COUNT):
        base = VIRTIO_BASE + WINDOW * i
        n = f.node(f"/soc/virtio_mmio@{base:x}")
        n.set_str("compatible", "virtio,mmio").set_reg("reg", (base, WINDOW))
        n.set_u32("interrupt-parent", plic_ph).set_u32("interrupts", 1 + i)

    uart = f.node(f"/soc/serial@{UART0_BASE:x}")
    uart.set_str("compatible", "ns16550a").set_reg("reg", (UART0_BASE, UART0_SIZE))
    uart.set_u32("clock-frequency", UART_CLOCK_HZ).set_u32("interrupt-parent", plic_ph).set_u32("interrupts", UART0_IRQ)

    test = f.node(f"/soc/test@{TEST_BASE:x}")
    test.set_strings("compatible", ["sifive,test1", "sifive,test0", "syscon"]).set_reg("reg", (TEST_BASE, TEST_SIZE))
    test_ph = f.phandle(test)
    f.node("/poweroff").set_str("compatible", "syscon-poweroff").set_u32("regmap", test_ph) \
        .set_u32("offset", 0).set_u32("value", 0x5555)
    f.node("/reboot").set_str("compatible", "syscon-reboot").set_u32("regmap", test_ph) \
        .set_u32("offset", 0).set_u32("value", 0x7777)

    rtc = f.node(f"/soc/rtc@{RTC_BASE:x}")
    rtc.set_str("compatible", "google,goldfish-rtc").set_reg("reg", (RTC_BASE, RTC_SIZE))
    rtc.set_u32("interrupt-parent", plic_ph).set_u32("interrupts", RTC_IRQ)
    return f.to_bytes(pad=FDT_PAD)


# -- placement --------------------------------------------------------------------------------
@dataclass
class Layout:
    """Where everything went in guest memory."""

    entry: int
    firmware: tuple[int, int] | None
    kernel: tuple[int, int]
    initrd: tuple[int, int] | None
    fdt: tuple[int, int]


def _align_up(v: int, a: int) -> int:
    return (v + a - 1) // a * a


def _align_down(v: int, a: int) -> int:
    return v // a * a


def fdt_address(ram_base: int, ram_size: int, fdt_size: int) -> int:
    """QEMU's riscv_compute_fdt_addr: top of RAM (below 3 GiB), 2 MiB aligned."""
    end = ram_base + ram_size
    top = min(end, 3072 * MiB) if ram_base < 3072 * MiB else end
    return _align_down(top - fdt_size, 2 * MiB)


FW_JUMP_FDT_ADDR = RAM_BASE + 0x220_0000  # where Debian's OpenSBI fw_jump copies the device tree


def plan_layout(cfg: BoardConfig, ram_size: int, fw_segs: list[Segment] | None, kernel: bytes,
                initrd_size: int | None, fdt_size: int) -> tuple[Layout, list[Segment]]:
    """Decide where firmware, kernel, initrd and device tree go; ImageError when they do not fit."""
    ram_end = RAM_BASE + ram_size
    segs: list[Segment] = []
    fw_range = None
    if fw_segs is not None:
        lo = min(s.addr for s in fw_segs)
        hi = max(s.addr + s.memsz for s in fw_segs)
        fw_range = (lo, hi)
        segs += fw_segs
        kernel_start = _align_up(hi, 2 * MiB)
        entry = RAM_BASE
    else:
        kernel_start = RAM_BASE
        entry = RAM_BASE
    if kernel[:4] == ELF_MAGIC:
        kentry, ksegs = parse_elf(kernel, "kernel")
        segs += ksegs
        kr = (min(s.addr for s in ksegs), max(s.addr + s.memsz for s in ksegs))
        if fw_segs is None:
            entry = kentry
    else:
        ksize = kernel_image_size(kernel)
        segs.append(Segment(kernel_start, kernel, ksize))
        kr = (kernel_start, kernel_start + ksize)
    fdt_addr = fdt_address(RAM_BASE, ram_size, fdt_size)
    need_mib = (kr[1] - RAM_BASE + (initrd_size or 0) + fdt_size) // MiB + 3
    if fdt_addr < kr[1]:
        raise ImageError(f"RAM too small: {ram_size // MiB} MiB for a kernel ending at {kr[1]:#x} "
                         f"(need at least {need_mib} MiB)")
    fixed = [kr]
    if fw_segs is not None:
        if kr[0] < FW_JUMP_FDT_ADDR + fdt_size and FW_JUMP_FDT_ADDR < kr[1]:
            raise ImageError(f"kernel too large for OpenSBI fw_jump: it would overlap the device tree copy at "
                             f"{FW_JUMP_FDT_ADDR:#x} (kernel ends at {kr[1]:#x})")
        if ram_end < FW_JUMP_FDT_ADDR + fdt_size:
            least = (FW_JUMP_FDT_ADDR + fdt_size - RAM_BASE) // MiB + 1
            raise ImageError(f"RAM too small for OpenSBI fw_jump: it copies the device tree to "
                             f"{FW_JUMP_FDT_ADDR:#x} (need at least {least} MiB)")
        fixed.append((FW_JUMP_FDT_ADDR, FW_JUMP_FDT_ADDR + fdt_size))
    for s in segs:
        if not (RAM_BASE <= s.addr and s.addr + s.memsz <= ram_end):
            raise ImageError(f"image segment at {s.addr:#x} (+{s.memsz:#x}) lies outside RAM "
                             f"[{RAM_BASE:#x}, {ram_end:#x}) (need at least {need_mib} MiB?)")
    initrd = None
    if initrd_size is not None:
        start = _align_up(kr[0] + min(ram_size // 2, 128 * MiB), 4096)
        for lo, hi in fixed:  # step over the kernel and fw_jump's device tree copy
            if start < hi and lo < start + initrd_size:
                start = _align_up(hi, 4096)
        if start + initrd_size > fdt_addr:  # does not fit up there: right below the device tree
            start = _align_down(fdt_addr - initrd_size, 4096)
            if any(start < hi and lo < start + initrd_size for lo, hi in fixed):
                raise ImageError(f"RAM too small: {ram_size // MiB} MiB cannot hold kernel, initrd "
                                 f"({initrd_size // 1024} KiB) and device tree (need about {need_mib} MiB)")
        initrd = (start, start + initrd_size)
    return Layout(entry, fw_range, kr, initrd, (fdt_addr, fdt_addr + fdt_size)), segs


class RiscvVirt:
    """A built ``riscv64-virt`` machine: RAM, engine, bus, devices, loaded images, ready to :meth:`run`.

    ``console`` receives UART output; :attr:`uart` takes input with ``feed``. ``engine_factory``
    builds the CPU engine (default: the software RISC-V engine).
    """

    def __init__(self, cfg: BoardConfig, console: Callable[[bytes], None] | None = None,
                 engine_factory: Callable[..., Any] | None = None, virtio_console_out: Callable[[bytes], None]
                 | None = None) -> None:
        cfg.validate()
        ram_size = cfg.mem_mib * MiB
        # read and check every image before allocating anything
        fw_segs = None
        if cfg.firmware and cfg.firmware != "none":
            fw = _read_image(cfg.firmware, "firmware")
            if fw[:4] == ELF_MAGIC:
                _, fw_segs = parse_elf(fw, "firmware")
            else:
                if len(fw) > 2 * MiB:
                    raise ImageError(f"firmware {cfg.firmware!r} is {len(fw)} bytes: larger than the 2 MiB "
                                     "before the kernel (is it really fw_jump.bin?)")
                fw_segs = [Segment(RAM_BASE, fw, len(fw))]
        kernel = _read_image(cfg.kernel, "kernel")
        initrd = _read_image(cfg.initrd, "initrd") if cfg.initrd else None
        probe = build_fdt(cfg, ram_size, [], (0, 0) if initrd else None, rng_seed=bytes(32))
        self.layout, segs = plan_layout(cfg, ram_size, fw_segs, kernel, len(initrd) if initrd else None, len(probe))
        self.cfg = cfg
        self.fdt = build_fdt(cfg, ram_size, [], self.layout.initrd)
        assert len(self.fdt) == len(probe)

        # the machine: RAM, then the host resources that can fail (disks, TAPs) before the costly engine
        self.mem = GuestMemory(ram_size, RAM_BASE)
        closers: list[Callable[[], None]] = []
        self.virtio: list[VirtioDevice] = []  # in slot order: disks (vda, vdb...), NICs, rng, console
        taps: list[tuple[Any, VirtioNet]] = []
        try:
            for d in cfg.disks:
                from virtkit.storage import open_disk

                backend = open_disk(d.path, read_only=d.read_only)
                closers.append(backend.close)
                closers.insert(0, _flusher(backend))
                self.virtio.append(VirtioBlk(self.mem, backend, serial=f"virtkit{len(self.virtio)}"))
            for n in cfg.nets:
                from virtkit.devices.virtio.net import parse_mac

                mac = parse_mac(n.mac) if n.mac else None
                if n.kind == "switch":
                    from virtkit.network.switchport import from_netspec

                    tap = from_netspec(n.switch_spec or n.name)
                else:
                    from virtkit.network.tap import Tap

                    tap = Tap(n.name)
                closers.append(tap.close)
                nic = VirtioNet(self.mem, tap, mac)
                taps.append((tap, nic))
                self.virtio.append(nic)
            if cfg.rng:
                self.virtio.append(VirtioRng(self.mem))
            if cfg.virtio_console:
                self.vconsole = VirtioConsole(self.mem, virtio_console_out or console)
                self.virtio.append(self.vconsole)
            if engine_factory is None:
                from virtkit.engines.riscv.engine import RiscvEngine as engine_factory  # noqa: N813
            self.engine = engine_factory(self.mem, cfg.cpus, reset_pc=self.layout.entry, clint_base=CLINT_BASE)
        except BaseException:
            for c in closers:
                c()
            raise
        self.bus = Bus()
        self.vm = Vm(self.engine, self.bus)
        self.vm.closers.extend(closers)
        for tap, nic in taps:
            self.vm.io.add_reader(tap.fileno(), nic.poll_backend)
        self.plic = Plic(cfg.cpus, self.vm.set_irq, PLIC_NDEV)
        # console output is batched: the run loop flushes it whenever the guest stops running
        self.uart = Uart16550(console, self.plic.line(UART0_IRQ), buffered=True)
        self.vm.flushers.append(self.uart.flush)
        self.test = SifiveTest(self.vm.power_event)
        self.rtc = GoldfishRtc(self.plic.line(RTC_IRQ))
        self.vm.periodic.append(self.rtc.poll)
        self._map(TEST_BASE, TEST_SIZE, self.test, "sifive_test")
        self._map(RTC_BASE, RTC_SIZE, self.rtc, "rtc")
        self._map(PLIC_BASE, self.plic.size, self.plic, "plic")
        self._map(UART0_BASE, UART0_SIZE, self.uart, "uart0")
        self._fast_console()
        self.transports = []
        for i in range(VIRTIO_COUNT):
            dev = self.virtio[i] if i < len(self.virtio) else None
            t = MmioTransport(dev, self.plic.line(1 + i))
            self.transports.append(t)
            self._map(VIRTIO_BASE + WINDOW * i, WINDOW, t, f"virtio{i}" + (f"-{dev.name}" if dev else ""))

        # images into RAM, boot registers
        for s in segs:
            self.mem.write(s.addr, s.data)
        if initrd is not None and self.layout.initrd:
            self.mem.write(self.layout.initrd[0], initrd)
        self.mem.write(self.layout.fdt[0], self.fdt)
        for h in range(cfg.cpus):
            self.engine.set_reg(h, 10, h)
            self.engine.set_reg(h, 11, self.layout.fdt[0])
            self.engine.set_reg(h, 12, 0)

    def _fast_console(self) -> None:
        """Coalesced MMIO for the console (when the engine has it): the LSR polls and THR writes of the
        guest's console output (two exits per character) are served by the engine, THR bytes in order."""
        add = getattr(self.engine, "add_fast_mmio", None)
        if add is None:
            return
        uart = self.uart
        thr = add(UART0_BASE + 0, 1, lambda v: uart.write(0, 1, v))
        lsr = add(UART0_BASE + 5, 1)
        setf = self.engine.set_fast_mmio

        def hook(thr_plain: bool, lsr_value: int | None) -> None:
            setf(thr, thr_plain)
            setf(lsr, lsr_value is not None, lsr_value or 0)

        uart.fast_hook = hook
        uart.publish()

    def _map(self, base: int, size: int, dev: Any, name: str) -> None:
        self.bus.register(base, size, dev, name)
        self.engine.add_mmio_region(base, size)

    def run(self, timeout: float | None = None) -> RunResult:
        """Boot and run until the guest powers off (or ``timeout``); then release everything."""
        return self.vm.run(timeout)

    def stats(self) -> dict[str, Any]:
        """Engine, bus and device counters."""
        s = self.vm.stats()
        s["devices"] = {d.name + str(i): d.stats() for i, d in enumerate(self.virtio)}
        s["uart"] = {"tx_bytes": self.uart.tx_bytes, "rx_bytes": self.uart.rx_bytes}
        return s


def _flusher(backend: Any) -> Callable[[], None]:
    def flush() -> None:
        if not backend.read_only:
            backend.flush()
    return flush
