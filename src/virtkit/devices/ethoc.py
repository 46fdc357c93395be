"""The OpenCores 10/100 Ethernet MAC (``opencores,ethoc``): an emulated legacy NIC to set against virtio-net.

Linux drives it with ``drivers/net/ethernet/ethoc.c`` on the platform bus. It is a NIC as hardware
built it, so every step costs the guest register accesses (each one an exit to this model): 128 buffer
descriptors (BDs) in the register window at 0x400, TX BDs first (``TX_BD_NUM`` of them), then RX BDs;
each BD is a status word (READY/EMPTY, WRAP, IRQ, length in the high half) and a guest-physical buffer
address the device reads (TX) or writes (RX) by DMA. Interrupt sources (``INT_SOURCE``, write 1 to
clear) are masked by ``INT_MASK``. The MII management interface reaches one generic PHY at address 1
that reports a 100 Mbit/s full-duplex link. Received frames get their 4-byte CRC appended, as the
hardware stores it (the driver strips it).
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Callable
from typing import Any

from virtkit.machine.memory import GuestMemory
from virtkit.machine.state import StateError, fields, record

MODER, INT_SOURCE, INT_MASK, TX_BD_NUM = 0x00, 0x04, 0x08, 0x20
MIICOMMAND, MIIADDRESS, MIITX_DATA, MIIRX_DATA, MIISTATUS = 0x2C, 0x30, 0x34, 0x38, 0x3C
MAC_ADDR0, MAC_ADDR1 = 0x40, 0x44
REGS_END = 0x54
BD_BASE, NBD = 0x400, 128
WINDOW = 0x800

MODER_RXEN, MODER_TXEN, MODER_PAD = 1, 2, 1 << 15
INT_TXB, INT_TXE, INT_RXB, INT_RXE, INT_BUSY = 1, 2, 4, 8, 16
BD_READY_EMPTY, BD_WRAP, BD_IRQ = 1 << 15, 1 << 13, 1 << 14
MII_READ, MII_WRITE = 2, 4
PHY_ADDR = 1
MAX_FRAME = 1536
BACKLOG = 256

#: the generic PHY's registers: BMCR (autonegotiation on, 100 Mbit/s, full duplex), BMSR (link up, autoneg
#: complete, 10/100 half/full capable), an OUI no driver claims (Linux binds "Generic PHY"), our advertisement
#: and the link partner's
PHY_RESET = {0: 0x3100, 1: 0x786D, 2: 0x0000, 3: 0x0001, 4: 0x01E1, 5: 0x45E1, 6: 0x0001}


class Ethoc:
    """One ethoc MAC on ``backend`` (a :class:`~virtkit.network.backend.NetBackend`); ``irq(level)`` is its line."""

    STATE_KIND = "ethoc"
    STATE_VERSION = 1

    def __init__(self, mem: GuestMemory, backend: Any, mac: bytes, irq: Callable[[bool], None]) -> None:
        self.mem = mem
        self.backend = backend
        self.mac = bytes(mac)
        self.irq = irq
        self.lock = threading.RLock()
        self.regs = [0] * (REGS_END // 4)
        self.bds = [0] * (2 * NBD)
        self.phy = dict(PHY_RESET)
        self.tx_cur = 0
        self.rx_cur = 0
        self.backlog: list[bytes] = []
        self.counts = {"rx_frames": 0, "tx_frames": 0, "rx_bytes": 0, "tx_bytes": 0, "rx_dropped": 0,
                       "tx_dropped": 0}
        self._level = False
        self.reset()
        backend.set_receiver(self.receive)

    def reset(self) -> None:
        """Power-on state: MAC from the config, 64 TX BDs, every source masked."""
        with self.lock:
            self.regs = [0] * (REGS_END // 4)
            self.regs[MODER // 4] = 0xA000
            self.regs[TX_BD_NUM // 4] = 0x40
            self.regs[MAC_ADDR0 // 4] = int.from_bytes(self.mac[2:6], "big")
            self.regs[MAC_ADDR1 // 4] = int.from_bytes(self.mac[0:2], "big")
            self.bds = [0] * (2 * NBD)
            self.tx_cur = self.rx_cur = 0
            self.backlog.clear()
            self._update()

    # -- state ------------------------------------------------------------------------------------
    def save(self) -> dict:
        """Registers, buffer descriptors, ring positions, PHY registers, frames not yet delivered."""
        with self.lock:
            return record(self, regs=list(self.regs), bds=list(self.bds), tx_cur=self.tx_cur, rx_cur=self.rx_cur,
                          phy=[[k, v] for k, v in sorted(self.phy.items())], mac=self.mac.hex(),
                          backlog=[f.hex() for f in self.backlog])

    def restore(self, state: dict) -> None:
        """Take a saved state (the MAC stays this NIC's: a clone keeps its own address)."""
        f = fields(self, state)
        regs = f.ints("regs", REGS_END // 4, 0, 0xFFFFFFFF)
        bds = f.ints("bds", 2 * NBD, 0, 0xFFFFFFFF)
        tx, rx = f.int("tx_cur", 0, NBD - 1), f.int("rx_cur", 0, NBD - 1)
        phy = {}
        for pair in f.list("phy"):
            if not (isinstance(pair, list) and len(pair) == 2 and all(type(v) is int for v in pair)
                    and 0 <= pair[0] < 32 and 0 <= pair[1] <= 0xFFFF):
                raise StateError(f"ethoc state: bad PHY register {pair!r}")
            phy[pair[0]] = pair[1]
        backlog = [bytes.fromhex(x) for x in f.list("backlog") if isinstance(x, str)]
        if len(backlog) > BACKLOG or any(len(b) > MAX_FRAME for b in backlog):
            raise StateError("ethoc state: a backlog too long or with frames too large")
        with self.lock:
            self.regs, self.bds, self.tx_cur, self.rx_cur, self.phy = regs, bds, tx, rx, phy
            self.regs[MAC_ADDR0 // 4] = int.from_bytes(self.mac[2:6], "big")
            self.regs[MAC_ADDR1 // 4] = int.from_bytes(self.mac[0:2], "big")
            self.backlog = backlog
            self._level = False
            self._update()

    def stats(self) -> dict[str, int]:
        """Frame and byte counters."""
        return dict(self.counts)

    # -- registers ----------------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        """A 32-bit register or BD word (narrower reads see the low bytes)."""
        with self.lock:
            word = self._read32(offset & ~3)
        return (word >> (8 * (offset & 3))) & ((1 << (8 * size)) - 1)

    def _read32(self, off: int) -> int:
        if BD_BASE <= off < BD_BASE + 8 * NBD:
            return self.bds[(off - BD_BASE) // 4]
        if off < REGS_END:
            return self.regs[off // 4]
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        """Register and BD writes; a TX BD made READY is sent at once, an RX BD made EMPTY takes waiting frames."""
        off = offset & ~3
        with self.lock:
            if size < 4:  # merge a narrow store into the word
                shift = 8 * (offset & 3)
                mask = ((1 << (8 * size)) - 1) << shift
                value = (self._read32(off) & ~mask) | ((value << shift) & mask)
            value &= 0xFFFFFFFF
            if BD_BASE <= off < BD_BASE + 8 * NBD:
                i = (off - BD_BASE) // 4
                self.bds[i] = value
                if i % 2 == 0 and value & BD_READY_EMPTY:
                    if i // 2 < self._ntx():
                        self._transmit()
                    else:
                        self._deliver()
                return
            if off >= REGS_END:
                return
            r = off // 4
            if off == INT_SOURCE:
                self.regs[r] &= ~value  # write 1 to clear
            elif off == MIICOMMAND:
                self.regs[r] = value
                self._mii(value)
            elif off == MIISTATUS or off == MIIRX_DATA:
                return  # read-only
            elif off == TX_BD_NUM:
                self.regs[r] = min(value & 0xFF, NBD)
            elif off == MODER:
                self.regs[r] = value & 0x1FFFF
                if value & MODER_RXEN:
                    self._deliver()
                if value & MODER_TXEN:
                    self._transmit()
            else:
                self.regs[r] = value
            self._update()

    def _ntx(self) -> int:
        return self.regs[TX_BD_NUM // 4]

    def _mii(self, cmd: int) -> None:
        """An MDIO read or write of the PHY (completes at once: MIISTATUS is never busy)."""
        addr = self.regs[MIIADDRESS // 4]
        phy, reg = addr & 0x1F, (addr >> 8) & 0x1F
        if cmd & MII_READ:
            value = self.phy.get(reg, 0) if phy == PHY_ADDR else 0xFFFF
            self.regs[MIIRX_DATA // 4] = value
        elif cmd & MII_WRITE and phy == PHY_ADDR:
            value = self.regs[MIITX_DATA // 4] & 0xFFFF
            if reg == 0:
                value &= ~0x8200  # reset and restart-autonegotiation complete at once
            if reg in (0, 4):
                self.phy[reg] = value

    def _update(self) -> None:
        level = bool(self.regs[INT_SOURCE // 4] & self.regs[INT_MASK // 4])
        if level != self._level:
            self._level = level
            self.irq(level)

    # -- transmit (guest -> wire) -----------------------------------------------------------------------
    def _transmit(self) -> None:
        if not self.regs[MODER // 4] & MODER_TXEN:
            return
        ntx = self._ntx()
        if ntx == 0:
            return
        for _ in range(ntx):
            i = self.tx_cur
            stat, addr = self.bds[2 * i], self.bds[2 * i + 1]
            if not stat & BD_READY_EMPTY:
                break
            length = stat >> 16
            frame = self.mem.read(addr, length) if 14 <= length <= MAX_FRAME and self.mem.contains(addr, length) \
                else None
            if frame is None:
                self.counts["tx_dropped"] += 1
                self.regs[INT_SOURCE // 4] |= INT_TXE
            else:
                if len(frame) < 60 and self.regs[MODER // 4] & MODER_PAD:
                    frame = frame.ljust(60, b"\0")
                try:
                    self.backend.send(frame)
                    self.counts["tx_frames"] += 1
                    self.counts["tx_bytes"] += len(frame)
                except OSError:
                    self.counts["tx_dropped"] += 1
                if stat & BD_IRQ:
                    self.regs[INT_SOURCE // 4] |= INT_TXB
            self.bds[2 * i] = stat & ~(BD_READY_EMPTY | 0x1FF)  # done, no error bits
            self.tx_cur = 0 if stat & BD_WRAP or i + 1 >= ntx else i + 1
        self._update()

    # -- receive (wire -> guest) ----------------------------------------------------------------------
    def receive(self, frame: bytes) -> None:
        """A frame from the backend (any thread): into the next empty RX BD, or waiting for one."""
        with self.lock:
            if len(self.backlog) >= BACKLOG or len(frame) > MAX_FRAME - 4:
                self.counts["rx_dropped"] += 1
                return
            self.backlog.append(bytes(frame))
            self._deliver()

    def _deliver(self) -> None:
        if not self.regs[MODER // 4] & MODER_RXEN:
            return
        ntx = self._ntx()
        nrx = NBD - ntx
        raised = False
        while self.backlog and nrx > 0:
            i = ntx + self.rx_cur
            stat, addr = self.bds[2 * i], self.bds[2 * i + 1]
            if not stat & BD_READY_EMPTY:
                if not raised:
                    self.regs[INT_SOURCE // 4] |= INT_BUSY  # no buffer: the frame waits
                break
            frame = self.backlog.pop(0)
            data = frame + struct.pack("<I", zlib.crc32(frame))
            if self.mem.contains(addr, len(data)):
                self.mem.write(addr, data)
                self.counts["rx_frames"] += 1
                self.counts["rx_bytes"] += len(frame)
                self.bds[2 * i] = (len(data) << 16) | (stat & (BD_WRAP | BD_IRQ))
                if stat & BD_IRQ:
                    self.regs[INT_SOURCE // 4] |= INT_RXB
            else:  # a buffer outside RAM: the frame is lost, the BD returned with an error
                self.counts["rx_dropped"] += 1
                self.bds[2 * i] = (stat & (BD_WRAP | BD_IRQ)) | 0x40  # overrun
                self.regs[INT_SOURCE // 4] |= INT_RXE
            raised = True
            self.rx_cur = 0 if stat & BD_WRAP or self.rx_cur + 1 >= nrx else self.rx_cur + 1
        self._update()

    def poll_backend(self) -> None:
        """Drain a pollable backend (call when its ``fileno()`` is readable)."""
        while (frame := self.backend.recv()) is not None:
            self.receive(frame)
