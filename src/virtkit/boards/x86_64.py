"""``x86_64-microvm``: a microVM in Firecracker's spirit for the KVM engine (``--engine kvm``).

RAM from 0 with an e820 map (the legacy hole below 1 MiB reported reserved); the 16550 at port 0x3f8 on
IRQ 4 through the in-kernel irqchip; an i8042 that resets; a CMOS RTC; QEMU's ``isa-debug-exit`` at port
0xf4 (a write of V ends the VM with status ``(V << 1) | 1``: how test kernels report); the POST port 0x80;
eight virtio-mmio slots at 0xd000_0000 announced on the kernel command line (``virtio_mmio.device=``,
IRQs 5-7 and 9-13); an MP table for the vCPUs and the IOAPIC. The kernel is a Linux bzImage, an ELF vmlinux
with a PVH entry, or a Multiboot v1 kernel, told apart by their headers (``boards/x86boot.py``); no firmware.

Memory map::

    0x0000_0500  boot GDT               0x0000_7000  boot_params / hvm_start_info / multiboot info
    0x0000_8000  memory map             0x0000_9000  identity page tables (bzImage's 64-bit entry)
    0x0002_0000  command line           0x000f_0000  MP table
    0x0010_0000  kernel                 top of RAM   initrd
    0xd000_0000  virtio-mmio slots      0xfec0_0000  IOAPIC, 0xfee0_0000 LAPIC (in KVM)
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from virtkit.boards import x86boot
from virtkit.errors import ConfigError

VIRTIO_BASE = 0xD000_0000
VIRTIO_WINDOW = 0x1000
VIRTIO_IRQS = (5, 6, 7, 9, 10, 11, 12, 13)
COM1, COM1_IRQ = 0x3F8, 4
DEBUG_EXIT_PORT = 0xF4
MPTABLE_ADDR = 0xF_0000
IOAPIC_ADDR, LAPIC_ADDR = 0xFEC0_0000, 0xFEE0_0000


class X86MicroVm:
    """The board (see the module docstring)."""

    name = "x86_64-microvm"
    aliases = ("x86_64", "microvm")
    engines = ("kvm",)
    max_cpus = 32
    min_memory = 2 << 20
    max_memory = 3 << 30  # (above: the MMIO hole at 3 GiB; RAM split around it is not done yet)
    default_cmdline = "console=ttyS0 earlyprintk=serial reboot=k panic=-1 i8042.noaux i8042.nomux"
    ram_base = 0
    budget = 1 << 20
    virtio_slots = len(VIRTIO_IRQS)
    restorable = True

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.restoring = False
        self.plan: x86boot.BootPlan | None = None

    def prepare(self) -> None:
        """Check the config and read the kernel (and initrd): the protocol is the kernel's header's."""
        cfg = self.cfg
        if not 1 <= cfg.cpus <= self.max_cpus:
            raise ConfigError(f"cpus: board {self.name} takes 1..{self.max_cpus} vCPUs, not {cfg.cpus}")
        if not self.min_memory <= cfg.memory <= self.max_memory:
            raise ConfigError(f"memory: board {self.name} takes {self.min_memory >> 20} MiB to "
                              f"{self.max_memory >> 30} GiB")
        if cfg.firmware not in ("default", "none"):
            raise ConfigError(f"firmware: board {self.name} loads the kernel itself (Multiboot, PVH or bzImage); "
                              f"there is no firmware to give ({cfg.firmware!r})")
        if any(n.model != "virtio" for n in cfg.nics):
            raise ConfigError(f"nics: board {self.name} has virtio NICs only")
        if self.restoring:
            return
        if not cfg.kernel:
            raise ConfigError(f"kernel: board {self.name} needs --kernel (a bzImage, a PVH vmlinux or a "
                              "Multiboot kernel)")
        data = _read(cfg.kernel, "kernel")
        initrd = _read(cfg.initrd, "initrd") if cfg.initrd else None
        self.kind = x86boot.kind_of(data)
        cmdline = cfg.cmdline if cfg.cmdline is not None else (
            "" if self.kind == "multiboot" else self.default_cmdline)
        if cfg.exec is not None:  # the initramfs's /init runs it and powers off (the RISC-V guest's contract)
            from virtkit.images.initramfs import exec_command_line

            cmdline = f"{cmdline} {exec_command_line(cfg.exec)}".strip()
        if self.kind != "multiboot":
            n = len(cfg.disks) + len(cfg.nics) + int(bool(cfg.rng)) + int(cfg.console.virtio)
            cmdline = " ".join([cmdline, *(f"virtio_mmio.device=4K@{VIRTIO_BASE + VIRTIO_WINDOW * i:#x}:"
                                           f"{VIRTIO_IRQS[i]}" for i in range(n))]).strip()
        if len(cmdline) >= x86boot.CMDLINE_MAX:
            raise ConfigError(f"cmdline: {len(cmdline)} bytes is too long")
        self.cmdline = cmdline
        self.plan = x86boot.load(data, cfg.memory, cmdline, initrd)

    def engine_args(self) -> dict[str, Any]:
        """The in-kernel PIC, IOAPIC, LAPIC and PIT."""
        return {"irqchip": True}

    def attach_platform(self, b: Any) -> None:
        """The 16550 (IRQ 4), debug-exit, i8042, CMOS RTC and the POST port, on port I/O."""
        from virtkit.devices.pc import I8042, CmosRtc, DebugExit, Sink
        from virtkit.devices.uart16550 import Uart16550

        vm, eng = b.vm, b.engine
        # unbuffered: with the in-kernel irqchip a halted vCPU stays in KVM_RUN, so nothing would flush a buffer
        self.uart = Uart16550(b.console.write, self.irq(eng, COM1_IRQ))
        b.attach_pio(COM1, 8, self.uart, "uart0")
        b.attach_serial(self.uart)
        b.attach_pio(DEBUG_EXIT_PORT, 4, DebugExit(lambda code: vm.power_event("exit", code)), "debug-exit")
        b.attach_pio(0x60, 5, I8042(lambda: vm.power_event("reset")), "i8042")
        b.attach_pio(0x70, 2, CmosRtc(self.cfg.memory), "rtc")
        b.attach_pio(0x80, 1, Sink(), "post")
        eng.add_sink_port(0x80)  # (answered in the engine's compiled loop; the device serves the Python one)

    @staticmethod
    def irq(engine: Any, gsi: int) -> Callable[[bool], None]:
        """A device's interrupt line: GSI ``gsi`` of the in-kernel PIC and IOAPIC."""
        return lambda level: engine.set_gsi(gsi, level)

    def virtio_slot(self, b: Any, index: int) -> tuple[int, int, Callable[[bool], None]]:
        """Slot ``index``: a 4 KiB window from 0xd000_0000, IRQ 5-7, 9-13."""
        return VIRTIO_BASE + VIRTIO_WINDOW * index, VIRTIO_WINDOW, self.irq(b.engine, VIRTIO_IRQS[index])

    def finish(self, b: Any) -> None:
        """The kernel, its tables and the boot vCPU's registers; the others wait for INIT/SIPI."""
        if self.restoring:
            return
        assert self.plan is not None
        mem, eng = b.mem, b.engine
        for addr, chunk in self.plan.writes:
            mem.write(addr, chunk)
        mem.write(x86boot.GDT_ADDR, x86boot.gdt())
        mem.write(MPTABLE_ADDR, mptable(self.cfg.cpus))
        set_boot_state(eng, self.plan)

    def dump_dtb(self) -> bytes:
        """No device tree on x86 (the MP table and the command line describe the machine)."""
        raise ConfigError(f"board {self.name} has no device tree")


def set_boot_state(eng: Any, plan: x86boot.BootPlan) -> None:
    """vCPU 0 as the protocol wants it: 32-bit flat protected mode with paging off (Multiboot, PVH), or long
    mode on identity page tables with Linux's boot GDT (bzImage's 64-bit entry)."""
    from virtkit.engines.kvm import api as k

    s = eng.get_sregs(0)
    code, data = (0x10, 0x18) if plan.long_mode else (0x20, 0x18)
    for name in ("cs", "ds", "es", "fs", "gs", "ss"):
        seg = getattr(s, name)
        seg.base, seg.limit, seg.g, seg.present, seg.s, seg.dpl, seg.avl, seg.unusable = 0, 0xFFFFFFFF, 1, 1, 1, 0, 0, 0
        if name == "cs":
            seg.selector, seg.type = code, 0xB
            seg.l, seg.db = (1, 0) if plan.long_mode else (0, 1)
        else:
            seg.selector, seg.type, seg.l, seg.db = data, 0x3, 0, 1
    s.gdt.base, s.gdt.limit = x86boot.GDT_ADDR, 8 * len(x86boot.GDT) - 1
    s.idt.base, s.idt.limit = 0, 0
    s.cr0 = 0x11  # PE, ET
    s.cr4 = 0
    s.efer = 0
    if plan.long_mode:
        s.cr3 = x86boot.PML4_ADDR
        s.cr4 = 0x20  # PAE
        s.cr0 = 0x80000011  # PG, PE, ET
        s.efer = 0x500  # LME, LMA
    eng.set_sregs(0, s)
    r = k.Regs()
    r.rip, r.rflags = plan.entry, 0x2
    for reg, v in plan.regs.items():
        setattr(r, reg, v)
    eng.set_regs(0, r)


def mptable(cpus: int) -> bytes:
    """An Intel MultiProcessor Specification 1.4 table: the floating pointer, one processor entry per vCPU
    (vCPU 0 the bootstrap processor), the ISA bus, the IOAPIC and its 16 ISA interrupts, LINT0/LINT1."""
    entries = []
    for i in range(cpus):
        entries.append(struct.pack("<BBBBIIII", 0, i, 0x14, 0x01 | (0x02 if i == 0 else 0), 0x600, 0x201, 0, 0))
    entries.append(struct.pack("<BB6s", 1, 0, b"ISA   "))
    ioapic_id = cpus
    entries.append(struct.pack("<BBBBI", 2, ioapic_id, 0x11, 1, IOAPIC_ADDR))
    for irq in range(16):  # INT: source bus 0 IRQ n -> IOAPIC pin n (pin 2 for the timer's IRQ 0, as on a PC)
        entries.append(struct.pack("<BBHBBBB", 3, 0, 0, 0, irq, ioapic_id, 2 if irq == 0 else irq))
    entries.append(struct.pack("<BBHBBBB", 4, 3, 0, 0, 0, 0xFF, 0))  # LINT0: ExtINT
    entries.append(struct.pack("<BBHBBBB", 4, 1, 0, 0, 0, 0xFF, 1))  # LINT1: NMI
    body = b"".join(entries)
    table_addr = MPTABLE_ADDR + 16
    header = bytearray(struct.pack("<4sHBB8s12sIHHIHBB", b"PCMP", 44 + len(body), 4, 0, b"VIRTKIT ",
                                   b"MICROVM     ", 0, 0, len(entries), LAPIC_ADDR, 0, 0, 0))
    table = header + body
    table[7] = (-sum(table)) & 0xFF
    fp = bytearray(struct.pack("<4sIBBBBBBBB", b"_MP_", table_addr, 1, 4, 0, 0, 0, 0, 0, 0))
    fp[10] = (-sum(fp)) & 0xFF
    return bytes(fp) + bytes(table)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(f"{what}: {path}: {err.strerror}") from None


BOARD = X86MicroVm
