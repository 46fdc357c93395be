"""What the GDB stub (:mod:`virtkit.machine.gdbstub`) needs to know about a RISC-V hart.

Register numbers follow GDB's RISC-V target (and QEMU's stub): x0-x31 are 0-31, pc 32, f0-f31 33-64,
CSR n is 65 + n (fflags, frm and fcsr sit in the FPU feature, as GDB expects), and the privilege mode
is the ``priv`` register of the ``org.gnu.gdb.riscv.virtual`` feature (65 + 4096). The target
description sent to GDB lists them, so ``info registers``, ``p $scause`` and ``p $priv`` work.
"""

from __future__ import annotations

import struct
from typing import Any

from virtkit.engines.riscv import consts as c

ABI = ("zero ra sp gp tp t0 t1 t2 fp s1 a0 a1 a2 a3 a4 a5 a6 a7 s2 s3 s4 s5 s6 s7 s8 s9 s10 s11 t3 t4 t5 "
       "t6").split()
FABI = ("ft0 ft1 ft2 ft3 ft4 ft5 ft6 ft7 fs0 fs1 fa0 fa1 fa2 fa3 fa4 fa5 fa6 fa7 fs2 fs3 fs4 fs5 fs6 fs7 fs8 "
        "fs9 fs10 fs11 ft8 ft9 ft10 ft11").split()
PC, F0, CSR0 = 32, 33, 65
PRIV = CSR0 + 4096
FP_CSRS = {"fflags": c.FFLAGS, "frm": c.FRM, "fcsr": c.FCSR}
CSRS = {name.lower(): getattr(c, name) for name in (
    "SSTATUS", "SIE", "STVEC", "SCOUNTEREN", "SENVCFG", "SSCRATCH", "SEPC", "SCAUSE", "STVAL", "SIP", "SATP",
    "MSTATUS", "MISA", "MEDELEG", "MIDELEG", "MIE", "MTVEC", "MCOUNTEREN", "MENVCFG", "MCOUNTINHIBIT",
    "MSCRATCH", "MEPC", "MCAUSE", "MTVAL", "MIP", "MCYCLE", "MINSTRET", "CYCLE", "TIME", "INSTRET",
    "MVENDORID", "MARCHID", "MIMPID", "MHARTID")}
CSRS.update({f"pmpcfg{i}": c.PMPCFG0 + i for i in (0, 2)})
CSRS.update({f"pmpaddr{i}": c.PMPADDR0 + i for i in range(c.NPMP)})
PRIV_NAMES = {0: "U-mode", 1: "S-mode", 3: "M-mode"}
V_NAMES = {0: "VU-mode", 1: "VS-mode"}
EBREAK = {2: struct.pack("<H", 0x9002), 4: struct.pack("<I", 0x0010_0073)}


def _feature(name: str, regs: list[str]) -> str:
    return f'<?xml version="1.0"?>\n<!DOCTYPE feature SYSTEM "gdb-target.dtd">\n<feature name="{name}">\n' + \
        "".join(f"  {r}\n" for r in regs) + "</feature>\n"


def _xml_files() -> dict[str, str]:
    cpu = [f'<reg name="{n}" bitsize="64" type="{"code_ptr" if n == "ra" else "data_ptr" if n in ("sp", "gp", "tp", "fp") else "int"}" regnum="{i}"/>'  # noqa: E501
           for i, n in enumerate(ABI)] + [f'<reg name="pc" bitsize="64" type="code_ptr" regnum="{PC}"/>']
    fpu = [f'<reg name="{n}" bitsize="64" type="ieee_double" regnum="{F0 + i}"/>' for i, n in enumerate(FABI)] + \
        [f'<reg name="{n}" bitsize="64" type="int" regnum="{CSR0 + num}" group="float"/>' for n, num in FP_CSRS.items()]
    csr = [f'<reg name="{n}" bitsize="64" type="int" regnum="{CSR0 + num}" group="csr"/>'
           for n, num in sorted(CSRS.items(), key=lambda kv: kv[1])]
    virt = [f'<reg name="priv" bitsize="64" type="int" regnum="{PRIV}" group="system"/>']
    target = ('<?xml version="1.0"?>\n<!DOCTYPE target SYSTEM "gdb-target.dtd">\n<target version="1.0">\n'
              "  <architecture>riscv:rv64</architecture>\n"
              + "".join(f'  <xi:include href="{f}"/>\n' for f in ("cpu.xml", "fpu.xml", "csr.xml", "virtual.xml"))
              + "</target>\n").replace("<target ", '<target xmlns:xi="http://www.w3.org/2001/XInclude" ')
    return {"target.xml": target, "cpu.xml": _feature("org.gnu.gdb.riscv.cpu", cpu),
            "fpu.xml": _feature("org.gnu.gdb.riscv.fpu", fpu), "csr.xml": _feature("org.gnu.gdb.riscv.csr", csr),
            "virtual.xml": _feature("org.gnu.gdb.riscv.virtual", virt)}


_XML = _xml_files()
_CSR_NUMS = set(CSRS.values()) | set(FP_CSRS.values())


class RiscvGdbTarget:
    """Registers, memory and breakpoints of a :class:`~virtkit.engines.riscv.engine.RiscvEngine` for the stub."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def xml(self, annex: str) -> str | None:
        """A file of the target description (``target.xml`` and the features it includes)."""
        return _XML.get(annex)

    def pc(self, hart: int) -> int:
        """The hart's program counter."""
        return self.engine.pc(hart)

    def describe(self, hart: int) -> str:
        """What ``info threads`` shows next to a hart."""
        e = self.engine
        names = V_NAMES if e.h and int(e.hs[hart, c.HS_V]) else PRIV_NAMES
        return f"hart {hart}, {names.get(e.priv(hart), '?')}, {e.hart_state(hart)}"

    def translate(self, hart: int, va: int) -> int | None:
        """The physical address of ``va`` through the hart's current page tables (None: not mapped)."""
        return self.engine.translate(hart, va)

    def breakpoint_insn(self, size: int) -> bytes:
        """``c.ebreak`` (2 bytes) or ``ebreak`` (4)."""
        return EBREAK[size]

    # -- registers ------------------------------------------------------------------------------------------
    def read_gp(self, hart: int) -> bytes:
        """The ``g`` packet: x0-x31 and pc (GDB asks for the others one by one)."""
        e = self.engine
        return struct.pack("<33Q", *[e.get_reg(hart, i) for i in range(32)], e.pc(hart))

    def write_gp(self, hart: int, data: bytes) -> None:
        """The ``G`` packet: x1-x31 and pc (x0 stays zero)."""
        if len(data) < 33 * 8:
            raise ValueError("short G packet")
        vals = struct.unpack_from("<33Q", data)
        for i in range(1, 32):
            self.engine.set_reg(hart, i, vals[i])
        self.engine.set_pc(hart, vals[32])

    def read_reg(self, hart: int, n: int) -> bytes | None:
        """Register ``n`` in GDB's numbering, 8 bytes little-endian (None: no such register)."""
        e = self.engine
        if n < 32:
            v = e.get_reg(hart, n)
        elif n == PC:
            v = e.pc(hart)
        elif F0 <= n < F0 + 32:
            v = e.get_freg(hart, n - F0)
        elif n == PRIV:
            v = e.priv(hart)
        elif n - CSR0 == c.SATP and e.trap:  # trap and emulate: the guest's satp, not the shadow root
            v = int(e.csr[hart, c.TM_SATP]) & (1 << 64) - 1
        elif n - CSR0 in _CSR_NUMS:
            v = e.read_csr(hart, n - CSR0)
        else:
            return None
        return struct.pack("<Q", v)

    def write_reg(self, hart: int, n: int, data: bytes) -> bool:
        """Set register ``n`` (False: no such register, or a value it cannot take)."""
        if len(data) != 8:
            return False
        (v,) = struct.unpack("<Q", data)
        e = self.engine
        if n < 32:
            e.set_reg(hart, n, v)
        elif n == PC:
            e.set_pc(hart, v)
        elif F0 <= n < F0 + 32:
            e.set_freg(hart, n - F0, v)
        elif n == PRIV:
            if v not in PRIV_NAMES:
                return False
            e.set_priv(hart, v)
        elif n - CSR0 in _CSR_NUMS:
            e.write_csr(hart, n - CSR0, v)
        else:
            return False
        return True

    # -- memory -------------------------------------------------------------------------------------------------
    def _pieces(self, hart: int, addr: int, n: int) -> list[tuple[int, int]] | None:
        """(physical address, length) per page of [addr, addr+n) through the hart's translation."""
        out = []
        while n > 0:
            k = min(n, 4096 - (addr & 0xFFF))
            pa = self.engine.translate(hart, addr)
            if pa is None or not self.engine.mem.contains(pa, k):
                return None
            out.append((pa, k))
            addr, n = addr + k, n - k
        return out

    def read_mem(self, hart: int, addr: int, n: int) -> bytes | None:
        """``n`` bytes at virtual ``addr`` (None when a page is not mapped or not RAM)."""
        pieces = self._pieces(hart, addr, n)
        if pieces is None:
            return None
        return b"".join(self.engine.mem.read(pa, k) for pa, k in pieces)

    def write_mem(self, hart: int, addr: int, data: bytes) -> bool:
        """Write at virtual ``addr`` (False when a page is not mapped or not RAM; nothing is written then)."""
        pieces = self._pieces(hart, addr, len(data))
        if pieces is None:
            return False
        off = 0
        for pa, k in pieces:
            self.engine.mem.write(pa, data[off : off + k])
            off += k
        return True
