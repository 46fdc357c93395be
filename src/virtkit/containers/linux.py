"""The Linux system calls a container runtime needs that Python's ``os`` module lacks (this interpreter is
3.11: no ``os.unshare``/``os.setns``), through ctypes on the C library. Each raises OSError with errno set,
like ``os``'s own functions, so callers get ``strerror`` messages."""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL("libc.so.6", use_errno=True)  # (find_library would run ldconfig: milliseconds)

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080

#: the OCI namespace types and their clone flags
NAMESPACES = {"pid": CLONE_NEWPID, "network": CLONE_NEWNET, "mount": CLONE_NEWNS, "ipc": CLONE_NEWIPC,
              "uts": CLONE_NEWUTS, "user": CLONE_NEWUSER, "cgroup": CLONE_NEWCGROUP, "time": CLONE_NEWTIME}

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

SYS_PIVOT_ROOT = 155  # x86_64
SYS_CAPSET = 126

#: capability names (linux/capability.h), by number
CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
        "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
        "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
        "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN",
        "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
        "CAP_CHECKPOINT_RESTORE"]
CAP_NUMBERS = {name: i for i, name in enumerate(CAPS)}


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def unshare(flags: int) -> None:
    """unshare(2)."""
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2): join the namespace ``fd`` refers to."""
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    """mount(2)."""
    _check(_libc.mount(_enc(source), _enc(target), _enc(fstype), ctypes.c_ulong(flags), _enc(data)),
           f"mount {target}")


def _enc(s: str | None) -> bytes | None:
    return s.encode() if s is not None else None


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    _check(_libc.umount2(target.encode(), ctypes.c_int(flags)), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2) (no C library wrapper)."""
    _check(_libc.syscall(ctypes.c_long(SYS_PIVOT_ROOT), new_root.encode(), put_old.encode()), "pivot_root")


def sethostname(name: str) -> None:
    """sethostname(2)."""
    b = name.encode()
    _check(_libc.sethostname(b, ctypes.c_size_t(len(b))), "sethostname")


def setdomainname(name: str) -> None:
    """setdomainname(2)."""
    b = name.encode()
    _check(_libc.setdomainname(b, ctypes.c_size_t(len(b))), "setdomainname")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2)."""
    return _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                              ctypes.c_ulong(arg4), ctypes.c_ulong(arg5)), "prctl")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """capset(2), version 3 (64-bit sets)."""
    hdr = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    for i in range(2):
        data[i].effective = (effective >> (32 * i)) & 0xFFFFFFFF
        data[i].permitted = (permitted >> (32 * i)) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> (32 * i)) & 0xFFFFFFFF
    _check(_libc.syscall(ctypes.c_long(SYS_CAPSET), ctypes.byref(hdr), data), "capset")


def last_cap() -> int:
    """The highest capability number the kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return len(CAPS) - 1


class SeccompError(Exception):
    """A seccomp profile libseccomp cannot build or the kernel refuses."""


# ---- seccomp through libseccomp (the maintained library runc and crun use) -----------------------------------
SCMP_ACTIONS = {"SCMP_ACT_KILL": 0x00000000, "SCMP_ACT_KILL_THREAD": 0x00000000,
                "SCMP_ACT_KILL_PROCESS": 0x80000000, "SCMP_ACT_TRAP": 0x00030000, "SCMP_ACT_ERRNO": 0x00050000,
                "SCMP_ACT_TRACE": 0x7FF00000, "SCMP_ACT_LOG": 0x7FFC0000, "SCMP_ACT_ALLOW": 0x7FFF0000}
SCMP_OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4, "SCMP_CMP_GE": 5,
            "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


class Seccomp:
    """A seccomp filter built from an OCI ``linux.seccomp`` object with libseccomp; :meth:`load` installs it.
    Built before ``pivot_root`` (the library is loaded from the host), loaded just before ``execve``."""

    def __init__(self, spec: dict) -> None:
        try:
            lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        except OSError:
            raise SeccompError("seccomp: libseccomp.so.2 is not installed (Debian: libseccomp2)") from None
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
        lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                               ctypes.POINTER(_ArgCmp)]
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        self.lib = lib
        self.ctx = lib.seccomp_init(self.action(spec.get("defaultAction", ""), spec.get("defaultErrnoRet"),
                                                "defaultAction"))
        if not self.ctx:
            raise SeccompError("seccomp: libseccomp could not start a filter")
        for arch in spec.get("architectures", []):
            token = lib.seccomp_arch_resolve_name(arch.removeprefix("SCMP_ARCH_").lower().encode())
            if token == 0:
                raise SeccompError(f"seccomp: unknown architecture {arch!r}")
            ret = lib.seccomp_arch_add(self.ctx, token)
            if ret < 0 and ret != -17:  # -EEXIST: the native one is there already
                raise SeccompError(f"seccomp: architecture {arch}: {os.strerror(-ret)}")
        for i, rule in enumerate(spec.get("syscalls", [])):
            act = self.action(rule.get("action", ""), rule.get("errnoRet"), f"syscalls[{i}].action")
            args = rule.get("args", [])
            cmps = (_ArgCmp * max(1, len(args)))()
            for k, a in enumerate(args):
                op = SCMP_OPS.get(a.get("op", ""))
                if op is None or not 0 <= a.get("index", -1) <= 5:
                    raise SeccompError(f"seccomp: syscalls[{i}].args[{k}]: bad op {a.get('op')!r} or index")
                cmps[k] = _ArgCmp(a["index"], op, a.get("value", 0), a.get("valueTwo", 0))
            for name in rule.get("names", []):
                nr = lib.seccomp_syscall_resolve_name(name.encode())
                if nr < 0:
                    continue  # a system call this kernel or architecture does not have: runc skips it too
                ret = lib.seccomp_rule_add_array(self.ctx, act, nr, len(args), cmps)
                if ret < 0:
                    raise SeccompError(f"seccomp: rule for {name}: {os.strerror(-ret)}")

    @staticmethod
    def action(name: str, errno_ret: int | None, where: str) -> int:
        base = SCMP_ACTIONS.get(name)
        if base is None:
            raise SeccompError(f"seccomp: {where}: unknown action {name!r}")
        if name in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
            return base | ((1 if errno_ret is None else errno_ret) & 0xFFFF)
        return base

    def load(self) -> None:
        ret = self.lib.seccomp_load(self.ctx)
        if ret < 0:
            raise SeccompError(f"seccomp: loading the filter: {os.strerror(-ret)}")
