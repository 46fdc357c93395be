"""The compiled datapath of the switch (OVS-style split): known unicast between TAP/VM ports never enters Python.

A Numba loop (:func:`_rx`, ``nogil``, cached) reads frames from one port's descriptor with libc ``read``,
looks each one up in an exact-match flow cache kept in NumPy arrays (key: ingress port, destination and
source MAC, EtherType, and for tagged frames the TCI and inner EtherType), rewrites the VLAN tag in place
(keep, push, strip or replace) and ``write``\\s it to the output port. Anything else -- unknown or
multicast destination, a cache miss, a GSO frame, a busy or failing output, an aged destination -- is an
**upcall**: that frame and every later frame of the same wakeup go to :meth:`Switch.receive`, the Python
slow path, in order. The slow path stays the reference: it installs a flow only where its own decision was
a plain known-unicast forward (no security group, no capture, both ports in the datapath), and it flushes
the cache on anything that could change a decision (MAC move, removal or ageing, port or VLAN change,
capture, group, switch settings). So the fast path makes exactly the decisions the slow path would.

Per-port counters are counted in NumPy and merged into the ports' :class:`PortStats` after every call;
source MAC refreshes are kept per MAC slot and written back to the MAC table (:meth:`Datapath.sync`)
before Python reads a timestamp (loop guard, ageing, ``show``).
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import numpy as np
from numba import njit, types

if TYPE_CHECKING:
    from virtkit.network.switch import Port, Switch

_read = types.ExternalFunction("read", types.intp(types.intc, types.voidptr, types.uintp))
_write = types.ExternalFunction("write", types.intp(types.intc, types.voidptr, types.uintp))
_errno = types.ExternalFunction("__errno_location", types.CPointer(types.intc)())

EAGAIN = 11
HEAD = 32  # room before each frame in the buffer: a pushed tag (4) plus the output's vnet header (10)
MAX_READ = 65600
UPCALL_MAX = 64
BUF_SIZE = (UPCALL_MAX + 1) * (MAX_READ + HEAD + 8)
# what _rx returns in its status
DRAINED, BUDGET, FULL, ERROR = 0, 1, 2, 3
# flow actions
ACT_KEEP, ACT_PUSH, ACT_STRIP, ACT_RETAG = 0, 1, 2, 3
#: p_state bit: the port has frames in its priority queues (new frames must queue behind them: upcall)
BLOCKED = 1
_C0, _C1, _C2, _C3 = 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5
_M64 = (1 << 64) - 1


def flow_hash(pi: int, k0: int, k1: int, k2: int, mask: int) -> int:
    """The flow cache index (the same arithmetic as the compiled lookup, in Python ints)."""
    h = ((k0 * _C0) & _M64) ^ ((k1 * _C1) & _M64) ^ ((k2 * _C2) & _M64) ^ ((pi * _C3) & _M64)
    return (h >> 40) & mask


# column numbers of the port table P, the flow table F, the dirty-slot table D and the counter table C
P_FD, P_HDR, P_TPID, P_STATE = 0, 1, 2, 3
F_VALID, F_IN, F_K0, F_K1, F_K2, F_OUT, F_ACT, F_TAG, F_MAX, F_SRC, F_DST = range(11)


@njit(nogil=True, cache=True)
def _rx(pi, now, ageing, budget, P, F, m_time, D, C, buf, up, res):  # pragma: no cover - compiled
    """Forward frames from port ``pi`` until EAGAIN, the budget, a full upcall buffer or an error.

    Few array arguments on purpose: each one costs the dispatcher ~0.15 µs per call.
    """
    fd = P[pi, 0]
    h = P[pi, 1]
    tpid = P[pi, 2]
    mask = F.shape[0] - 1
    status = DRAINED
    nfast = 0
    rx_b = 0
    nup = 0
    off = 0
    ntouched = 0
    ndirty = res[4]
    done = 0
    save = np.empty(16, np.uint8)
    while done < budget:
        base = off + HEAD
        if base + MAX_READ > buf.size:
            status = FULL
            break
        r = _read(fd, buf[base:].ctypes, MAX_READ)
        if r <= 0:
            if r < 0 and _errno()[0] == EAGAIN:
                status = DRAINED
            else:
                status = ERROR
            break
        done += 1
        s = base + h
        n = r - h
        plain = h == 0 or (r > h and buf[base + 1] == 0 and (buf[base] & 1) == 0)
        fast = nup == 0 and plain and n >= 14
        idx = 0
        out = 0
        if fast:
            k0 = np.int64(0)
            k1 = np.int64(0)
            for j in range(6):
                k0 = (k0 << 8) | np.int64(buf[s + j])
                k1 = (k1 << 8) | np.int64(buf[s + 6 + j])
            etype = (np.int64(buf[s + 12]) << 8) | np.int64(buf[s + 13])
            k2 = etype << 32
            if etype == tpid:
                if n < 18:
                    fast = False
                else:
                    tci = (np.int64(buf[s + 14]) << 8) | np.int64(buf[s + 15])
                    inner = (np.int64(buf[s + 16]) << 8) | np.int64(buf[s + 17])
                    k2 = (np.int64(1) << 48) | (etype << 32) | (tci << 16) | inner
        if fast:
            hh = (np.uint64(k0) * np.uint64(_C0)) ^ (np.uint64(k1) * np.uint64(_C1)) \
                ^ (np.uint64(k2) * np.uint64(_C2)) ^ (np.uint64(pi) * np.uint64(_C3))
            idx = np.int64((hh >> np.uint64(40)) & np.uint64(mask))
            if not (F[idx, 0] and F[idx, 1] == pi and F[idx, 2] == k0 and F[idx, 3] == k1
                    and F[idx, 4] == k2 and n <= F[idx, 8] and now - m_time[F[idx, 10]] <= ageing):
                fast = False
            else:
                out = F[idx, 5]
                if P[out, 3] & BLOCKED:
                    fast = False
        if fast:
            for j in range(16):
                save[j] = buf[s + j]
            act = F[idx, 6]
            ws = s
            wn = n
            if act == ACT_PUSH:
                ws = s - 4
                for j in range(12):
                    buf[ws + j] = buf[s + j]
                wn = n + 4
            elif act == ACT_STRIP:
                ws = s + 4
                for j in range(11, -1, -1):
                    buf[ws + j] = buf[s + j]
                wn = n - 4
            if act == ACT_PUSH or act == ACT_RETAG:
                tag = F[idx, 7]
                buf[ws + 12] = (tag >> 24) & 0xFF
                buf[ws + 13] = (tag >> 16) & 0xFF
                buf[ws + 14] = (tag >> 8) & 0xFF
                buf[ws + 15] = tag & 0xFF
            ho = P[out, 1]
            for j in range(ho):
                buf[ws - ho + j] = 0
            w = _write(P[out, 0], buf[ws - ho:].ctypes, wn + ho)
            if w < 0:
                for j in range(16):
                    buf[s + j] = save[j]
                fast = False
            else:
                nfast += 1
                rx_b += n
                if C[out, 0] == 0 and C[out, 1] == 0:
                    C[ntouched, 2] = out
                    ntouched += 1
                C[out, 0] += 1
                C[out, 1] += wn
                sl = F[idx, 9]
                m_time[sl] = now
                if not D[sl, 0]:
                    D[sl, 0] = 1
                    D[ndirty, 1] = sl
                    ndirty += 1
                continue
        # upcall: this frame and every later one of this call go to the Python slow path, in order
        if plain:
            up[nup, 0] = s
            up[nup, 1] = max(n, 0)
            up[nup, 2] = 0
        else:
            up[nup, 0] = base
            up[nup, 1] = r
            up[nup, 2] = 1
        nup += 1
        off = (base + r + 7) & ~7
        if nup >= up.shape[0]:
            status = FULL
            break
    if done >= budget and status == DRAINED:
        status = BUDGET
    res[0] = status
    res[1] = nfast
    res[2] = rx_b
    res[3] = nup
    res[4] = ndirty
    res[5] = ntouched
    return status


class Datapath:
    """The flow cache, per-port descriptors and counters in NumPy, plus the Python side of upcalls."""

    def __init__(self, switch: Switch, max_ports: int = 256, flows: int = 4096, slots: int = 8192) -> None:
        self.switch = switch
        self.max_ports = max_ports
        self.P = np.zeros((max_ports, 4), np.int64)  # fd, vnet header length, TPID, state (BLOCKED)
        self.P[:, P_FD] = -1
        self.p_state = self.P[:, P_STATE]  # a view the ports write their BLOCKED bit into
        self.F = np.zeros((flows, 11), np.int64)  # valid, in port, key (3), out port, action, tag, max len, slots
        self.m_time = np.zeros(slots, np.float64)  # last time each MAC slot's host sent (fast path refreshes)
        self.D = np.zeros((slots, 2), np.int64)  # dirty flag per slot, list of dirty slots
        self.C = np.zeros((max_ports, 3), np.int64)  # tx frames and bytes of this call per port, touched list
        self.buf = np.zeros(BUF_SIZE, np.uint8)
        self.up = np.zeros((UPCALL_MAX, 3), np.int64)
        self.res = np.zeros(8, np.int64)
        self.ports: list[Port | None] = [None] * max_ports
        self.slot_entry: list[list[Any]] = []
        self.slot_of: dict[int, int] = {}
        #: counters for ``show``: frames forwarded without Python, upcalls, flows installed, cache flushes
        self.stats = {"fast_frames": 0, "upcalls": 0, "flows_installed": 0, "flushes": 0}

    def warm_up(self) -> None:
        """Compile (first run, ~5 s) or load (cached) the loop now, not on the first frame of a busy port."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            a.setblocking(False)
            P = np.zeros((1, 4), np.int64)
            P[0, P_FD] = a.fileno()
            _rx(0, 0.0, 1.0, 1, P, self.F, self.m_time, self.D, self.C, self.buf, self.up, np.zeros(8, np.int64))
        finally:
            a.close()
            b.close()

    # -- ports -----------------------------------------------------------------------------------
    def reload(self) -> None:
        """Re-read every port (descriptor, header, TPID) after any change, and empty the flow cache."""
        self.flush()
        for i, p in enumerate(self.ports):
            if p is not None and self.switch.ports.get(p.name) is not p:
                p.dp_index = -1
                p.dp_table = p.dp_state = None
                self.ports[i] = None
                self.P[i] = (-1, 0, 0, 0)
        for p in self.switch.ports.values():
            fd = p.dp_fd() if not p.down else -1
            if p.dp_index < 0:
                if not p.dp_capable:
                    continue
                try:
                    i = self.ports.index(None)
                except ValueError:
                    continue  # more ports than the datapath holds: the rest stay on the slow path
                self.ports[i] = p
                p.dp_index = i
                p.dp_state = self.p_state
                p.dp_table = self.P
            self.P[p.dp_index] = (fd, p.dp_hdr, p.tpid, BLOCKED if p.queued else 0)

    # -- MAC timestamps --------------------------------------------------------------------------
    def sync(self) -> None:
        """Write the source-MAC refreshes done by the fast path back into the MAC table entries."""
        n = int(self.res[4])
        if not n:
            return
        m_time, D, entries = self.m_time, self.D, self.slot_entry
        for sl in D[:n, 1].tolist():
            e = entries[sl]
            t = float(m_time[sl])
            if t > e[1]:
                e[1] = t
            D[sl, 0] = 0
        self.res[4] = 0

    def flush(self) -> None:
        """Drop every flow (after syncing timestamps): the next frame of each flow is an upcall."""
        self.sync()
        self.F[:, F_VALID] = 0
        self.slot_entry.clear()
        self.slot_of.clear()
        self.stats["flushes"] += 1

    def _slot(self, e: list[Any]) -> int:
        sl = self.slot_of.get(id(e))
        if sl is None:
            sl = len(self.slot_entry)
            self.slot_entry.append(e)
            self.slot_of[id(e)] = sl
            self.m_time[sl] = e[1]
            self.D[sl, 0] = 0
        elif e[1] > self.m_time[sl]:
            self.m_time[sl] = e[1]
        return sl

    def install(self, port: Port, frame: bytes, vid: int, pcp: int, dei: int, out: Port, src_e: list[Any],
                dst_e: list[Any]) -> None:
        """Cache the slow path's decision for ``frame``: plain known unicast from ``port`` to ``out``."""
        if vid in out.untagged_vlans:
            tagged_out = False
        elif vid in out.tagged_vlans:
            tagged_out = True
        else:
            return
        pi = port.dp_index
        etype = (frame[12] << 8) | frame[13]
        k0 = int.from_bytes(frame[0:6], "big")
        k1 = int.from_bytes(frame[6:12], "big")
        mtu = self.switch.mtu
        tci_out = (pcp << 13) | (dei << 12) | vid
        tag = (out.tpid << 16) | tci_out
        if etype == port.tpid:
            tci = (frame[14] << 8) | frame[15]
            inner = (frame[16] << 8) | frame[17]
            k2 = (1 << 48) | (etype << 32) | (tci << 16) | inner
            fmax = mtu + 18 + (4 if inner in (0x8100, 0x88A8) else 0)
            if not tagged_out:
                act = ACT_STRIP
            elif out.tpid == port.tpid and tci & 0xFFF == vid:
                act = ACT_KEEP
            else:
                act = ACT_RETAG
        else:
            k2 = etype << 32
            fmax = mtu + 14 + (4 if etype in (0x8100, 0x88A8) else 0)
            act = ACT_PUSH if tagged_out else ACT_KEEP
        if len(self.slot_entry) + 2 > self.m_time.size:
            self.flush()  # out of MAC slots: start again (before taking the two this flow needs)
        F = self.F
        idx = flow_hash(pi, k0, k1, k2, F.shape[0] - 1)
        src, dst = self._slot(src_e), self._slot(dst_e)
        F[idx] = (1, pi, k0, k1, k2, out.dp_index, act, tag, fmax, src, dst)
        self.stats["flows_installed"] += 1

    # -- the receive path ------------------------------------------------------------------------
    def receive(self, port: Port, now: float, budget: int) -> None:
        """Serve a readable port: fast path in the compiled loop, upcalls through :meth:`Switch.receive`."""
        sw = self.switch
        res, C, ports = self.res, self.C, self.ports
        pi = port.dp_index
        while budget > 0 and port.dp_index == pi >= 0:
            status = _rx(pi, now, sw.ageing, budget, self.P, self.F, self.m_time, self.D, C, self.buf, self.up, res)
            _, nfast, rx_b, nup, _, ntouched, _, _ = res.tolist()
            if nfast:
                st = port.stats
                st.rx_frames += nfast
                st.rx_bytes += rx_b
                for i in C[:ntouched, 2].tolist():
                    o = ports[i]
                    if o is not None:
                        o.stats.tx_frames += int(C[i, 0])
                        o.stats.tx_bytes += int(C[i, 1])
                    C[i, 0] = C[i, 1] = 0
                self.stats["fast_frames"] += nfast
            budget -= nfast + nup
            if nup:
                self.stats["upcalls"] += nup
                buf = self.buf
                frames: list[bytes] = []
                for off, n, raw in self.up[:nup].tolist():
                    data = buf[off:off + n].tobytes()
                    if raw:
                        port.dp_decode(data, frames)
                    else:
                        frames.append(data)
                sw.receive(port, frames, now)
            if status == ERROR:
                frames = port.receive_batch(max(budget, 1))  # the port's own read reports EOF / a vanished device
                if frames:
                    sw.receive(port, frames, now)
                return
            if status != FULL:
                return

    def info(self) -> dict[str, Any]:
        """Datapath counters and the number of cached flows, for ``show``."""
        return {**self.stats, "flows": int(self.F[:, F_VALID].sum()), "ports": sum(p is not None for p in self.ports)}
