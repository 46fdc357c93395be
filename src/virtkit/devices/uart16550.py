"""The NS16550A UART: the console of QEMU's ``virt`` board (and of most PCs).

Registers (byte-wide, ``reg-shift`` 0): RBR/THR/DLL, IER/DLM, IIR/FCR, LCR, MCR, LSR, MSR, SCR.
Transmission is instant (THR empty again as soon as it is written). Input is never lost: bytes typed
or piped on the host wait in an unbounded host-side queue and move into the 16-byte receive FIFO only
while the driver is ready for them (receive interrupts enabled, or a polling reader that keeps reading
LSR), so a FIFO reset during the driver's start-up, or input that arrives before any program reads the
console, drops nothing. :meth:`pump` moves them (the run loop calls it on the vCPU thread, and a read of
RBR refills the FIFO at once). :meth:`send_break` puts a break condition on the line (LSR.BI with a
zero byte): Linux takes break + key as a magic SysRq on its serial console. The interrupt output is a
callable ``irq(level)`` (a PLIC source).

Access width: registers are bytes and repeat every 8 bytes of the window. An access of any
other size (2, 4, 8 bytes, or an odd size a bus hands over) acts on the byte register at its
offset: a read returns that register zero-extended, a write uses the low byte of the value.

Output batching: with ``buffered=True`` transmitted bytes collect in a buffer that goes to the
sink in one call when :meth:`flush` is called (the run loop does so whenever the guest stops,
idles or leaves the run loop) or when :data:`TX_BATCH` bytes have piled up; the sink then sees
the same bytes in the same order, in fewer, larger calls. Unbuffered (the default), every
byte is one sink call.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from virtkit.machine.state import StateError, fields, record

# register offsets
RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

IER_RDI, IER_THRI, IER_RLSI, IER_MSI = 0x01, 0x02, 0x04, 0x08
IIR_NO_INT, IIR_MSI, IIR_THRI, IIR_RDI, IIR_RLSI = 0x01, 0x00, 0x02, 0x04, 0x06
IIR_FIFO_ENABLED = 0xC0
FCR_FIFO_ENABLE, FCR_CLEAR_RCVR, FCR_CLEAR_XMIT = 0x01, 0x02, 0x04
LCR_DLAB = 0x80
MCR_DTR, MCR_RTS, MCR_OUT1, MCR_OUT2, MCR_LOOP = 0x01, 0x02, 0x04, 0x08, 0x10
LSR_DR, LSR_OE, LSR_BI, LSR_THRE, LSR_TEMT = 0x01, 0x02, 0x10, 0x20, 0x40
MSR_DCTS, MSR_DDSR, MSR_TERI, MSR_DDCD = 0x01, 0x02, 0x04, 0x08
MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80
LSR_IDLE = LSR_THRE | LSR_TEMT
TX_BATCH = 4096  # a buffered UART hands its output to the sink at least every this many bytes
FIFO_SIZE = 16
BREAK = -1  # a break condition in the receive queues (reads as a zero byte with LSR.BI)
#: LSR reads in a row, with receive interrupts off and no THR write, that mark a polling reader
POLLED_READER = 64


class Uart16550:
    """One NS16550A. ``sink(bytes)`` receives transmitted bytes; :meth:`feed` queues input."""

    STATE_KIND = "uart16550"
    STATE_VERSION = 1

    def __init__(self, sink: Callable[[bytes], None] | None = None, irq: Callable[[bool], None] | None = None,
                 buffered: bool = False) -> None:
        self.sink = sink or (lambda data: None)
        self.irq = irq or (lambda level: None)
        self.buffered = buffered
        self._lock = threading.RLock()
        self._rx: deque[int] = deque()  # the device's receive FIFO (what the guest sees)
        self._host: deque[int] = deque()  # input from the host not yet on the line
        self._lsr_polls = 0
        self._shadow_host = False
        #: called (from any thread) when host input is waiting: the machine schedules :meth:`pump`
        self.on_input: Callable[[], None] = lambda: None
        self._tx = bytearray()  # buffered output not yet handed to the sink
        self.tx_bytes = 0
        self.rx_bytes = 0
        #: ``fast_hook(thr_plain, lsr, msr)``, when set, hears after every state change whether THR writes
        #: may be buffered (they transmit, and re-assert THRE when the engine hands them over, which it does
        #: before any other device access: no DLAB, no loopback) and the values LSR and MSR reads would
        #: return without side effects (None when a read would clear error or delta bits): coalesced MMIO.
        self.fast_hook: Callable[[bool, int | None, int | None], None] | None = None
        self.reset()

    def publish(self) -> None:
        """Tell :attr:`fast_hook` the current fast-path state (called after every state change)."""
        self._shadow_host = bool(self._host)
        if self.fast_hook is not None:
            plain = not (self.lcr & LCR_DLAB or self.mcr & MCR_LOOP)
            # no shadow while LSR reads have side effects: error bits, a break, or a polling reader to detect
            lsr = (None if self.lsr_errors or self._rx and self._rx[0] == BREAK or self._host and not self._rx
                   else (LSR_IDLE | LSR_DR if self._rx else LSR_IDLE))
            # (Linux's 8250 driver reads MSR in every interrupt: a shadow saves an exit per 16 bytes sent)
            msr = None if self.msr_delta else self._modem_status()
            self.fast_hook(plain, lsr, msr)

    def flush(self) -> None:
        """Hand buffered output to the sink (a no-op when nothing is buffered). Called on the vCPU thread."""
        if self._tx:
            data = bytes(self._tx)
            self._tx.clear()
            self.sink(data)

    def reset(self) -> None:
        """Power-on register state."""
        with self._lock:
            self.ier = 0
            self.lcr = 0x03  # 8N1
            self.mcr = MCR_OUT2
            self.scr = 0
            self.fcr = 0
            self.dll, self.dlm = 0x0C, 0x00  # 9600 baud at 1.8432 MHz
            self.lsr_errors = 0
            self.msr_delta = 0
            self.thr_ipending = False
            self._rx.clear()
            self._level = False
            self.irq(False)
            self.publish()

    # -- state ----------------------------------------------------------------------------------
    def save(self) -> dict:
        """Registers, the receive FIFO and the host input not yet delivered (output is flushed first)."""
        with self._lock:
            self.flush()
            return record(self, ier=self.ier, lcr=self.lcr, mcr=self.mcr, scr=self.scr, fcr=self.fcr,
                          dll=self.dll, dlm=self.dlm, lsr_errors=self.lsr_errors, msr_delta=self.msr_delta,
                          thr_ipending=self.thr_ipending, level=self._level, lsr_polls=self._lsr_polls,
                          rx=list(self._rx), host=list(self._host))

    def restore(self, state: dict) -> None:
        """Take the state :meth:`save` returned; the interrupt line is driven to the saved level."""
        f = fields(self, state)
        regs = {k: f.int(k, 0, 0xFF) for k in ("ier", "lcr", "mcr", "scr", "fcr", "dll", "dlm", "lsr_errors",
                                                 "msr_delta")}
        rx = f.ints("rx", lo=BREAK, hi=0xFF)
        host = f.ints("host", lo=BREAK, hi=0xFF)
        if len(rx) > FIFO_SIZE:
            raise StateError(f"uart16550 state: a receive FIFO of {len(rx)} bytes (it holds {FIFO_SIZE})")
        thr, level, polls = f.bool("thr_ipending"), f.bool("level"), f.int("lsr_polls", 0)
        with self._lock:
            for k, v in regs.items():
                setattr(self, k, v)
            self.thr_ipending = thr
            self._lsr_polls = polls
            self._rx = deque(rx)
            self._host = deque(host)
            self._tx.clear()
            self._level = level
            self.irq(level)
            self.publish()

    # -- host side ------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Queue bytes typed on the host for the guest (any thread); they reach the FIFO through :meth:`pump`."""
        if not data:
            return
        self._host.extend(data)
        self.rx_bytes += len(data)
        self.on_input()

    def send_break(self, key: bytes = b"") -> None:
        """Put a break on the line, then ``key`` (Linux: break + 'o' = SysRq power off on the serial console)."""
        self._host.append(BREAK)
        self._host.extend(key)
        self.on_input()

    def take_input(self, n: int) -> bytes:
        """Up to ``n`` bytes of console input, taken past the registers (the SBI debug console shares the
        console with this UART): what the receive FIFO holds first, then what waits on the host side."""
        out = bytearray()
        with self._lock:
            for q in (self._rx, self._host):
                while q and len(out) < n:
                    b = q.popleft()
                    if b != BREAK:
                        out.append(b)
            self._update()
            self.publish()
        return bytes(out)

    def emit(self, data: bytes) -> None:
        """Output that did not come through the registers (the SBI console shares this UART): it leaves
        through the transmitter as THR writes would, in order with the UART's own output (and, as after any
        THR write, THRE is pending: the engine may then take further bytes without an exit); while the
        divisor latch or loopback is on, straight to the console."""
        with self._lock:
            if self.lcr & LCR_DLAB or self.mcr & MCR_LOOP:
                self.flush()
                self.tx_bytes += len(data)
                self.sink(data)
                return
            self._send(data)

    def _ready(self) -> bool:
        return bool(self.ier & IER_RDI) or self._lsr_polls >= POLLED_READER or bool(self.mcr & MCR_LOOP)

    def pump(self) -> None:
        """Move waiting host input into the FIFO while the driver takes it (vCPU thread)."""
        if not self._host or not self._ready() or len(self._rx) >= FIFO_SIZE:
            if bool(self._host) != self._shadow_host:
                with self._lock:
                    self.publish()  # the LSR shadow goes off while input waits (a polling reader must be seen)
            return
        with self._lock:
            self._fill()
            self._update()
            self.publish()

    def _fill(self) -> None:
        room = (FIFO_SIZE if self.fcr & FCR_FIFO_ENABLE else 1) - len(self._rx)
        host = self._host
        while room > 0 and host:
            self._rx.append(host.popleft())
            room -= 1

    @property
    def rx_pending(self) -> int:
        """Bytes received from the host that the guest has not read yet."""
        return len(self._rx) + len(self._host)

    # -- register interface ---------------------------------------------------------------------
    def _modem_status(self) -> int:
        if self.mcr & MCR_LOOP:  # loopback: outputs wire back to the inputs
            m = self.mcr
            return ((m & MCR_RTS) << 3) | ((m & MCR_DTR) << 5) | ((m & MCR_OUT1) << 4) | ((m & MCR_OUT2) << 4)
        return MSR_DCD | MSR_DSR | MSR_CTS

    def _iir(self) -> int:
        fifo = IIR_FIFO_ENABLED if self.fcr & FCR_FIFO_ENABLE else 0
        if self.ier & IER_RLSI and (self.lsr_errors or self._rx and self._rx[0] == BREAK):
            return fifo | IIR_RLSI
        if self.ier & IER_RDI and self._rx:
            return fifo | IIR_RDI
        if self.ier & IER_THRI and self.thr_ipending:
            return fifo | IIR_THRI
        if self.ier & IER_MSI and self.msr_delta:
            return fifo | IIR_MSI
        return fifo | IIR_NO_INT

    def _update(self) -> None:
        level = not (self._iir() & IIR_NO_INT)
        if level != self._level:
            self._level = level
            self.irq(level)

    def read(self, offset: int, size: int) -> int:
        """Guest register read (only the low byte of wider accesses is meaningful)."""
        r = offset & 7
        if r == LSR and not self.lsr_errors and not self._host and not (self._rx and self._rx[0] == BREAK):
            # the console's hot path (poll LSR before each THR write): nothing to clear, no line to update
            return LSR_IDLE | LSR_DR if self._rx else LSR_IDLE
        with self._lock:
            v = self._read(r)
            self.publish()
            return v

    def _read(self, r: int) -> int:
        dlab = self.lcr & LCR_DLAB
        if r == RBR:
            if dlab:
                return self.dll
            v = self._rx.popleft() if self._rx else 0
            if self._host and self._ready():
                self._fill()
            self._update()
            return v if v >= 0 else 0  # a break reads as a zero byte
        if r == IER:
            return self.dlm if dlab else self.ier
        if r == IIR:
            v = self._iir()
            if v & 0x0F == IIR_THRI:
                self.thr_ipending = False  # reading IIR acknowledges THRE
                self._update()
            return v
        if r == LCR:
            return self.lcr
        if r == MCR:
            return self.mcr
        if r == LSR:
            if not self._rx and self._host and not self.ier & IER_RDI:
                self._lsr_polls += 1  # a reader polling with interrupts off
                if self._ready():
                    self._fill()
            v = LSR_THRE | LSR_TEMT | (LSR_DR if self._rx else 0) | self.lsr_errors
            if self._rx and self._rx[0] == BREAK:
                v |= LSR_BI
            self.lsr_errors = 0
            self._update()
            return v
        if r == MSR:
            v = self._modem_status() | self.msr_delta
            self.msr_delta = 0
            self._update()
            return v
        return self.scr

    def _transmit(self, value: int) -> None:
        self.tx_bytes += 1
        self._lsr_polls = 0
        if self.buffered:
            self._tx.append(value)
            if len(self._tx) >= TX_BATCH:
                self.flush()
        else:
            self.sink(bytes((value,)))

    def transmit_run(self, data: bytes) -> None:
        """THR writes the engine buffered while THR writes could be (its fast cell is on only then): the same
        as ``write(THR, b)`` for each byte, in one call: the bytes go out, THRE is pending again (an
        interrupt if enabled: the driver sees it at its next device access, as after a character time)."""
        if not (self.lcr & LCR_DLAB or self.mcr & MCR_LOOP):
            with self._lock:
                self._send(data)
            return
        for b in data:  # (the state changed after all: register by register)
            self.write(THR, 1, b)

    def _send(self, data: bytes) -> None:
        """``data`` out of the transmitter as that many THR writes would send it, and THRE pending again after
        them (the SBI console's output and the engine's buffered THR runs; the lock is held)."""
        self.tx_bytes += len(data)
        self._lsr_polls = 0
        if self.buffered:
            self._tx.extend(data)
            if len(self._tx) >= TX_BATCH:
                self.flush()
        else:
            self.sink(bytes(data))
        if not self.thr_ipending:
            self.thr_ipending = True
            self._update()
            self.publish()

    def write(self, offset: int, size: int, value: int) -> None:
        """Guest register write (only the low byte of the value is used)."""
        value &= 0xFF
        r = offset & 7
        if r == THR and self.thr_ipending and not (self.lcr & LCR_DLAB or self.mcr & MCR_LOOP):
            self._transmit(value)  # the console's hot path: THRE already pending, no interrupt state changes
            return
        with self._lock:
            self._write(r, value)
            self.publish()

    def _write(self, r: int, value: int) -> None:
        dlab = self.lcr & LCR_DLAB
        if r == THR:
            if dlab:
                self.dll = value
                return
            if self.mcr & MCR_LOOP:
                self._rx.append(value)
            else:
                self._transmit(value)
            self.thr_ipending = True
        elif r == IER:
            if dlab:
                self.dlm = value
                return
            was = self.ier
            self.ier = value & 0x0F
            if self.ier & IER_THRI and not was & IER_THRI:
                self.thr_ipending = True  # enabling THRE with an empty THR interrupts at once
            if self.ier & IER_RDI and self._host:
                self._fill()
        elif r == FCR:
            if value & FCR_CLEAR_RCVR:
                self._rx.clear()
            self.fcr = value & 0xC9
        elif r == LCR:
            self.lcr = value
        elif r == MCR:
            old = self._modem_status()
            self.mcr = value & 0x1F
            new = self._modem_status()
            changed = (old ^ new) & 0xF0
            self.msr_delta |= (changed >> 4) & (MSR_DCTS | MSR_DDSR | MSR_DDCD)
            if old & MSR_RI and not new & MSR_RI:
                self.msr_delta |= MSR_TERI
        elif r == SCR:
            self.scr = value
        # LSR and MSR are read-only
        self._update()
