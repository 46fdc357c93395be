"""The ``riscv64-spike`` board: RAM, the CLINT and HTIF, for bare-metal programs (``--bios none``).

What ``qemu-system-riscv64 -M spike -bios none -kernel prog.elf`` gives riscv-tests style programs:
RAM at 0x8000_0000, every hart starting at the ELF's entry with a0 = its hart id, the CLINT at
0x0200_0000 (inside the engine), and HTIF: the program reports through its ``tohost`` symbol (console
characters, ``write`` calls, and its exit code, 0 for pass). There is no interrupt source outside the
CPU, so a machine whose harts all wait for an interrupt with no timer armed has ended ("stuck").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from virtkit.devices.htif import Htif
from virtkit.errors import ConfigError
from virtkit.machine.config import MachineConfig
from virtkit.machine.elf import parse_elf
from virtkit.machine.images import read_image
from virtkit.units import format_size

if TYPE_CHECKING:
    from virtkit.machine.builder import Builder

RAM_BASE = 0x8000_0000
CLINT_BASE = 0x0200_0000


class RiscvSpikeBoard:
    """``riscv64-spike``: a bare-metal ELF with HTIF, the board of the ISA suite and the CPU benchmarks."""

    name = "riscv64-spike"
    aliases = ("spike",)
    engines = ("riscv",)
    max_cpus = 64
    min_memory = 4096
    max_memory = 16 << 30
    default_cmdline = ""
    ram_base = RAM_BASE
    budget = 20_000_000  # nothing to service between runs but HTIF, which exits by itself
    virtio_slots = 0

    def __init__(self, cfg: MachineConfig) -> None:
        self.cfg = cfg
        self.htif: Htif | None = None

    def prepare(self) -> None:
        """The program must be a RISC-V ELF whose segments lie in RAM."""
        cfg = self.cfg
        if not cfg.kernel:
            raise ConfigError("kernel: board riscv64-spike runs a bare-metal ELF: give it with --kernel PROGRAM.elf")
        if cfg.firmware == "builtin":
            raise ConfigError(f"firmware: the builtin SBI needs an S-mode kernel on riscv64-virt; board {self.name} "
                              "runs bare-metal programs in M-mode")
        if cfg.initrd:
            raise ConfigError("initrd: board riscv64-spike loads no initrd")
        if not 1 <= cfg.cpus <= self.max_cpus:
            raise ConfigError(f"cpus: {cfg.cpus} is out of range 1..{self.max_cpus} for board {self.name}")
        if cfg.memory > self.max_memory:
            raise ConfigError(f"memory: {format_size(cfg.memory)} is more than board {self.name}'s "
                              f"{format_size(self.max_memory)}")
        self.image = parse_elf(read_image(cfg.kernel, "program"), cfg.kernel)
        end = RAM_BASE + cfg.memory
        for paddr, _body, memsz in self.image.segments:
            if not (RAM_BASE <= paddr and paddr + memsz <= end):
                raise ConfigError(f"kernel: {cfg.kernel}: segment [{paddr:#x}, +{memsz:#x}) is outside RAM "
                                  f"[{RAM_BASE:#x}, {end:#x}) (more --mem?)")

    def engine_args(self) -> dict[str, Any]:
        """Every hart starts at the program's entry."""
        return {"reset_pc": self.image.entry, "clint_base": CLINT_BASE}

    def attach_platform(self, b: Builder) -> None:
        """HTIF on the ``tohost`` word (a RAM word: the engine exits on stores to it, no MMIO window)."""
        vm = b.vm
        vm.halt_is_stuck = True
        vm.max_insns = self.cfg.max_insns
        tohost = self.image.symbols.get("tohost")
        if tohost is None:
            return
        if not b.mem.contains(tohost, 8):
            raise ConfigError(f"kernel: {self.cfg.kernel}: tohost {tohost:#x} is not in RAM")
        self.htif = Htif(b.mem, tohost, self.image.symbols.get("fromhost"), b.console.write,
                         on_exit=lambda code: vm.power_event("exit", code))
        b.engine.tohost = tohost
        vm.bus.register(tohost, 8, self.htif, "htif")
        b.add_device("htif", self.htif)

    def virtio_slot(self, b: Builder, index: int) -> tuple[int, int, Callable[[bool], None]]:
        raise ConfigError(f"board {self.name} has no virtio slots (no disks, NICs or rng)")

    def finish(self, b: Builder) -> None:
        """The segments into RAM (zero-filled beyond their file bytes)."""
        for paddr, body, memsz in self.image.segments:
            b.mem.write(paddr, body)
            if memsz > len(body):
                b.mem.write(paddr + len(body), bytes(memsz - len(body)))


BOARD = RiscvSpikeBoard
