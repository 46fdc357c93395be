"""One builder turns a :class:`~virtkit.machine.config.MachineConfig` into a running machine.

``build(cfg)`` is the only place that assembles a VM (Firecracker's ``builder.rs``, kvmtool's
``builtin-run.c``): it asks the board to check the config and read its images (before anything is
allocated), allocates guest memory, opens the host resources that can fail (disks, TAP devices, switch
ports), creates the engine, lets the board attach its platform devices, attaches the virtio devices
(one ``attach_*`` per kind) in the board's slots, and lets the board load the images and set the boot
registers. It owns the device list, the closers and the I/O wiring; when any step fails, everything
opened so far is released.

The board (``virtkit/boards/<module>.py``) supplies only what is board-specific: :class:`Board`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from virtkit.errors import ConfigError
from virtkit.machine.bus import Bus
from virtkit.machine.config import DiskConfig, MachineConfig, NicConfig
from virtkit.machine.console import ConsoleHub
from virtkit.machine.engine import create_engine, engine_module
from virtkit.machine.memory import GuestMemory
from virtkit.machine.vm import RunResult, Vm


class Board(Protocol):
    """What a board module's ``BOARD`` class provides (see ``boards/riscv_virt.py``)."""

    name: str
    #: engines that can run this board
    engines: tuple[str, ...]
    max_cpus: int
    min_memory: int
    max_memory: int
    #: the kernel command line when the config gives none
    default_cmdline: str
    ram_base: int
    #: run-loop budget (instructions between host-side checks)
    budget: int
    #: number of virtio slots (0: the board takes no disks or NICs)
    virtio_slots: int

    def __init__(self, cfg: MachineConfig) -> None: ...

    def prepare(self) -> None:
        """Check the config against the board and read every image (errors before anything is allocated)."""

    def engine_args(self) -> dict[str, Any]:
        """Board facts the engine needs (reset address, where in-core devices live)."""

    def attach_platform(self, b: Builder) -> None:
        """Create and map the platform devices (interrupt controller, console, RTC, power)."""

    def virtio_slot(self, b: Builder, index: int) -> tuple[int, int, Callable[[bool], None]]:
        """Where virtio slot ``index`` lives: (MMIO base, window size, interrupt line)."""

    def finish(self, b: Builder) -> None:
        """Write the device tree / tables, load the images, set the boot registers."""


@dataclass
class Machine:
    """A built VM, ready to :meth:`run`: what the builder made, by name."""

    cfg: MachineConfig
    board: Any
    mem: GuestMemory
    engine: Any
    vm: Vm
    console: ConsoleHub
    #: ``(name, device)`` for every device, in the order they were attached
    devices: list[tuple[str, Any]] = field(default_factory=list)
    #: the serial console device (``feed`` for input), when the board has one
    serial: Any = None
    #: the virtio devices in slot order
    virtio: list[Any] = field(default_factory=list)
    #: what the build noticed and the user should hear (a disk probed as raw...)
    warnings: list[str] = field(default_factory=list)

    def run(self, timeout: float | None = None) -> RunResult:
        """Run until the guest powers off (or ``timeout``); then release everything."""
        return self.vm.run(timeout)

    def device(self, name: str) -> Any:
        """The device attached as ``name``."""
        for n, d in self.devices:
            if n == name:
                return d
        raise KeyError(name)

    def save_state(self) -> dict:
        """The engine's and every device's record (virtkit.machine.state); the VM must be paused or not
        started, so nothing changes while it is read."""
        if self.vm.state not in ("created", "paused", "stopped"):
            raise ConfigError(f"the VM is {self.vm.state}: pause it before saving its state")
        return {"engine": self.engine.save(), "devices": {name: dev.save() for name, dev in self.devices}}

    def restore_state(self, state: dict) -> None:
        """Take the records :meth:`save_state` returned (same board and devices); interrupt controllers
        last, so the lines they re-drive are the restored ones."""
        from virtkit.machine.state import StateError

        if self.vm.state not in ("created", "paused"):
            raise ConfigError(f"the VM is {self.vm.state}: pause it before restoring a state")
        devs = state.get("devices", {})
        # a device new since the snapshot was taken, whose state may start fresh (the generation ID), is no
        # reason to refuse it
        mine = [n for n, d in self.devices if n in devs or not getattr(d, "STATE_OPTIONAL", False)]
        if sorted(devs) != sorted(mine):
            raise StateError(f"the saved machine has devices {', '.join(sorted(devs)) or 'none'}; this one has "
                             f"{', '.join(sorted(mine))}")
        self.engine.restore(state["engine"])
        for name, dev in sorted(self.devices, key=lambda nd: nd[0] == "plic"):
            if name in devs:
                dev.restore(devs[name])

    def new_generation(self) -> None:
        """The VM may now exist twice or have been rewound (a clone, a restored snapshot): tell the guest
        through every device that can (the VM generation ID; a migration does not call this)."""
        for _, dev in self.devices:
            fn = getattr(dev, "new_generation", None)
            if fn is not None:
                fn()

    def disks(self) -> list[Any]:
        """The virtio-blk devices, in ``cfg.disks`` order (each holds its backend in ``.backend``)."""
        from virtkit.devices.virtio.blk import VirtioBlk

        return [d for d in self.virtio if isinstance(d, VirtioBlk)]

    def open_deferred_disks(self) -> None:
        """Open the disks built as stand-ins (see ``Builder(deferred_disks=...)``); on failure the ones
        opened are closed again and the stand-ins stay."""
        from virtkit.storage import open_disk
        from virtkit.storage.backend import DeferredDisk

        opened: list[tuple[Any, Any]] = []
        try:
            for blk, dc in zip(self.disks(), self.cfg.disks, strict=True):
                if isinstance(blk.backend, DeferredDisk):
                    real = open_disk(dc.path, read_only=dc.read_only, fmt=dc.format, owner=self.cfg.name)
                    opened.append((blk, real))
                    if real.size != blk.backend.size:
                        raise ConfigError(f"disk {dc.path}: {real.size} bytes here, {blk.backend.size} at the source")
        except BaseException:
            for _, real in opened:
                real.close()
            raise
        for blk, real in opened:
            blk.backend = real

    def taps(self) -> list[Any]:
        """The TAP devices behind the NICs."""
        from virtkit.network.tap import Tap

        return [d.backend for d in self.virtio if isinstance(getattr(d, "backend", None), Tap)]

    def attach_taps(self) -> None:
        """The migration target takes the TAP queues over (the source has detached its own)."""
        for t in self.taps():
            t.attach()

    def announce(self, rounds: int = 5, first: float = 0.05, step: float = 0.1) -> None:
        """Each NIC announces its MAC ``rounds`` times (now, then after ``first``, ``first + step``...
        seconds, as QEMU's announce-self does after a migration or a restore), in the background: the
        switch learns at once that the guest now lives behind this process's port."""
        import threading

        from virtkit.devices.virtio.net import VirtioNet

        nics = [d for d in self.virtio if isinstance(d, VirtioNet)]
        if not nics or rounds < 1:
            return

        def go(left: int, delay: float) -> None:
            for n in nics:
                n.announce()
            if left > 1:
                t = threading.Timer(delay, go, (left - 1, delay + step))
                t.daemon = True
                t.start()

        go(rounds, first)

    def stats(self) -> dict[str, Any]:
        """Engine, bus and device counters."""
        s = self.vm.stats()
        s["devices"] = {f"{d.name}{i}": d.stats() for i, d in enumerate(self.virtio)}
        if self.serial is not None:
            s["uart"] = {"tx_bytes": self.serial.tx_bytes, "rx_bytes": self.serial.rx_bytes}
            for key in ("rx_pending", "ier", "lsr_errors", "_level"):  # (where input waits, what interrupts)
                if hasattr(self.serial, key):
                    s["uart"][key.lstrip("_")] = getattr(self.serial, key)
        for name, dev in self.devices:
            if name == "sbi":
                s["sbi_calls"] = dev.stats()
        return s


class Builder:
    """The state of one build: the board calls back into it (``attach_mmio``, ``add_device``...)."""

    def __init__(self, cfg: MachineConfig, console: ConsoleHub | None = None, restoring: bool = False,
                 memory: GuestMemory | None = None, deferred_disks: list[dict] | None = None) -> None:
        """``restoring``: the machine will take a snapshot's state and RAM, so the board reads no image and
        loads nothing (a snapshot restores without its kernel at hand). ``memory``: guest RAM that exists
        already. ``deferred_disks``: ``[{"size", "read_only"}]`` per disk: the disks are not opened now but
        stand in for themselves until :meth:`Machine.open_deferred_disks` (a migration target builds its
        machine while the source still holds them)."""
        from virtkit.boards import find_board

        self.cfg = cfg
        engine_module(cfg.engine)  # an unknown engine is named before the board's own checks
        board_cls = find_board(cfg.board)
        if cfg.engine not in board_cls.engines:
            raise ConfigError(f"engine: board {cfg.board} runs on {', '.join(board_cls.engines)}, not {cfg.engine!r}")
        self.board = board_cls(cfg)
        self.restoring = restoring
        self.given_memory = memory
        self.deferred_disks = deferred_disks
        if deferred_disks is not None and len(deferred_disks) != len(cfg.disks):
            raise ConfigError("one deferred size per disk is needed")
        if restoring:
            if not getattr(board_cls, "restorable", False):
                raise ConfigError(f"board {cfg.board} cannot be restored from a snapshot")
            self.board.restoring = True
        self.console = console or ConsoleHub()
        self.closers: list[tuple[str, Callable[[], None]]] = []
        self.devices: list[tuple[str, Any]] = []
        self.virtio: list[Any] = []
        self.io_readers: list[tuple[int, Callable[[], None]]] = []
        self.serial: Any = None
        self.warnings: list[str] = []
        self.mem: GuestMemory
        self.engine: Any
        self.vm: Vm

    # -- called by the board -----------------------------------------------------------------------
    def attach_mmio(self, base: int, size: int, device: Any, name: str) -> None:
        """Map ``device`` at ``[base, base+size)`` on the MMIO bus; the engine exits there."""
        self.vm.bus.register(base, size, device, name)
        self.engine.add_mmio_region(base, size)
        self.devices.append((name, device))

    def attach_pio(self, port: int, size: int, device: Any, name: str) -> None:
        """Map ``device`` at I/O ports ``[port, port+size)`` (engines with port I/O)."""
        self.vm.pio.register(port, size, device, name)
        self.devices.append((name, device))

    def add_device(self, name: str, device: Any) -> None:
        """A device without a bus window of its own (e.g. reached through an engine hook)."""
        self.devices.append((name, device))

    def add_closer(self, name: str, fn: Callable[[], None]) -> None:
        """Release ``fn`` when the VM is closed (or when the build fails)."""
        self.closers.append((name, fn))

    def attach_serial(self, device: Any) -> None:
        """Make ``device`` (``feed``, optional ``send_break``/``pump``/``on_input``) the machine's console."""
        self.serial = device
        self.console.input = device.feed
        self.console.send_break = getattr(device, "send_break", None)
        if hasattr(device, "on_input"):
            device.on_input = self.vm.kick
        if hasattr(device, "pump"):
            self.vm.periodic.append(device.pump)

    # -- virtio devices -------------------------------------------------------------------------------
    def _open_disk(self, i: int, d: DiskConfig) -> Any:
        from virtkit.devices.virtio.blk import VirtioBlk
        from virtkit.storage import open_disk

        if self.deferred_disks is not None:
            from virtkit.storage.backend import DeferredDisk

            info = self.deferred_disks[i]
            backend: Any = DeferredDisk(d.path, int(info["size"]), bool(info["read_only"]))
            blk = VirtioBlk(self.mem, backend, serial=d.serial or f"virtkit{i}", werror=d.werror, rerror=d.rerror)
            self.add_closer(f"disk {d.path}", lambda: blk.backend.close())
            self.closers.insert(0, (f"flush disk {d.path}", lambda: _flusher(blk.backend)()))
            return blk
        fmt = d.format
        if fmt is None:
            from virtkit.storage.formats import probe
            from virtkit.storage.pool import is_volume_spec

            if not is_volume_spec(d.path) and probe(d.path).name == "raw":
                self.warnings.append(f"disk {d.path} was given no format and is not qcow2: it is used as raw "
                                     "(say format=raw to silence this)")
                fmt = "raw"
        backend = open_disk(d.path, read_only=d.read_only, fmt=fmt, owner=self.cfg.name)
        try:
            blk = VirtioBlk(self.mem, backend, serial=d.serial or f"virtkit{i}", werror=d.werror, rerror=d.rerror)
        except BaseException:
            backend.close()
            raise
        # the closers reach the backend through the device: a snapshot may switch it to a new overlay
        self.add_closer(f"disk {d.path}", lambda: blk.backend.close())
        self.closers.insert(0, (f"flush disk {d.path}", lambda: _flusher(blk.backend)()))
        return blk

    def open_net_backend(self, n: NicConfig) -> Any:
        """The wire a NIC sends on (a switch port or a TAP device), closed with the VM."""
        if n.backend == "switch":
            from virtkit.network.switchport import SwitchPort

            port = SwitchPort(n.name, vlan=n.vlan, port=n.port, group=n.group)
        else:
            from virtkit.network.tap import Tap

            # a migration target opens the TAP's queue detached: the source's queue serves the guest until the
            # switch-over (Machine.attach_taps)
            port = Tap(n.name, detached=self.deferred_disks is not None)
        self.add_closer(f"NIC {n.backend}:{n.name}", port.close)
        return port

    def _open_nic(self, n: NicConfig) -> Any:
        from virtkit.devices.virtio.net import VirtioNet

        port = self.open_net_backend(n)
        nic = VirtioNet(self.mem, port, n.mac_bytes())
        self.io_readers.append((port.fileno(), nic.poll_backend))
        return nic

    def _virtio_devices(self) -> list[Any]:
        """Disks (vda, vdb, ...), NICs, rng, console: host resources that can fail, opened before the engine."""
        cfg = self.cfg
        nics = [n for n in cfg.nics if n.model == "virtio"]  # the others are the board's platform devices
        count = (len(cfg.disks) + len(nics) + int(cfg.console.virtio)
                 + int(bool(cfg.rng and self.board.virtio_slots)))
        if count > self.board.virtio_slots:
            raise ConfigError(f"too many virtio devices ({count}: disks, NICs, rng, console): board "
                              f"{self.board.name} has {self.board.virtio_slots} slots")
        seen: dict[str, int] = {}
        for i, d in enumerate(cfg.disks):
            key = _disk_identity(d.path)
            if key in seen:
                raise ConfigError(f"disks[{i}]: {d.path!r} is the same image as disks[{seen[key]}] "
                                  f"({cfg.disks[seen[key]].path!r}): a VM can use an image once")
            seen[key] = i
        out: list[Any] = []
        for i, d in enumerate(cfg.disks):
            out.append(self._open_disk(i, d))
        for n in nics:
            out.append(self._open_nic(n))
        if cfg.rng and self.board.virtio_slots:  # the entropy device is a default: boards without slots skip it
            from virtkit.devices.virtio.rng import VirtioRng

            out.append(VirtioRng(self.mem))
        if cfg.console.virtio:
            from virtkit.devices.virtio.console import VirtioConsole

            out.append(VirtioConsole(self.mem, self.console.write))
        return out

    # -- the build ------------------------------------------------------------------------------------
    def build(self) -> Machine:
        """Assemble the machine; on failure release whatever was opened and re-raise."""
        cfg, board = self.cfg, self.board
        board.prepare()
        from virtkit.machine.config import hidden_ram

        ram = cfg.memory + hidden_ram(cfg)  # (under trap and emulate the shadow page tables live above the guest's)
        if self.given_memory is not None:
            if self.given_memory.size != ram or self.given_memory.base != board.ram_base:
                raise ConfigError("the given guest RAM does not match the machine's")
            self.mem = self.given_memory
        else:
            self.mem = GuestMemory(ram, board.ram_base)
        try:
            self.virtio = self._virtio_devices()
            self.engine = create_engine(cfg, self.mem, **board.engine_args())
            self.vm = Vm(self.engine, Bus(), budget=board.budget, name=cfg.name or "")
            board.attach_platform(self)
            from virtkit.devices.virtio.mmio import MmioTransport

            for i in range(board.virtio_slots):
                dev = self.virtio[i] if i < len(self.virtio) else None
                base, size, irq = board.virtio_slot(self, i)
                t = MmioTransport(dev, irq)
                self.attach_mmio(base, size, t, f"virtio{i}" + (f"-{dev.name}" if dev else ""))
                if dev is not None and hasattr(dev, "attach_vm"):
                    dev.attach_vm(self.vm)
            board.finish(self)
        except BaseException:
            for _name, fn in self.closers:
                try:
                    fn()
                except Exception:
                    pass
            close = getattr(getattr(self, "engine", None), "close", None)
            if close is not None:
                close()
            raise
        vm = self.vm
        vm.closers.extend(self.closers)
        vm.closers.append(("console viewers", self.console.close))
        for fd, cb in self.io_readers:
            vm.io.add_reader(fd, cb)
        return Machine(cfg, board, self.mem, self.engine, vm, self.console, self.devices, self.serial, self.virtio,
                       self.warnings)


def build(cfg: MachineConfig, console: ConsoleHub | Callable[[bytes], None] | None = None) -> Machine:
    """Build the machine ``cfg`` describes. ``console`` is a hub, or a callable that receives console output."""
    hub = console if isinstance(console, ConsoleHub) else ConsoleHub()
    if callable(console) and not isinstance(console, ConsoleHub):
        hub.sinks.append(console)
    return Builder(cfg, hub).build()


def _disk_identity(path: str) -> str:
    """What makes two disk specs the same image: the file's device and inode, else the text."""
    import os

    try:
        st = os.stat(path)
        return f"{st.st_dev}:{st.st_ino}"
    except OSError:
        return path


def _flusher(backend: Any) -> Callable[[], None]:
    def flush() -> None:
        if not backend.read_only:
            backend.flush()
    return flush
