"""The KVM API (``Documentation/virt/kvm/api.rst``) for x86-64 through ``ctypes`` and ``fcntl.ioctl``: the
ioctl numbers, the structures they take, and thin wrappers that turn an errno into a KvmError naming the
call. No compiled extension: an ioctl is a system call either way, and the hot path (``KVM_RUN``) is one
``ioctl`` with no argument."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from typing import Any

from virtkit.errors import VirtkitError

KVMIO = 0xAE
KVM_API_VERSION = 12


class KvmError(VirtkitError):
    """A KVM call failed; the message names the call and the errno."""


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(0, nr, 0)


def _iow(nr: int, size: int) -> int:
    return _ioc(1, nr, size)


def _ior(nr: int, size: int) -> int:
    return _ioc(2, nr, size)


def _iowr(nr: int, size: int) -> int:
    return _ioc(3, nr, size)


# -- structures (x86-64 layouts, include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h) ------------
class Regs(ctypes.Structure):
    """struct kvm_regs."""

    _fields_ = [(n, ctypes.c_uint64) for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9",
                                               "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")]


class Segment(ctypes.Structure):
    """struct kvm_segment."""

    _fields_ = [("base", ctypes.c_uint64), ("limit", ctypes.c_uint32), ("selector", ctypes.c_uint16),
                ("type", ctypes.c_uint8), ("present", ctypes.c_uint8), ("dpl", ctypes.c_uint8),
                ("db", ctypes.c_uint8), ("s", ctypes.c_uint8), ("l", ctypes.c_uint8), ("g", ctypes.c_uint8),
                ("avl", ctypes.c_uint8), ("unusable", ctypes.c_uint8), ("padding", ctypes.c_uint8)]


class DTable(ctypes.Structure):
    """struct kvm_dtable."""

    _fields_ = [("base", ctypes.c_uint64), ("limit", ctypes.c_uint16), ("padding", ctypes.c_uint16 * 3)]


class Sregs(ctypes.Structure):
    """struct kvm_sregs."""

    _fields_ = [*[(n, Segment) for n in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")],
                ("gdt", DTable), ("idt", DTable),
                *[(n, ctypes.c_uint64) for n in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")],
                ("interrupt_bitmap", ctypes.c_uint64 * 4)]


class UserspaceMemoryRegion(ctypes.Structure):
    """struct kvm_userspace_memory_region."""

    _fields_ = [("slot", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("guest_phys_addr", ctypes.c_uint64),
                ("memory_size", ctypes.c_uint64), ("userspace_addr", ctypes.c_uint64)]


class CpuidEntry2(ctypes.Structure):
    """struct kvm_cpuid_entry2."""

    _fields_ = [("function", ctypes.c_uint32), ("index", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("eax", ctypes.c_uint32), ("ebx", ctypes.c_uint32), ("ecx", ctypes.c_uint32),
                ("edx", ctypes.c_uint32), ("padding", ctypes.c_uint32 * 3)]


MAX_CPUID = 256


class Cpuid2(ctypes.Structure):
    """struct kvm_cpuid2 with room for MAX_CPUID entries."""

    _fields_ = [("nent", ctypes.c_uint32), ("padding", ctypes.c_uint32), ("entries", CpuidEntry2 * MAX_CPUID)]


class MsrEntry(ctypes.Structure):
    """struct kvm_msr_entry."""

    _fields_ = [("index", ctypes.c_uint32), ("reserved", ctypes.c_uint32), ("data", ctypes.c_uint64)]


MAX_MSRS = 64


class Msrs(ctypes.Structure):
    """struct kvm_msrs with room for MAX_MSRS entries."""

    _fields_ = [("nmsrs", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("entries", MsrEntry * MAX_MSRS)]


class IrqLevel(ctypes.Structure):
    """struct kvm_irq_level."""

    _fields_ = [("irq", ctypes.c_uint32), ("level", ctypes.c_uint32)]


class PitConfig(ctypes.Structure):
    """struct kvm_pit_config."""

    _fields_ = [("flags", ctypes.c_uint32), ("pad", ctypes.c_uint32 * 15)]


class DirtyLog(ctypes.Structure):
    """struct kvm_dirty_log."""

    _fields_ = [("slot", ctypes.c_uint32), ("padding1", ctypes.c_uint32), ("dirty_bitmap", ctypes.c_uint64)]


class Fpu(ctypes.Structure):
    """struct kvm_fpu."""

    _fields_ = [("fpr", ctypes.c_uint8 * 128), ("fcw", ctypes.c_uint16), ("fsw", ctypes.c_uint16),
                ("ftwx", ctypes.c_uint8), ("pad1", ctypes.c_uint8), ("last_opcode", ctypes.c_uint16),
                ("last_ip", ctypes.c_uint64), ("last_dp", ctypes.c_uint64), ("xmm", ctypes.c_uint8 * 256),
                ("mxcsr", ctypes.c_uint32), ("pad2", ctypes.c_uint32)]


class Xsave(ctypes.Structure):
    """struct kvm_xsave (the legacy 4 KiB region)."""

    _fields_ = [("region", ctypes.c_uint32 * 1024)]


class LapicState(ctypes.Structure):
    """struct kvm_lapic_state."""

    _fields_ = [("regs", ctypes.c_uint8 * 1024)]


class MpState(ctypes.Structure):
    """struct kvm_mp_state."""

    _fields_ = [("mp_state", ctypes.c_uint32)]


class ClockData(ctypes.Structure):
    """struct kvm_clock_data."""

    _fields_ = [("clock", ctypes.c_uint64), ("flags", ctypes.c_uint32), ("pad0", ctypes.c_uint32),
                ("realtime", ctypes.c_uint64), ("host_tsc", ctypes.c_uint64), ("pad", ctypes.c_uint32 * 4)]


class Irqchip(ctypes.Structure):
    """struct kvm_irqchip (chip_id 0: PIC master, 1: PIC slave, 2: IOAPIC; a 512-byte union)."""

    _fields_ = [("chip_id", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("chip", ctypes.c_uint8 * 512)]


class PitState2(ctypes.Structure):
    """struct kvm_pit_state2 (three channels of 24 bytes, flags, reserved)."""

    _fields_ = [("channels", ctypes.c_uint8 * 72), ("flags", ctypes.c_uint32), ("reserved", ctypes.c_uint32 * 9)]


class VcpuEvents(ctypes.Structure):
    """struct kvm_vcpu_events (pending exceptions, interrupts, NMIs, SMM: kept opaque)."""

    _fields_ = [("raw", ctypes.c_uint8 * 64)]


# -- ioctl numbers -------------------------------------------------------------------------------------------
GET_API_VERSION = _io(0x00)
CREATE_VM = _io(0x01)
GET_MSR_INDEX_LIST = _iowr(0x02, 4)
CHECK_EXTENSION = _io(0x03)
GET_VCPU_MMAP_SIZE = _io(0x04)
GET_SUPPORTED_CPUID = _iowr(0x05, 8)
CREATE_VCPU = _io(0x41)
GET_DIRTY_LOG = _iow(0x42, ctypes.sizeof(DirtyLog))
SET_USER_MEMORY_REGION = _iow(0x46, ctypes.sizeof(UserspaceMemoryRegion))
SET_TSS_ADDR = _io(0x47)
SET_IDENTITY_MAP_ADDR = _iow(0x48, 8)
CREATE_IRQCHIP = _io(0x60)
IRQ_LINE = _iow(0x61, ctypes.sizeof(IrqLevel))
GET_IRQCHIP = _iowr(0x62, ctypes.sizeof(Irqchip))
SET_IRQCHIP = _ior(0x63, ctypes.sizeof(Irqchip))
CREATE_PIT2 = _iow(0x77, ctypes.sizeof(PitConfig))
SET_CLOCK = _iow(0x7B, ctypes.sizeof(ClockData))
GET_CLOCK = _ior(0x7C, ctypes.sizeof(ClockData))
RUN = _io(0x80)
GET_REGS = _ior(0x81, ctypes.sizeof(Regs))
SET_REGS = _iow(0x82, ctypes.sizeof(Regs))
GET_SREGS = _ior(0x83, ctypes.sizeof(Sregs))
SET_SREGS = _iow(0x84, ctypes.sizeof(Sregs))
GET_MSRS = _iowr(0x88, 8)
SET_MSRS = _iow(0x89, 8)
GET_FPU = _ior(0x8C, ctypes.sizeof(Fpu))
SET_FPU = _iow(0x8D, ctypes.sizeof(Fpu))
GET_LAPIC = _ior(0x8E, ctypes.sizeof(LapicState))
SET_LAPIC = _iow(0x8F, ctypes.sizeof(LapicState))
SET_CPUID2 = _iow(0x90, 8)
GET_MP_STATE = _ior(0x98, ctypes.sizeof(MpState))
SET_MP_STATE = _iow(0x99, ctypes.sizeof(MpState))
GET_PIT2 = _ior(0x9F, ctypes.sizeof(PitState2))
SET_PIT2 = _iow(0xA0, ctypes.sizeof(PitState2))
GET_VCPU_EVENTS = _ior(0x9F, ctypes.sizeof(VcpuEvents))
SET_VCPU_EVENTS = _iow(0xA0, ctypes.sizeof(VcpuEvents))
GET_XSAVE = _ior(0xA4, ctypes.sizeof(Xsave))
SET_XSAVE = _iow(0xA5, ctypes.sizeof(Xsave))

# capabilities (KVM_CHECK_EXTENSION)
CAP_IRQCHIP = 0
CAP_HLT = 1
CAP_USER_MEMORY = 3
CAP_SET_TSS_ADDR = 4
CAP_EXT_CPUID = 7
CAP_NR_VCPUS = 9
CAP_PIT2 = 33
CAP_MAX_VCPUS = 66
CAP_XSAVE = 55
CAP_IMMEDIATE_EXIT = 136

# exit reasons (kvm_run.exit_reason)
EXIT_UNKNOWN, EXIT_EXCEPTION, EXIT_IO, EXIT_HYPERCALL, EXIT_DEBUG, EXIT_HLT, EXIT_MMIO = range(7)
EXIT_IRQ_WINDOW_OPEN, EXIT_SHUTDOWN, EXIT_FAIL_ENTRY, EXIT_INTR = 7, 8, 9, 10
EXIT_INTERNAL_ERROR = 17
EXIT_SYSTEM_EVENT = 24
EXIT_NAMES = {0: "UNKNOWN", 1: "EXCEPTION", 2: "IO", 3: "HYPERCALL", 4: "DEBUG", 5: "HLT", 6: "MMIO",
              7: "IRQ_WINDOW_OPEN", 8: "SHUTDOWN", 9: "FAIL_ENTRY", 10: "INTR", 17: "INTERNAL_ERROR",
              24: "SYSTEM_EVENT"}
SYSTEM_EVENT_SHUTDOWN, SYSTEM_EVENT_RESET, SYSTEM_EVENT_CRASH = 1, 2, 3

# kvm_run layout (the fields the run loop reads; the union starts at 32)
RUN_IMMEDIATE_EXIT = 1
RUN_EXIT_REASON = 8
RUN_UNION = 32
IO_IN, IO_OUT = 0, 1

MP_STATE_RUNNABLE, MP_STATE_UNINITIALIZED, MP_STATE_INIT_RECEIVED, MP_STATE_HALTED = 0, 1, 2, 3


def ioctl(fd: int, request: int, arg: Any = 0, what: str = "") -> int:
    """``ioctl(fd, request, arg)``; KvmError naming ``what`` and the errno on failure (EINTR is retried)."""
    while True:
        try:
            if isinstance(arg, ctypes.Structure | ctypes.Array):
                return fcntl.ioctl(fd, request, arg, True)
            return fcntl.ioctl(fd, request, arg)
        except InterruptedError:
            continue
        except OSError as err:
            raise KvmError(f"{what or hex(request)}: {os.strerror(err.errno or errno.EIO)}") from None


def check_extension(fd: int, cap: int) -> int:
    """KVM_CHECK_EXTENSION: 0 when the capability is absent, else its value."""
    return ioctl(fd, CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION")
