"""Post-copy migration: the guest runs on the target before all of its memory has arrived.

After the first pre-copy pass, the source stops the guest and sends only the device state and a bitmap
of the pages the target does not have (never sent, or dirtied since they were sent). The target drops
its stale copies of those pages, registers its RAM with ``userfaultfd`` and starts the guest at once.
A page the guest (or a device, or the kernel on its behalf) touches that has not arrived yet faults into
the userfaultfd; the fault is sent to the source as an 8-byte request and the guest's thread sleeps in
the kernel until the page is installed with ``UFFDIO_COPY``. Meanwhile the source pushes every missing
page in order, the requested ones first, so a guest that dirties memory faster than the link can carry
still finishes: each page crosses the link once (QEMU's ``postcopy-ram``).

The target's page server (:func:`_serve`) is compiled code that never takes the GIL: a guest thread that
faults while holding the GIL (device emulation in Python touches guest RAM) is served all the same.

The stream after the switch-over: source to target, records of ``page index (u64) | 4096 bytes |
CRC-32C of both``; target to source, page indices it faults on, then ``ALL_HERE``. A bad CRC or an index
outside RAM stops the guest with a clear error: after the switch-over the source cannot take the guest
back, the weakness every post-copy design has (QEMU's answer is a recovery protocol).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from crc32c import crc32c
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from virtkit.errors import VirtkitError
from virtkit.storage.bitmap import true_runs

PAGE = 4096
REC = 8 + PAGE + 4  # page index, page, CRC-32C
ALL_HERE = (1 << 64) - 1
BATCH = 32  # pages per send on the source (a requested page waits behind at most this many)

UFFD_API = 0xAA
UFFDIO_API = 0xC018AA3F
UFFDIO_REGISTER = 0xC020AA00
UFFDIO_UNREGISTER = 0x8010AA01
UFFDIO_WAKE = 0x8010AA02
UFFDIO_COPY = 0xC028AA03
UFFDIO_ZEROPAGE = 0xC020AA04
UFFDIO_REGISTER_MODE_MISSING = 1
UFFD_EVENT_PAGEFAULT = 0x12
SYS_USERFAULTFD = {"x86_64": 323, "aarch64": 282, "riscv64": 282}
MADV_DONTNEED = 4

#: ctl slots shared with the compiled page server
STOP, MISSING, REQUESTED, ZEROFILLS, ERROR, RECEIVED = range(6)
ERRORS = {-1: "the source closed the connection before every page arrived",
          -2: "a page arrived with a bad checksum", -3: "a page index outside guest RAM arrived",
          -4: "a page could not be installed (UFFDIO_COPY failed)", -5: "a request could not be sent"}


class PostcopyError(VirtkitError):
    """Post-copy cannot run here (no userfaultfd) or lost its source."""


_libc = ctypes.CDLL(None, use_errno=True)
c_ioctl = _libc.ioctl
c_ioctl.argtypes, c_ioctl.restype = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p], ctypes.c_int
MSG_NOSIGNAL = 0x4000


def _extern(name: str, ret: Any, *params: Any) -> Any:
    """A libc function callable from compiled code, bound by *name* when the code is linked (so the compiled
    page server can be cached on disk, which ctypes function pointers would forbid). Arguments are cast
    to ``params`` (pointers are passed as 64-bit integers)."""

    def typer(typingctx: Any, *args: Any) -> Any:
        sig = ret(*args)

        def codegen(context: Any, builder: Any, signature: Any, llargs: Any) -> Any:
            fnty = ir.FunctionType(context.get_value_type(ret), [context.get_value_type(t) for t in params])
            fn = cgutils.get_or_insert_function(builder.module, fnty, name)
            return builder.call(fn, [context.cast(builder, v, t, p)
                                     for v, t, p in zip(llargs, signature.args, params, strict=True)])

        return sig, codegen

    # numba reads the arity from the signature: one parameter per argument
    src = ", ".join(f"a{i}" for i in range(len(params)))
    ns: dict = {"typer": typer}
    exec(f"def {name}_(typingctx, {src}):\n    return typer(typingctx, {src})", ns)  # noqa: S102
    return intrinsic(ns[f"{name}_"])


c_poll = _extern("poll", types.int32, types.int64, types.uint64, types.int32)
c_read = _extern("read", types.int64, types.int32, types.int64, types.uint64)
c_recv = _extern("recv", types.int64, types.int32, types.int64, types.uint64, types.int32)
c_send = _extern("send", types.int64, types.int32, types.int64, types.uint64, types.int32)
c_ioctl_n = _extern("ioctl", types.int32, types.int32, types.uint64, types.int64)


@njit(nogil=True, cache=True)
def _crc_table() -> np.ndarray:  # pragma: no cover - compiled
    t = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = np.uint32(i)
        for _ in range(8):
            c = (c >> np.uint32(1)) ^ np.uint32(0x82F63B78) if c & np.uint32(1) else c >> np.uint32(1)
        t[i] = c
    return t


@njit(nogil=True, cache=True)
def _crc32(buf: np.ndarray, start: int, n: int, table: np.ndarray) -> int:  # pragma: no cover - compiled
    """CRC-32C (Castagnoli, the migration stream's checksum) of ``buf[start:start+n]``."""
    c = np.uint32(0xFFFFFFFF)
    for i in range(start, start + n):
        c = table[(c ^ np.uint32(buf[i])) & np.uint32(0xFF)] ^ (c >> np.uint32(8))
    return np.int64(c ^ np.uint32(0xFFFFFFFF))


@njit(nogil=True, cache=True)
def _send_u64(sock: int, word: np.ndarray) -> bool:
    done = 0
    while done < 8:
        n = c_send(sock, word.ctypes.data + done, 8 - done, MSG_NOSIGNAL)
        if n <= 0:
            return False
        done += n
    return True


@njit(nogil=True, cache=True)
def _serve(uffd: int, sock: int, base: int, missing: np.ndarray, requested: np.ndarray, ctl: np.ndarray,
           buf: np.ndarray) -> None:  # pragma: no cover - compiled
    """The target's page server: faults become requests, arriving pages are installed, until none is missing."""
    npages = missing.shape[0]
    table = _crc_table()
    pfd = np.zeros(2, dtype=np.int64)  # struct pollfd {int fd; short events; short revents} x 2
    msg = np.zeros(4, dtype=np.uint64)  # struct uffd_msg (32 bytes)
    word = np.zeros(1, dtype=np.uint64)
    cp = np.zeros(5, dtype=np.int64)  # struct uffdio_copy / uffdio_zeropage
    rng = np.zeros(2, dtype=np.uint64)  # struct uffdio_range
    bufp = buf.ctypes.data
    cap = buf.shape[0]
    filled = 0
    while ctl[MISSING] > 0 and ctl[STOP] == 0:
        pfd[0] = uffd | (1 << 32)  # events = POLLIN
        pfd[1] = sock | (1 << 32)
        if c_poll(pfd.ctypes.data, 2, 100) <= 0:
            continue
        if (pfd[0] >> 48) & 1:
            while c_read(uffd, msg.ctypes.data, 32) == 32:
                if msg[0] & 0xFF != UFFD_EVENT_PAGEFAULT:
                    continue
                addr = np.int64(msg[2]) & ~np.int64(PAGE - 1)
                p = (addr - base) // PAGE
                if 0 <= p < npages and missing[p]:
                    if not requested[p]:
                        requested[p] = 1
                        ctl[REQUESTED] += 1
                        word[0] = p
                        if not _send_u64(sock, word):
                            ctl[ERROR] = -5
                            return
                else:  # a page the source never had (zero) or one installed while the fault was queued
                    cp[0] = addr
                    cp[1] = PAGE
                    cp[2] = 0
                    cp[3] = 0
                    c_ioctl_n(uffd, UFFDIO_ZEROPAGE, cp.ctypes.data)
                    ctl[ZEROFILLS] += 1
                    rng[0] = addr
                    rng[1] = PAGE
                    c_ioctl_n(uffd, UFFDIO_WAKE, rng.ctypes.data)
        if (pfd[1] >> 48) & (1 | 8 | 16):  # POLLIN, POLLERR, POLLHUP
            n = c_recv(sock, bufp + filled, cap - filled, 0)
            if n <= 0:
                ctl[ERROR] = -1
                return
            filled += n
            ctl[RECEIVED] += n
            off = 0
            while filled - off >= REC:
                p = 0
                for k in range(8):
                    p |= np.int64(buf[off + k]) << (8 * k)
                want = 0
                for k in range(4):
                    want |= np.int64(buf[off + 8 + PAGE + k]) << (8 * k)
                if _crc32(buf, off, 8 + PAGE, table) != want:
                    ctl[ERROR] = -2
                    return
                if p < 0 or p >= npages:
                    ctl[ERROR] = -3
                    return
                if missing[p]:
                    cp[0] = base + p * PAGE
                    cp[1] = bufp + off + 8
                    cp[2] = PAGE
                    cp[3] = 0
                    cp[4] = 0
                    c_ioctl_n(uffd, UFFDIO_COPY, cp.ctypes.data)
                    if cp[4] < 0 and cp[4] != -17:  # -EEXIST: the page is there already
                        ctl[ERROR] = -4
                        return
                    missing[p] = 0
                    ctl[MISSING] -= 1
                off += REC
            if off:
                buf[:filled - off] = buf[off:filled].copy()
                filled -= off
    if ctl[MISSING] == 0:
        word[0] = ALL_HERE
        if not _send_u64(sock, word):
            ctl[ERROR] = -5


def warm_up() -> None:
    """Compile the page server now (a second or two), not at the switch-over where it would be downtime."""
    ctl = np.zeros(8, dtype=np.int64)
    _serve(-1, -1, 0, np.zeros(0, dtype=np.uint8), np.zeros(0, dtype=np.uint8), ctl, np.zeros(REC, dtype=np.uint8))


def _ioctl(fd: int, req: int, arg: ctypes.Array) -> None:
    if c_ioctl(fd, req, ctypes.addressof(arg)) != 0:
        e = ctypes.get_errno()
        raise PostcopyError(f"userfaultfd ioctl {req:#x} failed: {os.strerror(e)}")


def open_userfaultfd() -> int:
    """A userfaultfd with the API handshake done, or PostcopyError saying why there is none."""
    nr = SYS_USERFAULTFD.get(platform.machine())
    if nr is None:
        raise PostcopyError(f"post-copy: userfaultfd's system call number on {platform.machine()} is unknown")
    fd = _libc.syscall(nr, os.O_CLOEXEC | os.O_NONBLOCK)
    if fd < 0:
        e = ctypes.get_errno()
        hint = " (needs root, CAP_SYS_PTRACE or sysctl vm.unprivileged_userfaultfd=1)" if e == errno.EPERM else ""
        raise PostcopyError(f"post-copy needs userfaultfd, which this host refused: {os.strerror(e)}{hint}")
    api = (ctypes.c_uint64 * 3)(UFFD_API, 0, 0)
    try:
        _ioctl(fd, UFFDIO_API, api)
    except BaseException:
        os.close(fd)
        raise
    return fd


def available() -> str | None:
    """None when post-copy can run here, else why not."""
    try:
        os.close(open_userfaultfd())
    except PostcopyError as err:
        return str(err)
    return None


class Incoming:
    """The target's side after the switch-over: RAM registered, stale pages dropped, the page server running.

    ``on_error(message)`` is called (from the server's thread) when the source is lost or sends garbage:
    the guest cannot go on, the caller stops it. :meth:`close` (a VM closer) ends everything.
    """

    def __init__(self, mem: Any, conn: Any, missing: np.ndarray, on_error: Callable[[str], None]) -> None:
        self.mem, self.conn, self.on_error = mem, conn, on_error
        self.npages = mem.size // PAGE
        if len(missing) != self.npages:
            raise PostcopyError(f"post-copy bitmap of {len(missing)} pages for {self.npages} pages of RAM")
        self.missing = missing.astype(np.uint8)
        self.requested = np.zeros(self.npages, dtype=np.uint8)
        self.ctl = np.zeros(8, dtype=np.int64)
        self.ctl[MISSING] = int(np.count_nonzero(self.missing))
        self.error: str | None = None
        self.done = threading.Event()
        self.uffd = open_userfaultfd()
        self.base = mem.array.ctypes.data
        try:
            _ioctl(self.uffd, UFFDIO_REGISTER, (ctypes.c_uint64 * 4)(self.base, mem.size,
                                                                     UFFDIO_REGISTER_MODE_MISSING, 0))
            self._drop_stale()
        except BaseException:
            os.close(self.uffd)
            raise
        self._thread = threading.Thread(target=self._run, name="virtkit-postcopy", daemon=True)

    def _drop_stale(self) -> None:
        """Pages the source changed after sending them: drop our copies so that touching them faults."""
        madvise = _libc.madvise
        madvise.argtypes, madvise.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
        for a, k in true_runs(self.missing):
            if madvise(self.base + a * PAGE, k * PAGE, MADV_DONTNEED) != 0:
                raise PostcopyError(f"madvise(MADV_DONTNEED) failed: {os.strerror(ctypes.get_errno())}")

    def start(self) -> None:
        self.conn.setblocking(True)
        self._thread.start()

    def _run(self) -> None:
        buf = np.zeros(REC * 64, dtype=np.uint8)
        try:
            if self.ctl[MISSING] > 0:
                _serve(self.uffd, self.conn.fileno(), self.base, self.missing, self.requested, self.ctl, buf)
            code = int(self.ctl[ERROR])
            if code and not self.ctl[STOP]:
                self.error = f"post-copy: {ERRORS.get(code, f'error {code}')}; the guest cannot go on"
        finally:
            self._unregister()
            try:
                self.conn.close()
            except OSError:
                pass
            self.done.set()
        if self.error is not None:
            self.on_error(self.error)

    def _unregister(self) -> None:
        """Faulting threads are woken and the range becomes ordinary memory again."""
        fd, self.uffd = self.uffd, -1
        if fd >= 0:
            try:
                _ioctl(fd, UFFDIO_UNREGISTER, (ctypes.c_uint64 * 2)(self.base, self.mem.size))
            except PostcopyError:
                pass
            os.close(fd)

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

    def close(self) -> None:
        """Stop the page server (if it still runs) and release the userfaultfd."""
        self.ctl[STOP] = 1
        if self._thread.is_alive():
            self._thread.join(5)
        self._unregister()

    def status(self) -> dict[str, Any]:
        return {"missing": int(self.ctl[MISSING]), "requested": int(self.ctl[REQUESTED]),
                "zero_fills": int(self.ctl[ZEROFILLS]), "received": int(self.ctl[RECEIVED]), "error": self.error}


def records(ram: np.ndarray, pages: list[int]) -> list[bytes]:
    """The source's post-copy records for ``pages``."""
    out = []
    for p in pages:
        head = struct.pack("<Q", p)
        page = ram[p * PAGE:(p + 1) * PAGE].tobytes()
        out.append(head + page + struct.pack("<I", crc32c(page, crc32c(head))))
    return out


