"""The SiFive Platform-Level Interrupt Controller, laid out as on QEMU's ``virt`` board.

Sources 1..``nsources`` (level-triggered) have a priority; each *context* (two per hart: M-mode
then S-mode) has an enable bitmap, a priority threshold and a claim/complete register. The
output of context ``2h`` drives MEIP (mip bit 11) of hart ``h``, context ``2h+1`` drives SEIP
(bit 9), through ``set_irq(hart, bit, level)`` (the engine's, or the run loop's thread-safe one).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from virtkit.machine.state import fields, record

PRIORITY_BASE = 0x0
PENDING_BASE = 0x1000
ENABLE_BASE = 0x2000
ENABLE_STRIDE = 0x80
CONTEXT_BASE = 0x20_0000
CONTEXT_STRIDE = 0x1000
MEIP, SEIP = 11, 9
PRIORITY_MASK = 0x7  # QEMU virt: 3 priority bits


def plic_size(nharts: int) -> int:
    """Size of the register window for ``nharts`` harts (QEMU's VIRT_PLIC_SIZE)."""
    return CONTEXT_BASE + CONTEXT_STRIDE * 2 * nharts


class Plic:
    """A PLIC with ``nsources`` interrupt sources and two contexts per hart."""

    STATE_KIND = "plic"
    STATE_VERSION = 1

    def __init__(self, nharts: int, set_irq: Callable[[int, int, int], None], nsources: int = 96) -> None:
        self.nharts = nharts
        self.ncontexts = 2 * nharts
        self.nsources = nsources
        self.size = plic_size(nharts)
        self._set_irq = set_irq
        self._lock = threading.RLock()
        nwords = (nsources + 1 + 31) // 32
        self.nwords = nwords
        self.priority = [0] * (nsources + 1)
        self.level = [False] * (nsources + 1)
        self.pending = [False] * (nsources + 1)
        self._pendset: set[int] = set()  # the pending sources, for a quick arbitration loop
        self.claimed = [False] * (nsources + 1)
        self.enable = [[0] * nwords for _ in range(self.ncontexts)]
        self.threshold = [0] * self.ncontexts
        self._out = [False] * self.ncontexts
        self.claims = 0

    # -- device side ----------------------------------------------------------------------------
    def save(self) -> dict:
        """Priorities, line levels, pending and claimed sources, enables, thresholds, outputs."""
        with self._lock:
            return record(self, nsources=self.nsources, ncontexts=self.ncontexts, priority=list(self.priority),
                          level=[int(v) for v in self.level], pending=[int(v) for v in self.pending],
                          claimed=[int(v) for v in self.claimed], enable=[list(e) for e in self.enable],
                          threshold=list(self.threshold), out=[int(v) for v in self._out], claims=self.claims)

    def restore(self, state: dict) -> None:
        """Take a saved state (same number of sources and harts) and drive every output to its saved level."""
        f = fields(self, state)
        n = self.nsources + 1
        f.int("nsources", self.nsources, self.nsources)
        f.int("ncontexts", self.ncontexts, self.ncontexts)
        prio = f.ints("priority", n, 0, PRIORITY_MASK)
        level, pending, claimed = (f.ints(k, n, 0, 1) for k in ("level", "pending", "claimed"))
        enable = f.rows("enable", self.ncontexts, self.nwords, 0, 0xFFFFFFFF)
        threshold = f.ints("threshold", self.ncontexts, 0, PRIORITY_MASK)
        out = f.ints("out", self.ncontexts, 0, 1)
        claims = f.int("claims", 0)
        with self._lock:
            self.priority = prio
            self.level = [bool(v) for v in level]
            self.pending = [bool(v) for v in pending]
            self._pendset = {s for s in range(n) if pending[s]}
            self.claimed = [bool(v) for v in claimed]
            self.enable = enable
            self.threshold = threshold
            self.claims = claims
            self._out = [bool(v) for v in out]
            for ctx, o in enumerate(self._out):
                self._set_irq(ctx // 2, MEIP if ctx % 2 == 0 else SEIP, int(o))

    def set_level(self, source: int, level: bool) -> None:
        """Drive interrupt line ``source`` (1..nsources) high or low (level-triggered gateway)."""
        if not 1 <= source <= self.nsources:
            raise ValueError(f"PLIC source {source} out of range 1..{self.nsources}")
        with self._lock:
            self.level[source] = bool(level)
            if level and not self.claimed[source]:
                self._set_pending(source, True)
            elif not level:
                self._set_pending(source, False)
            self._update()

    def line(self, source: int) -> Callable[[bool], None]:
        """A callable ``irq(level)`` wired to ``source``, to hand to a device."""
        if not 1 <= source <= self.nsources:
            raise ValueError(f"PLIC source {source} out of range 1..{self.nsources}")
        return lambda level: self.set_level(source, level)

    def _set_pending(self, s: int, value: bool) -> None:
        self.pending[s] = value
        if value:
            self._pendset.add(s)
        else:
            self._pendset.discard(s)

    # -- arbitration ----------------------------------------------------------------------------
    def _best(self, ctx: int) -> int:
        """Highest-priority pending, enabled, unclaimed source above the threshold (0 if none)."""
        best, best_prio = 0, self.threshold[ctx]
        en = self.enable[ctx]
        for s in sorted(self._pendset):
            if not self.claimed[s] and en[s >> 5] >> (s & 31) & 1 and self.priority[s] > best_prio:
                best, best_prio = s, self.priority[s]
        return best

    def _update(self) -> None:
        for ctx in range(self.ncontexts):
            out = self._best(ctx) != 0
            if out != self._out[ctx]:
                self._out[ctx] = out
                self._set_irq(ctx // 2, MEIP if ctx % 2 == 0 else SEIP, int(out))

    def _claim(self, ctx: int) -> int:
        s = self._best(ctx)
        if s:
            self._set_pending(s, False)
            self.claimed[s] = True
            self.claims += 1
            self._update()
        return s

    def _complete(self, ctx: int, s: int) -> None:
        if not 1 <= s <= self.nsources or not self.enable[ctx][s >> 5] >> (s & 31) & 1:
            return  # spec: completing a source not enabled for the context is ignored
        if self.claimed[s]:
            self.claimed[s] = False
            if self.level[s]:
                self._set_pending(s, True)  # line still asserted: the gateway forwards it again
            self._update()

    # -- register interface ---------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        """Guest register read (32-bit registers; other sizes read the containing word)."""
        with self._lock:
            off = offset & ~3
            if off < PENDING_BASE:
                s = off >> 2
                return self.priority[s] if 1 <= s <= self.nsources else 0
            if off < ENABLE_BASE:
                w = (off - PENDING_BASE) >> 2
                if w >= self.nwords:
                    return 0
                return sum(1 << b for b in range(32) if 32 * w + b <= self.nsources and self.pending[32 * w + b])
            if off < CONTEXT_BASE:
                ctx, rem = divmod(off - ENABLE_BASE, ENABLE_STRIDE)
                w = rem >> 2
                if ctx < self.ncontexts and w < self.nwords:
                    return self.enable[ctx][w]
                return 0
            ctx, rem = divmod(off - CONTEXT_BASE, CONTEXT_STRIDE)
            if ctx >= self.ncontexts:
                return 0
            if rem == 0:
                return self.threshold[ctx]
            if rem == 4:
                return self._claim(ctx)
            return 0

    def write(self, offset: int, size: int, value: int) -> None:
        """Guest register write."""
        value &= 0xFFFFFFFF
        with self._lock:
            off = offset & ~3
            if off < PENDING_BASE:
                s = off >> 2
                if 1 <= s <= self.nsources:
                    self.priority[s] = value & PRIORITY_MASK
                    self._update()
                return
            if off < ENABLE_BASE:
                return  # pending bits are read-only
            if off < CONTEXT_BASE:
                ctx, rem = divmod(off - ENABLE_BASE, ENABLE_STRIDE)
                w = rem >> 2
                if ctx < self.ncontexts and w < self.nwords:
                    mask = 0xFFFFFFFF
                    if w == 0:
                        mask &= ~1  # source 0 does not exist
                    top = self.nsources + 1 - 32 * w
                    if top < 32:
                        mask &= (1 << top) - 1
                    self.enable[ctx][w] = value & mask
                    self._update()
                return
            ctx, rem = divmod(off - CONTEXT_BASE, CONTEXT_STRIDE)
            if ctx >= self.ncontexts:
                return
            if rem == 0:
                self.threshold[ctx] = value & PRIORITY_MASK
                self._update()
            elif rem == 4:
                self._complete(ctx, value)
