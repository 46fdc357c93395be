"""The ``riscv64-virt`` board: QEMU's ``virt`` machine memory map, device tree and boot placement.

Memory map (as QEMU 7.2 ``hw/riscv/virt.c``)::

    0x0010_0000  sifive_test (poweroff / reboot)      0x0c00_0000  PLIC
    0x0010_1000  goldfish RTC (irq 11)                0x1000_0000  NS16550A UART0 (irq 10)
    0x0010_2000  VM generation ID (irq 12)         0x1010_0000 + 0x1000*i  ethoc NIC i (irq 13+i; model=ethoc)
    0x0200_0000  CLINT (inside the CPU engine)        0x1000_1000 + 0x1000*i  virtio-mmio slot i (irq 1+i)
    0x8000_0000  RAM

With ``--bios builtin`` there is no firmware: the kernel is loaded at the start of RAM and starts in S-mode
on hart 0 (the other harts STOPPED until SBI HSM starts them), and virtkit itself answers the kernel's SBI
calls (:mod:`virtkit.devices.sbi`), as KVM does for its RISC-V guests.

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from virtkit.devices.goldfish_rtc import GoldfishRtc
from virtkit.devices.plic import Plic, plic_size
from virtkit.devices.sifive_test import SifiveTest
from virtkit.devices.uart16550 import Uart16550
from virtkit.devices.virtio.mmio import WINDOW
from virtkit.devices.vmgenid import VmGenId
from virtkit.errors import ConfigError, ImageError
from virtkit.fdt import Fdt
from virtkit.machine.config import MachineConfig, parse_cpu
from virtkit.machine.elf import is_elf
from virtkit.machine.elf import parse_elf as _parse_elf
from virtkit.machine.images import check_firmware, check_initrd, read_image
from virtkit.units import format_size

if TYPE_CHECKING:
    from virtkit.machine.builder import Builder

MiB = 1 << 20
RAM_BASE = 0x8000_0000
TEST_BASE, TEST_SIZE = 0x10_0000, 0x1000
RTC_BASE, RTC_SIZE, RTC_IRQ = 0x10_1000, 0x1000, 11
VMGENID_BASE, VMGENID_SIZE, VMGENID_IRQ = 0x10_2000, 0x1000, 12  # not in QEMU's virt map: a free slot
CLINT_BASE, CLINT_SIZE = 0x0200_0000, 0x1_0000
PLIC_BASE = 0x0C00_0000
UART0_BASE, UART0_SIZE, UART0_IRQ = 0x1000_0000, 0x100, 10
VIRTIO_BASE, VIRTIO_COUNT = 0x1000_1000, 8
PLIC_NDEV = 96
ETHOC_BASE, ETHOC_SIZE, ETHOC_IRQ, MAX_ETHOC = 0x1010_0000, 0x1000, 13, 4  # --net ...,model=ethoc (not in QEMU's map)
TIMEBASE_HZ = 10_000_000
UART_CLOCK_HZ = 3_686_400
ISA = "rv64imafdc"
MAX_CPUS = 8
MIN_RAM_MIB = 16
MAX_RAM_MIB = 16 * 1024
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


def parse_elf(data: bytes, what: str) -> tuple[int, list[Segment]]:
    """Entry point and PT_LOAD segments (by physical address) of a 64-bit little-endian RISC-V ELF."""
    img = _parse_elf(data, what)
    return img.entry, [Segment(addr, body, memsz) for addr, body, memsz in img.segments]


def kernel_image_size(data: bytes, what: str = "kernel") -> int:
    """Memory footprint of a RISC-V Linux ``Image`` (from its header), or ImageError if it is not one."""
    if data[:2] == b"\x1f\x8b":
        raise ImageError(f"{what} is gzip-compressed (Image.gz): give the uncompressed Image")
    if len(data) < 64 or data[56:60] != RISCV_IMAGE_MAGIC2:
        from virtkit.machine.images import describe

        raise ImageError(f"{what} is {describe(data)}: neither a RISC-V Linux Image (no 'RSC\\x05' magic) "
                         "nor a RISC-V ELF")
    image_size, = struct.unpack_from("<Q", data, 16)
    return max(image_size, len(data))


# -- the device tree --------------------------------------------------------------------------
def build_fdt(cfg: MachineConfig, ram_size: int, initrd: tuple[int, int] | None = None,
              rng_seed: bytes | None = None, cmdline: str = "", ethoc_macs: tuple[bytes, ...] = ()) -> bytes:
    """The board's device tree (what QEMU's ``virt`` generates, minus PCI, flash and fw_cfg)."""
    f = Fdt()
    root = f.root
    root.set_u32("#address-cells", 2).set_u32("#size-cells", 2)
    root.set_str("compatible", "riscv-virtio").set_str("model", "riscv-virtio,virtkit")

    chosen = f.node("/chosen")
    if cmdline:
        chosen.set_str("bootargs", cmdline)
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
        isa = ISA + ("h" if parse_cpu(cfg.cpu)["h"] else "")  # Linux (KVM) reads the extensions here
        cpu.set_str("compatible", "riscv").set_str("riscv,isa", isa).set_str("mmu-type", "riscv,sv48")
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

    for i, mac in enumerate(ethoc_macs):
        base = ETHOC_BASE + ETHOC_SIZE * i
        eth = f.node(f"/soc/ethernet@{base:x}")
        eth.set_str("compatible", "opencores,ethoc").set_reg("reg", (base, ETHOC_SIZE))
        eth.set_u32("interrupt-parent", plic_ph).set_u32("interrupts", ETHOC_IRQ + i)
        eth.set_bytes("local-mac-address", mac)

    gen = f.node(f"/soc/vmgenid@{VMGENID_BASE:x}")
    gen.set_str("compatible", "microsoft,vmgenid").set_reg("reg", (VMGENID_BASE, VMGENID_SIZE))
    gen.set_u32("interrupt-parent", plic_ph).set_u32("interrupts", VMGENID_IRQ)
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


def plan_layout(ram_size: int, fw_segs: list[Segment] | None, kernel: bytes,
                initrd_size: int | None, fdt_size: int, what: str = "kernel") -> tuple[Layout, list[Segment]]:
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
        kentry, ksegs = parse_elf(kernel, what)
        segs += ksegs
        kr = (min(s.addr for s in ksegs), max(s.addr + s.memsz for s in ksegs))
        if fw_segs is None:
            entry = kentry
    else:
        ksize = kernel_image_size(kernel, what)
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


class RiscvVirtBoard:
    """``riscv64-virt``: QEMU virt's memory map with OpenSBI (or a kernel from reset) and Linux."""

    name = "riscv64-virt"
    aliases = ("virt",)
    engines = ("riscv",)
    max_cpus = MAX_CPUS
    min_memory = MIN_RAM_MIB * MiB
    max_memory = MAX_RAM_MIB * MiB
    default_cmdline = DEFAULT_APPEND
    ram_base = RAM_BASE
    budget = 500_000
    virtio_slots = VIRTIO_COUNT
    #: a snapshot of this board restores without its images (the builder sets ``restoring``)
    restorable = True

    def __init__(self, cfg: MachineConfig) -> None:
        self.cfg = cfg
        self.fdt = b""
        self.layout: Layout | None = None
        self.cmdline = ""
        self.restoring = False

    # -- before anything is allocated -----------------------------------------------------------------
    def prepare(self) -> None:
        """Range checks, the default guest's images, every image read and checked, the layout planned."""
        cfg = self.cfg
        if not 1 <= cfg.cpus <= MAX_CPUS:
            raise ConfigError(f"cpus: {cfg.cpus} is out of range 1..{MAX_CPUS} for board {self.name}")
        if not self.min_memory <= cfg.memory <= self.max_memory or cfg.memory % MiB:
            raise ConfigError(f"memory: {format_size(cfg.memory)} is out of range: board {self.name} takes "
                              f"{format_size(self.min_memory)} to {format_size(self.max_memory)}, in whole MiB")
        from virtkit.devices.virtio.net import random_mac

        legacy = [n for n in cfg.nics if n.model == "ethoc"]
        if len(legacy) > MAX_ETHOC:
            raise ConfigError(f"nics: {len(legacy)} ethoc NICs; board {self.name} has room for {MAX_ETHOC}")
        self.ethoc = [(n, n.mac_bytes() or random_mac()) for n in legacy]
        self.ethoc_macs = tuple(mac for _, mac in self.ethoc)
        if self.restoring:  # RAM and registers come from a snapshot: no image is read
            return
        kernel, initrd, firmware = cfg.kernel, cfg.initrd, cfg.firmware
        if kernel is None:
            import sys

            from virtkit.images import default_guest

            guest = default_guest(progress=sys.stderr.isatty())
            kernel = str(guest.kernel)
            initrd = initrd or str(guest.initrd)
            firmware = str(guest.firmware) if firmware == "default" else firmware
        if firmware == "default":
            from virtkit.images import firmware_path

            firmware = str(firmware_path())
        self.images = (kernel, initrd, firmware)
        fw_segs = None
        if firmware not in ("none", "builtin"):
            fw = read_image(firmware, "firmware")
            check_firmware(fw, firmware, 2 * MiB)
            fw_segs = parse_elf(fw, f"firmware {firmware!r}")[1] if is_elf(fw) else [Segment(RAM_BASE, fw, len(fw))]
        kdata = read_image(kernel, "kernel")
        self.initrd_data = read_image(initrd, "initrd") if initrd else None
        if self.initrd_data is not None:
            check_initrd(self.initrd_data, str(initrd))
        cmdline = cfg.cmdline if cfg.cmdline is not None else self.default_cmdline
        if cfg.exec is not None:
            from virtkit.images.initramfs import exec_command_line

            cmdline = f"{cmdline} {exec_command_line(cfg.exec)}".strip()
        self.cmdline = cmdline
        ram = cfg.memory
        probe = build_fdt(cfg, ram, (0, 0) if self.initrd_data else None, rng_seed=bytes(32), cmdline=cmdline,
                          ethoc_macs=self.ethoc_macs)
        self.layout, self.segments = plan_layout(ram, fw_segs, kdata, len(self.initrd_data)
                                                 if self.initrd_data else None, len(probe), f"kernel {kernel!r}")
        self._fdt_size = len(probe)

    @property
    def builtin_sbi(self) -> bool:
        """``--bios builtin``: no firmware in the guest, the kernel starts in S-mode and the VMM is the SBI."""
        return self.cfg.firmware == "builtin"

    def engine_args(self) -> dict[str, Any]:
        """Every hart starts at the firmware (or the kernel's entry), with the CLINT inside the engine; with the
        builtin SBI the harts start in S-mode and S-mode ECALLs are hypercalls."""
        sbi: dict[str, Any] = {"sbi": True} if self.builtin_sbi else {}
        if self.cfg.mode == "trap":
            sbi.update(trap=True, guest_ram=self.cfg.memory)
        if self.restoring:
            return {"reset_pc": RAM_BASE, "clint_base": CLINT_BASE, **sbi}
        assert self.layout is not None
        return {"reset_pc": self.layout.entry, "clint_base": CLINT_BASE, **sbi}

    # -- devices ---------------------------------------------------------------------------------------
    def attach_platform(self, b: Builder) -> None:
        """PLIC, the 16550 console (coalesced MMIO where the engine has it), sifive_test, goldfish RTC, the VM
        generation ID."""
        vm = b.vm
        self.plic = Plic(self.cfg.cpus, vm.set_irq, PLIC_NDEV)
        self.uart = Uart16550(b.console.write, self.plic.line(UART0_IRQ), buffered=True)
        vm.flushers.append(self.uart.flush)
        self.test = SifiveTest(vm.power_event)
        self.rtc = GoldfishRtc(self.plic.line(RTC_IRQ))
        self.vmgenid = VmGenId(self.plic.line(VMGENID_IRQ))
        vm.periodic.append(self.rtc.poll)
        b.attach_mmio(TEST_BASE, TEST_SIZE, self.test, "sifive_test")
        b.attach_mmio(RTC_BASE, RTC_SIZE, self.rtc, "rtc")
        b.attach_mmio(VMGENID_BASE, VMGENID_SIZE, self.vmgenid, "vmgenid")
        b.attach_mmio(PLIC_BASE, self.plic.size, self.plic, "plic")
        b.attach_mmio(UART0_BASE, UART0_SIZE, self.uart, "uart0")
        b.attach_serial(self.uart)
        thr = _fast_console(b.engine, self.uart)
        for i, (n, mac) in enumerate(self.ethoc):  # emulated legacy NICs on the platform bus
            from virtkit.devices.ethoc import Ethoc

            port = b.open_net_backend(n)
            eth = Ethoc(b.mem, port, mac, self.plic.line(ETHOC_IRQ + i))
            b.attach_mmio(ETHOC_BASE + ETHOC_SIZE * i, ETHOC_SIZE, eth, f"ethoc{i}")
            b.io_readers.append((port.fileno(), eth.poll_backend))
        if self.builtin_sbi:
            from virtkit.devices.sbi import Sbi

            self.sbi = Sbi(b.engine, self.uart, vm.power_event)
            vm.hypercall = self.sbi.hypercall
            if thr is not None:
                b.engine.sbi_console(thr)  # legacy putchar: a THR store inside the core
            b.add_device("sbi", self.sbi)

    def virtio_slot(self, b: Builder, index: int) -> tuple[int, int, Callable[[bool], None]]:
        """Slot ``index``: a 4 KiB window from 0x1000_1000 on, PLIC source 1 + index."""
        return VIRTIO_BASE + WINDOW * index, WINDOW, self.plic.line(1 + index)

    def finish(self, b: Builder) -> None:
        """Device tree, images into RAM, a0 = hart id and a1 = the device tree for every hart."""
        if self.restoring:
            return
        assert self.layout is not None
        self.fdt = build_fdt(self.cfg, self.cfg.memory, self.layout.initrd, cmdline=self.cmdline,
                             ethoc_macs=self.ethoc_macs)
        assert len(self.fdt) == self._fdt_size
        mem = b.mem
        for s in self.segments:
            mem.write(s.addr, s.data)
        if self.initrd_data is not None and self.layout.initrd:
            mem.write(self.layout.initrd[0], self.initrd_data)
        mem.write(self.layout.fdt[0], self.fdt)
        for h in range(self.cfg.cpus):
            b.engine.set_reg(h, 10, h)
            b.engine.set_reg(h, 11, self.layout.fdt[0])
            b.engine.set_reg(h, 12, 0)

    def dump_dtb(self) -> bytes:
        """The device tree the guest gets, with the random ``rng-seed`` zeroed (so dumps compare; QEMU's
        ``-machine dumpdtb``)."""
        assert self.layout is not None
        return build_fdt(self.cfg, self.cfg.memory, self.layout.initrd, rng_seed=bytes(32), cmdline=self.cmdline,
                         ethoc_macs=self.ethoc_macs)


def _fast_console(engine: Any, uart: Uart16550) -> int | None:
    """Coalesced MMIO for the console (when the engine has it): the LSR polls, MSR reads and THR writes of
    the guest's console output (two exits per character) are served by the engine, THR bytes in order.
    Returns the THR's fast cell (None without coalesced MMIO)."""
    add = getattr(engine, "add_fast_mmio", None)
    if add is None:
        return None
    thr = add(UART0_BASE + 0, 1, lambda v: uart.write(0, 1, v), bulk=uart.transmit_run)
    lsr = add(UART0_BASE + 5, 1)
    msr = add(UART0_BASE + 6, 1)
    setf = engine.set_fast_mmio

    def hook(thr_plain: bool, lsr_value: int | None, msr_value: int | None) -> None:
        setf(thr, thr_plain)
        setf(lsr, lsr_value is not None, lsr_value or 0)
        setf(msr, msr_value is not None, msr_value or 0)

    uart.fast_hook = hook
    uart.publish()
    return thr


BOARD = RiscvVirtBoard
