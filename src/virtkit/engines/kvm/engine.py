"""The KVM engine: guest code runs on the host CPU through ``/dev/kvm``; the machine's devices answer its
exits, exactly as they answer the software core's (kvmtool's ``kvm_cpu__start``, one switch over exit
reasons).

One VM file descriptor, one per vCPU with its mmap'ed ``kvm_run`` area, and one host thread per vCPU
(:attr:`KvmEngine.threads`). Guest RAM is the machine's :class:`~virtkit.machine.memory.GuestMemory`
handed to KVM as memory slot 0, so device DMA is unchanged. The in-kernel interrupt controllers (PIC,
IOAPIC, LAPIC) and the PIT are used where the host offers them; then HLT and timers never leave the
kernel and a device's interrupt is ``KVM_IRQ_LINE``. ``request_exit`` sets ``immediate_exit`` in every
``kvm_run`` and sends each vCPU thread a signal, so a ``KVM_RUN`` blocked in the kernel returns."""

from __future__ import annotations

import base64
import ctypes
import errno
import fcntl
import mmap
import os
import signal
import struct
import threading
from collections import Counter
from typing import Any

import numpy as np

from virtkit.engines.kvm import api as k
from virtkit.engines.kvm.api import KvmError
from virtkit.machine.engine import ExitReason, RawExit
from virtkit.machine.state import StateError, fields, record

#: the signal that kicks a vCPU thread out of KVM_RUN (its handler does nothing)
KICK = signal.SIGRTMIN + 3
TSS_ADDR = 0xFFFB_D000  # three pages below the BIOS area, as QEMU puts them (VMX needs them; PVM ignores them)
IDENTITY_MAP_ADDR = 0xFFFB_C000
MEM_LOG_DIRTY_PAGES = 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
_libc.ioctl.restype = ctypes.c_int

_IO_HEAD = struct.Struct("<BBHIQ")  # kvm_run.io: direction, size, port, count, data_offset
_MMIO_HEAD = struct.Struct("<Q8sIB")  # kvm_run.mmio: phys_addr, data[8], len, is_write
_U32 = struct.Struct("<I")

#: CPU options of the ``host`` model (``--cpu host,x2apic=off``): the CPUID bit each one turns on or off
CPUID_OPTIONS = {"x2apic": (1, 0, "ecx", 21), "cx16": (1, 0, "ecx", 13), "avx": (1, 0, "ecx", 28),
                 "avx2": (7, 0, "ebx", 5), "hypervisor": (1, 0, "ecx", 31), "pdpe1gb": (0x80000001, 0, "edx", 26)}


def _ioctl_ulong(fd: int, request: int, value: int, what: str) -> None:
    if _libc.ioctl(fd, request, value) < 0:
        raise KvmError(f"{what}: {os.strerror(ctypes.get_errno())}")


def _kick_handler(signum: int, frame: Any) -> None:
    """Nothing: the signal only makes KVM_RUN return (EINTR)."""


def _install_kick() -> bool:
    if threading.current_thread() is not threading.main_thread():
        return signal.getsignal(KICK) not in (signal.SIG_DFL, signal.SIG_IGN, None)
    signal.signal(KICK, _kick_handler)
    signal.siginterrupt(KICK, True)
    return True


class Vcpu:
    """One vCPU: its fd, its ``kvm_run`` area, the exit being answered."""

    def __init__(self, index: int, fd: int, run: mmap.mmap) -> None:
        self.index, self.fd, self.run = index, fd, run
        self.runarr: np.ndarray | None = np.frombuffer(run, dtype=np.uint8)  # (the compiled loop's view)
        self.handled = np.zeros(1, dtype=np.int64)  # exits the compiled loop answered
        self.tid: int | None = None
        self.queued: list[RawExit] = []  # string port I/O (rep ins/outs): one exit per element
        self.read_at: list[int] = []  # where in kvm_run each pending read's value goes
        self.read_size = 0


class KvmEngine:
    """The engine contract (:mod:`virtkit.machine.engine`) on ``/dev/kvm``, x86-64."""

    name = "kvm"
    STATE_KIND = "kvm-engine"
    STATE_VERSION = 1

    def __init__(self, mem: Any, nvcpus: int = 1, *, irqchip: bool = True, cpu: str = "host") -> None:
        from virtkit.engines.kvm.host import kind

        self.mem, self.nvcpus, self.threads = mem, nvcpus, nvcpus
        self.host = kind()
        self.kvm = _open_kvm()
        self.vm_fd = -1
        self.vcpus: list[Vcpu] = []
        self.exits: Counter[str] = Counter()
        self._paused_clock: int | None = None
        self._dirty_logging = False
        self.kick_ok = _install_kick()
        #: ports whose writes are dropped and reads give all ones, answered in the compiled loop
        self.sinks = np.zeros(1 << 16, dtype=np.bool_)
        self._fast = _fast_loop()
        try:
            self._create(irqchip, cpu)
        except BaseException:
            self.close()
            raise

    # -- creation ----------------------------------------------------------------------------------------
    def _create(self, irqchip: bool, cpu: str) -> None:
        kvm = self.kvm
        version = k.ioctl(kvm, k.GET_API_VERSION, 0, "KVM_GET_API_VERSION")
        if version != k.KVM_API_VERSION:
            raise KvmError(f"/dev/kvm speaks API version {version}; virtkit speaks {k.KVM_API_VERSION}")
        for cap, what in ((k.CAP_USER_MEMORY, "user memory slots"), (k.CAP_IMMEDIATE_EXIT, "immediate exit"),
                          (k.CAP_EXT_CPUID, "KVM_GET_SUPPORTED_CPUID")):
            if not k.check_extension(kvm, cap):
                raise KvmError(f"this host's KVM lacks {what} (KVM_CHECK_EXTENSION), which the engine needs")
        most = k.check_extension(kvm, k.CAP_MAX_VCPUS) or k.check_extension(kvm, k.CAP_NR_VCPUS) or 1
        if self.nvcpus > most:
            raise KvmError(f"{self.nvcpus} vCPUs: this host's KVM allows at most {most}")
        self.vm_fd = k.ioctl(kvm, k.CREATE_VM, 0, "KVM_CREATE_VM")
        if k.check_extension(kvm, k.CAP_SET_TSS_ADDR):
            _ioctl_ulong(self.vm_fd, k.SET_TSS_ADDR, TSS_ADDR, "KVM_SET_TSS_ADDR")
        self.irqchip = bool(irqchip and k.check_extension(kvm, k.CAP_IRQCHIP))
        self.pit = False
        if self.irqchip:
            k.ioctl(self.vm_fd, k.CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP")
            if k.check_extension(kvm, k.CAP_PIT2):
                k.ioctl(self.vm_fd, k.CREATE_PIT2, k.PitConfig(), "KVM_CREATE_PIT2")
                self.pit = True
        self._set_memory(0)
        size = k.ioctl(kvm, k.GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")
        cpuid = self._cpuid(cpu)
        for i in range(self.nvcpus):
            fd = k.ioctl(self.vm_fd, k.CREATE_VCPU, i, "KVM_CREATE_VCPU")
            try:
                run = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            except OSError:
                os.close(fd)
                raise
            self.vcpus.append(Vcpu(i, fd, run))
            self._set_cpuid(i, cpuid)

    def _set_memory(self, flags: int) -> None:
        region = k.UserspaceMemoryRegion(0, flags, self.mem.base, self.mem.size, self.mem.address)
        k.ioctl(self.vm_fd, k.SET_USER_MEMORY_REGION, region, "KVM_SET_USER_MEMORY_REGION")

    def _cpuid(self, spec: str) -> k.Cpuid2:
        """The host's supported CPUID, changed by the CPU options (``host,x2apic=off``)."""
        c = k.Cpuid2(nent=k.MAX_CPUID)
        k.ioctl(self.kvm, k.GET_SUPPORTED_CPUID, c, "KVM_GET_SUPPORTED_CPUID")
        opts = spec.split(",")[1:]
        if self.host["kind"] == "pvm" and not any(o.startswith("cx16=") for o in opts):
            # kvm_pvm's emulator of ring-0 code cannot run cmpxchg16b (Linux's SLUB uses it when CPUID says
            # CX16): the guest is told there is none unless asked for
            opts.append("cx16=off")
        for opt in opts:
            key, _, val = opt.partition("=")
            leaf, sub, reg, bit = CPUID_OPTIONS[key]
            on = val.lower() in ("on", "true", "yes")
            for e in c.entries[:c.nent]:
                if e.function == leaf and e.index == sub:
                    v = getattr(e, reg)
                    setattr(e, reg, v | (1 << bit) if on else v & ~(1 << bit))
        self.cpuid_options = spec
        return c

    def _set_cpuid(self, index: int, base: k.Cpuid2) -> None:
        c = k.Cpuid2()
        ctypes.memmove(ctypes.addressof(c), ctypes.addressof(base), ctypes.sizeof(base))
        for e in c.entries[:c.nent]:
            if e.function == 1:  # the initial APIC ID, and how many logical CPUs share the package
                e.ebx = (e.ebx & 0x0000FFFF) | (index << 24) | (max(self.nvcpus, 1) << 16)
            elif e.function in (0xB, 0x1F):
                e.edx = index
        k.ioctl(self.vcpus[index].fd, k.SET_CPUID2, c, "KVM_SET_CPUID2")

    # -- registers ----------------------------------------------------------------------------------------
    def get_regs(self, vcpu: int = 0) -> k.Regs:
        """The general registers of ``vcpu``."""
        r = k.Regs()
        k.ioctl(self.vcpus[vcpu].fd, k.GET_REGS, r, "KVM_GET_REGS")
        return r

    def set_regs(self, vcpu: int, regs: k.Regs) -> None:
        """Set the general registers of ``vcpu``."""
        k.ioctl(self.vcpus[vcpu].fd, k.SET_REGS, regs, "KVM_SET_REGS")

    def get_sregs(self, vcpu: int = 0) -> k.Sregs:
        """The special registers (segments, descriptor tables, control registers, EFER)."""
        s = k.Sregs()
        k.ioctl(self.vcpus[vcpu].fd, k.GET_SREGS, s, "KVM_GET_SREGS")
        return s

    def set_sregs(self, vcpu: int, sregs: k.Sregs) -> None:
        """Set the special registers."""
        k.ioctl(self.vcpus[vcpu].fd, k.SET_SREGS, sregs, "KVM_SET_SREGS")

    def get_msrs(self, vcpu: int, indices: list[int]) -> dict[int, int]:
        """Read MSRs of ``vcpu`` (KVM_GET_MSRS); the ones KVM does not know are left out."""
        m = k.Msrs(nmsrs=len(indices))
        for i, idx in enumerate(indices):
            m.entries[i].index = idx
        n = k.ioctl(self.vcpus[vcpu].fd, k.GET_MSRS, m, "KVM_GET_MSRS")
        return {m.entries[i].index: m.entries[i].data for i in range(n)}

    def set_msrs(self, vcpu: int, values: dict[int, int]) -> int:
        """Write MSRs of ``vcpu``; how many KVM took."""
        m = k.Msrs(nmsrs=len(values))
        for i, (idx, val) in enumerate(values.items()):
            m.entries[i].index, m.entries[i].data = idx, val
        return k.ioctl(self.vcpus[vcpu].fd, k.SET_MSRS, m, "KVM_SET_MSRS")

    def set_mp_state(self, vcpu: int, state: int) -> None:
        """KVM_SET_MP_STATE (application processors wait for INIT/SIPI: ``MP_STATE_UNINITIALIZED``)."""
        k.ioctl(self.vcpus[vcpu].fd, k.SET_MP_STATE, k.MpState(state), "KVM_SET_MP_STATE")

    def describe_vcpu(self, vcpu: int) -> str:
        """The registers of ``vcpu`` in one line (for errors the guest caused)."""
        try:
            r, s = self.get_regs(vcpu), self.get_sregs(vcpu)
        except KvmError as err:
            return f"(registers unreadable: {err})"
        return (f"rip={r.rip:#x} rsp={r.rsp:#x} rflags={r.rflags:#x} rax={r.rax:#x} cs={s.cs.selector:#x} "
                f"cr0={s.cr0:#x} cr2={s.cr2:#x} cr3={s.cr3:#x} cr4={s.cr4:#x} efer={s.efer:#x}")

    # -- the engine contract -------------------------------------------------------------------------------
    def add_mmio_region(self, base: int, size: int) -> None:
        """Nothing to do: every guest-physical address outside the memory slot exits as MMIO."""

    def add_sink_port(self, port: int, size: int = 1) -> None:
        """Ports ``[port, port+size)`` need no device model: their writes are dropped and reads give all ones
        in the compiled run loop, without a trip through Python (the POST port 0x80)."""
        self.sinks[port:port + size] = True

    def run(self, budget: int, vcpu: int = 0) -> RawExit:
        """Run ``vcpu`` until an exit KVM hands to user space; ``budget`` is only a hint here."""
        v = self.vcpus[vcpu]
        if v.queued:
            return v.queued.pop(0)
        if v.tid is None:
            v.tid = threading.get_ident()
        run = v.run
        if self._fast is not None:
            reason = self._fast[0](v.fd, k.RUN, v.runarr, self.sinks, v.handled)
            failed = self._fast[1]() if reason < 0 else 0
        else:
            try:
                fcntl.ioctl(v.fd, k.RUN, 0)
                failed = 0
            except OSError as err:
                failed = err.errno or errno.EIO
            reason = -1 if failed else _U32.unpack_from(run, k.RUN_EXIT_REASON)[0]
        if failed:
            run[k.RUN_IMMEDIATE_EXIT] = 0
            if failed in (errno.EINTR, errno.EAGAIN):
                self.exits["INTR"] += 1
                return RawExit(ExitReason.BUDGET, vcpu, 0, 0, 0)
            return RawExit(ExitReason.INTERNAL_ERROR, vcpu, 0, 0, 0,
                           f"KVM_RUN failed: {os.strerror(failed)}; {self.describe_vcpu(vcpu)}")
        if reason == k.EXIT_IO:
            self.exits["IO"] += 1
            return self._io(v)
        if reason == k.EXIT_MMIO:
            self.exits["MMIO"] += 1
            addr, data, length, is_write = _MMIO_HEAD.unpack_from(run, k.RUN_UNION)
            if is_write:
                return RawExit(ExitReason.MMIO_WRITE, vcpu, addr, length, int.from_bytes(data[:length], "little"))
            v.read_at, v.read_size = [k.RUN_UNION + 8], length
            return RawExit(ExitReason.MMIO_READ, vcpu, addr, length, 0)
        name = k.EXIT_NAMES.get(reason, str(reason))
        self.exits[name] += 1
        if reason == k.EXIT_HLT:
            return RawExit(ExitReason.HALT, vcpu, 0, 0, 0)
        if reason in (k.EXIT_INTR, k.EXIT_IRQ_WINDOW_OPEN):
            return RawExit(ExitReason.BUDGET, vcpu, 0, 0, 0)
        if reason == k.EXIT_SHUTDOWN:  # a triple fault: the CPU resets (QEMU -no-reboot ends there too)
            return RawExit(ExitReason.RESET, vcpu, 0, 0, 0, f"triple fault on vCPU {vcpu}: {self.describe_vcpu(vcpu)}")
        if reason == k.EXIT_SYSTEM_EVENT:
            kind = _U32.unpack_from(run, k.RUN_UNION)[0]
            if kind == k.SYSTEM_EVENT_SHUTDOWN:
                return RawExit(ExitReason.SHUTDOWN, vcpu, 0, 0, 0)
            if kind == k.SYSTEM_EVENT_RESET:
                return RawExit(ExitReason.RESET, vcpu, 0, 0, 0)
            return RawExit(ExitReason.INTERNAL_ERROR, vcpu, 0, 0, 0, f"the guest crashed (system event {kind})")
        if reason == k.EXIT_DEBUG:
            return RawExit(ExitReason.DEBUG, vcpu, 0, 0, 0)
        detail = ""
        if reason == k.EXIT_INTERNAL_ERROR:
            detail = f" (suberror {_U32.unpack_from(run, k.RUN_UNION)[0]})"
        elif reason == k.EXIT_FAIL_ENTRY:
            detail = f" (hardware entry failure {struct.unpack_from('<Q', run, k.RUN_UNION)[0]:#x})"
        return RawExit(ExitReason.INTERNAL_ERROR, vcpu, 0, 0, 0,
                       f"KVM exit {name}{detail} on vCPU {vcpu}: {self.describe_vcpu(vcpu)}")

    def _io(self, v: Vcpu) -> RawExit:
        run = v.run
        direction, size, port, count, off = _IO_HEAD.unpack_from(run, k.RUN_UNION)
        if count == 1:  # (nearly always: one exit, no lists)
            if direction == k.IO_OUT:
                return RawExit(ExitReason.PIO_WRITE, v.index, port, size, int.from_bytes(run[off:off + size], "little"))
            v.read_at, v.read_size = [off], size
            return RawExit(ExitReason.PIO_READ, v.index, port, size, 0)
        if direction == k.IO_OUT:
            exits = [RawExit(ExitReason.PIO_WRITE, v.index, port, size,
                             int.from_bytes(run[off + i * size:off + (i + 1) * size], "little"))
                     for i in range(count)]
        else:
            v.read_at, v.read_size = [off + i * size for i in range(count)], size
            exits = [RawExit(ExitReason.PIO_READ, v.index, port, size, 0) for _ in range(count)]
        v.queued = exits[1:]
        return exits[0]

    def complete_read(self, vcpu: int, value: int) -> None:
        """The value of the pending port or MMIO read (string reads: one call per element)."""
        v = self.vcpus[vcpu]
        at = v.read_at.pop(0)
        v.run[at:at + v.read_size] = (value & ((1 << (8 * v.read_size)) - 1)).to_bytes(v.read_size, "little")

    def request_exit(self) -> None:
        """Make every vCPU's ``run`` return soon: immediate_exit, and a signal for a thread in the kernel."""
        for v in self.vcpus:
            try:
                v.run[k.RUN_IMMEDIATE_EXIT] = 1
            except ValueError:  # (closed)
                continue
            if v.tid is not None and self.kick_ok:
                try:
                    signal.pthread_kill(v.tid, KICK)
                except (ProcessLookupError, OSError):
                    pass

    def set_irq(self, vcpu: int, line: int, level: bool) -> None:
        """An interrupt line: with the in-kernel irqchip a GSI (the CPU is not named); without, not wired."""
        self.set_gsi(line, level)

    def set_gsi(self, gsi: int, level: bool) -> None:
        """Drive global interrupt ``gsi`` (IOAPIC pin; 0-15 also reach the PIC) through KVM_IRQ_LINE."""
        if not self.irqchip:
            raise KvmError("this VM has no in-kernel interrupt controller: device interrupts cannot be delivered")
        k.ioctl(self.vm_fd, k.IRQ_LINE, k.IrqLevel(gsi, int(bool(level))), "KVM_IRQ_LINE")

    def next_timer_deadline(self) -> float | None:
        """None: timers live in the kernel (LAPIC timer, PIT) and wake a halted vCPU there."""
        return None

    def pause_clock(self) -> None:
        """Freeze the guest's kvmclock while the VM is paused."""
        c = k.ClockData()
        try:
            k.ioctl(self.vm_fd, k.GET_CLOCK, c, "KVM_GET_CLOCK")
            self._paused_clock = c.clock
        except KvmError:
            self._paused_clock = None

    def resume_clock(self, catch_up: bool = False) -> None:
        """Guest time goes on from where it stopped (or, with ``catch_up``, jumps over the pause)."""
        if self._paused_clock is not None and not catch_up:
            try:
                k.ioctl(self.vm_fd, k.SET_CLOCK, k.ClockData(clock=self._paused_clock), "KVM_SET_CLOCK")
            except KvmError:
                pass
        self._paused_clock = None

    def stats(self) -> dict[str, Any]:
        """Exits by KVM's reason (IO, MMIO, HLT, INTR, ...), the host kind; no instruction count (KVM has none)."""
        exits = dict(self.exits)
        fast = sum(int(v.handled[0]) for v in self.vcpus)
        if fast:
            exits["IO"] = exits.get("IO", 0) + fast
        return {"exits": exits, "exits_in_compiled_loop": fast, "host": self.host["kind"],
                "kvm_module": self.host["module"], "irqchip": self.irqchip, "pit": self.pit, "vcpus": self.nvcpus,
                "compiled_loop": self._fast is not None}

    # -- dirty tracking (snapshots and live migration) ------------------------------------------------------
    def dirty_log_clear(self) -> None:
        """Start a dirty log: KVM logs the guest's writes to the slot, devices' DMA goes to ``mem.dirty``."""
        if not self._dirty_logging:
            self._set_memory(MEM_LOG_DIRTY_PAGES)
            self._dirty_logging = True
        self._fetch_bitmap()
        self.mem.dirty[:] = 0

    def _fetch_bitmap(self) -> np.ndarray:
        pages = self.mem.size // mmap.PAGESIZE
        bitmap = np.zeros(-(-pages // 64), dtype=np.uint64)
        k.ioctl(self.vm_fd, k.GET_DIRTY_LOG, k.DirtyLog(0, 0, int(bitmap.ctypes.data)), "KVM_GET_DIRTY_LOG")
        return np.unpackbits(bitmap.view(np.uint8), bitorder="little")[:pages].astype(bool)

    def dirty_log_fetch(self) -> np.ndarray:
        """The pages written since the last fetch (bool per page: KVM's log and DMA's), and a new log."""
        if not self._dirty_logging:
            self.dirty_log_clear()
            return np.ones(self.mem.size // mmap.PAGESIZE, dtype=bool)
        d = self._fetch_bitmap() | (self.mem.dirty != 0)
        self.mem.dirty[:] = 0
        return d

    # -- state (snapshots) ------------------------------------------------------------------------------------
    def save(self) -> dict:
        """Every vCPU's registers, special registers, FPU/XSAVE, MSRs, LAPIC, MP state and pending events,
        the interrupt controllers, the PIT and the clock (between runs, the VM paused)."""
        def blob(fd: int, req: int, cls: type, what: str) -> str:
            obj = cls()
            k.ioctl(fd, req, obj, what)
            return base64.b64encode(bytes(obj)).decode()

        vcpus = []
        for v in self.vcpus:
            if v.read_at or v.queued:
                raise StateError("the KVM engine is in the middle of an I/O exit: save between runs")
            vcpus.append({
                "regs": blob(v.fd, k.GET_REGS, k.Regs, "KVM_GET_REGS"),
                "sregs": blob(v.fd, k.GET_SREGS, k.Sregs, "KVM_GET_SREGS"),
                "xsave": blob(v.fd, k.GET_XSAVE, k.Xsave, "KVM_GET_XSAVE"),
                "lapic": blob(v.fd, k.GET_LAPIC, k.LapicState, "KVM_GET_LAPIC") if self.irqchip else None,
                "mp_state": blob(v.fd, k.GET_MP_STATE, k.MpState, "KVM_GET_MP_STATE"),
                "events": blob(v.fd, k.GET_VCPU_EVENTS, k.VcpuEvents, "KVM_GET_VCPU_EVENTS"),
                "msrs": {str(i): val for i, val in self.get_msrs(v.index, SAVED_MSRS).items()},
            })
        chips = []
        if self.irqchip:
            for chip in range(3):
                c = k.Irqchip(chip_id=chip)
                k.ioctl(self.vm_fd, k.GET_IRQCHIP, c, "KVM_GET_IRQCHIP")
                chips.append(base64.b64encode(bytes(c)).decode())
        clock = k.ClockData()
        k.ioctl(self.vm_fd, k.GET_CLOCK, clock, "KVM_GET_CLOCK")
        return record(self, vcpus=vcpus, irqchips=chips, clock=clock.clock, ram_size=self.mem.size,
                      cpu=self.cpuid_options,
                      pit=blob(self.vm_fd, k.GET_PIT2, k.PitState2, "KVM_GET_PIT2") if self.pit else None)

    def restore(self, state: dict) -> None:
        """Take a saved state (same vCPUs, RAM and devices)."""
        fields(self, state)  # (its kind and version)
        if len(state.get("vcpus", [])) != self.nvcpus or state.get("ram_size") != self.mem.size:
            raise StateError(f"the saved KVM machine has {len(state.get('vcpus', []))} vCPUs and "
                             f"{state.get('ram_size')} bytes of RAM; this one {self.nvcpus} and {self.mem.size}")

        def put(fd: int, req: int, cls: type, data: str | None, what: str) -> None:
            if data is None:
                return
            raw = base64.b64decode(data)
            if len(raw) != ctypes.sizeof(cls):
                raise StateError(f"KVM engine state: {what} has {len(raw)} bytes, expected {ctypes.sizeof(cls)}")
            k.ioctl(fd, req, cls.from_buffer_copy(raw), what)

        try:
            if self.irqchip:
                for data in state.get("irqchips", []):
                    put(self.vm_fd, k.SET_IRQCHIP, k.Irqchip, data, "KVM_SET_IRQCHIP")
            if self.pit:
                put(self.vm_fd, k.SET_PIT2, k.PitState2, state.get("pit"), "KVM_SET_PIT2")
            for v, s in zip(self.vcpus, state["vcpus"], strict=True):
                put(v.fd, k.SET_SREGS, k.Sregs, s["sregs"], "KVM_SET_SREGS")
                put(v.fd, k.SET_REGS, k.Regs, s["regs"], "KVM_SET_REGS")
                put(v.fd, k.SET_XSAVE, k.Xsave, s["xsave"], "KVM_SET_XSAVE")
                self.set_msrs(v.index, {int(i): int(val) for i, val in s.get("msrs", {}).items()})
                if self.irqchip:
                    put(v.fd, k.SET_LAPIC, k.LapicState, s.get("lapic"), "KVM_SET_LAPIC")
                put(v.fd, k.SET_MP_STATE, k.MpState, s["mp_state"], "KVM_SET_MP_STATE")
                put(v.fd, k.SET_VCPU_EVENTS, k.VcpuEvents, s["events"], "KVM_SET_VCPU_EVENTS")
            k.ioctl(self.vm_fd, k.SET_CLOCK, k.ClockData(clock=int(state["clock"])), "KVM_SET_CLOCK")
        except (KeyError, TypeError, ValueError) as err:
            raise StateError(f"KVM engine state: {err}") from None

    def close(self) -> None:
        """Release the vCPUs, the VM and /dev/kvm."""
        for v in self.vcpus:
            v.runarr = None
            try:
                v.run.close()
            except (BufferError, ValueError):
                pass
            os.close(v.fd)
        self.vcpus = []
        for fd in (self.vm_fd, self.kvm):
            if fd >= 0:
                os.close(fd)
        self.vm_fd = self.kvm = -1


#: MSRs a snapshot keeps (the SYSCALL/SYSENTER set, TSC, PAT, the kvmclock and APIC base)
SAVED_MSRS = [0x10, 0x1B, 0x174, 0x175, 0x176, 0x277, 0xC0000080, 0xC0000081, 0xC0000082, 0xC0000083,
              0xC0000084, 0xC0000100, 0xC0000101, 0xC0000102, 0xC0000103, 0x4B564D00, 0x4B564D01]


def _fast_loop() -> tuple[Any, Any] | None:
    """The compiled run loop and its errno reader, or None where Numba cannot provide it
    (``VIRTKIT_KVM_PYTHON_LOOP=1`` asks for the plain Python loop, to compare)."""
    if os.environ.get("VIRTKIT_KVM_PYTHON_LOOP"):
        return None
    try:
        from virtkit.engines.kvm import fastrun
    except Exception:  # noqa: BLE001 (no Numba, or it cannot compile here: the Python loop works too)
        return None
    return fastrun.run_loop, fastrun.errno


def _open_kvm() -> int:
    """/dev/kvm, or a KvmError that says what is wrong with it."""
    try:
        return os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KvmError("/dev/kvm does not exist: this host has no KVM (load kvm_intel or kvm_amd, or run where "
                       "hardware virtualization is offered; --engine riscv needs none)") from None
    except PermissionError:
        raise KvmError("/dev/kvm: permission denied (add this user to the kvm group, or run as root)") from None
    except OSError as err:
        raise KvmError(f"/dev/kvm: {err.strerror}") from None
