"""The JIT tier of the RISC-V engine: hot guest code regions translated to host code with LLVM.

The Numba interpreter (``core.run_slice``) counts how often each block entry (the target of a
taken branch or jump, a trap vector, a return) is reached, keyed by the guest-physical RAM offset.
When a count reaches the threshold it queues the offset in a ring (``jreq``). A translator
thread (:meth:`Jit.service`) takes the hottest waiting entry and has the translator *process*
(``jitworker.py``; :func:`translate`) build a *region* from there: every instruction reachable
inside the same 4 KiB page through fall-through, branches and direct jumps, up to
``MAX_REGION`` instructions. Each region becomes one LLVM function (IR text -> llvmlite -> object
code, the same LLVM Numba uses) with the guest registers cached in SSA values inside a block,
intra-region branches as native jumps, the software TLB probed inline for loads and stores, and
the instruction limit checked on every backward branch. The engine links the object code (MCJIT)
and publishes its entry points in ``jtab``; the interpreter calls them through
``core.call_native``. Object code is also kept on disk (:func:`cache_root`) for later runs.
Deterministic engines translate in-process at once (``background=False``).

Only the common integer instructions are translated (RV64IM loads, stores, ALU, branches, jumps,
FENCE); anything else, and any access the inline TLB probe cannot serve (a TLB miss, a
misaligned access, MMIO, a store while another hart holds an LR reservation), makes the native
code stop *before* that instruction and hand it back to the interpreter ("bail"; after CSR, FP
and AMO instructions the region goes on and the core re-enters it at the next one). Traps,
CSRs, FP, AMOs, interrupts and timers therefore keep exactly one implementation: the
interpreter's. The translation is per physical page and independent of the virtual mapping
(pc-relative values are computed from the entry pc passed in).

Self-modifying code and DMA: ``cmap`` has one byte per 256-byte chunk of RAM; bit 0 says some
live region was translated from it. Every store (interpreter, native code, device DMA through
:class:`~virtkit.machine.memory.GuestMemory`) that hits such a chunk invalidates the regions
covering it before the next instruction runs; bits 1..7 count invalidations, and a chunk
invalidated ``MAX_INVALIDATIONS`` times is not translated again (code and data sharing a chunk).

The persistent cache and the warm start: a region file is keyed by its page's bytes and place, its
entry and the hart count; a per-page index (keyed by the page's bytes and place) maps every entry
of every region translated from that page to its file, with the guest instruction count at which a
run first wanted it. Before the first instruction the engine installs the cached regions of the
pages the images were loaded into, earliest wanted first (:meth:`Jit.plan_preload`,
:meth:`Jit.preload_some`; a saved plan per set of loads makes that one file read), each checked
against the page bytes it was compiled from. Requests that miss the cache wait until that is done.
A region cut by the instruction cap or the page end asks for its continuation at once; the core
asks again every ``REQ_AGAIN`` entries for a block that still runs interpreted.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from virtkit.engines.riscv.consts import (
    CF_NRESV,
    CSHIFT,
    J_ARG,
    J_CFG,
    J_CMAP,
    J_LCTX,
    J_LIMIT,
    J_PC,
    J_RAM,
    J_SCTX,
    J_SELF,
    J_STATUS,
    J_TLBO,
    J_TLBT,
    J_X,
    JC_N,
    JMASK,
    JR_INVAL,
    JR_RING,
    JSIZE,
    JSTRIDE,
    JT_FN,
    JT_HI,
    JT_KEY,
    JT_LO,
    PAGE_SLOTS,
    REQ_N,
    ST_BAIL,
    ST_CODE,
    ST_END,
    ST_REJOIN,
    TLB_SIZE,
    jslot,
)
from virtkit.errors import ConfigError

MAX_REGION = 256
MAX_INVALIDATIONS = 4
DEFAULT_THRESHOLD = 64
#: IR passes: sroa makes the instruction count n SSA (instcombine cost ~30% more compile time for ~4% less code)
OPT_PASSES = ("sroa",)
MIN_RUN = 6  # worth_translating(): native instructions from the entry before a bail
BACKLOG = 256  # requests kept waiting for the translator (the coldest are dropped, and asked for again if hot)
BATCH = 1  # regions per translator round trip: the first one is installed as soon as it is ready
PRELOAD_MAX = 8192  # cached regions installed at most before the guest asks (the table has JSIZE slots)
PRELOAD_FIRST = 48  # of them installed before the guest's first instruction
PRELOAD_SYNC_PAGES = 64  # up to this many loaded pages and no saved plan: planned before the first instruction too
PRELOAD_SCAN_MAX = 256 << 20  # RAM scanned for loaded pages when no load was seen (bytes)



def parse_threshold(text: str, what: str = "VIRTKIT_JIT") -> int:
    """``off`` (0: no JIT) or a hotness threshold >= 0; :class:`ConfigError` naming ``what`` otherwise."""
    v = text.strip().lower()
    if v in ("off", "no", "false", "none"):
        return 0
    try:
        n = int(v)
    except ValueError:
        n = -1
    if n < 0:
        raise ConfigError(f"{what} must be 'off' or a threshold (a number >= 0): {v!r}")
    return n


def threshold_from_env(default: int = DEFAULT_THRESHOLD) -> int:
    """``$VIRTKIT_JIT``: ``0``/``off`` disables the JIT, a number sets the hotness threshold."""
    v = os.environ.get("VIRTKIT_JIT", "").strip()
    return parse_threshold(v) if v else default


# ---- LLVM ----------------------------------------------------------------------------------
_llvm_lock = threading.Lock()
_llvm: tuple | None = None
_shutdown = False
_threads: list[threading.Thread] = []


@atexit.register
def _stop_translators() -> None:
    """At exit, let running translations finish before LLVM's globals are torn down."""
    global _shutdown
    _shutdown = True
    if _the_worker is not None:  # nothing to save there (cache files are written atomically): stop it now
        _the_worker.proc.kill()
    for t in _threads:  # a thread linking a region finishes it (LLVM must not be torn down under it)
        t.join(timeout=1.0)
    # The compiled code must outlive every thread that may still run it, and llvmlite's finalizers fail
    # once the interpreter is half torn down ("Exception ignored ... ObjectRef.__del__"): leave the
    # execution engines to the process exit.
    if _llvm is not None:
        for obj in _llvm[1:]:
            obj._closed = True


def _llvm_engine():
    """The process-wide llvmlite module, target machine and MCJIT compiler (created on first use).

    Code generation level 0 (FastISel, fast register allocator): regions have hundreds of small
    blocks, where the optimising code generator took ~4x the compile time (docs/benchmarks.md).
    """
    global _llvm
    with _llvm_lock:
        if _llvm is None:
            import llvmlite.binding as llvm

            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            tm = llvm.Target.from_default_triple().create_target_machine(opt=0, jit=True)
            eng = llvm.create_mcjit_compiler(llvm.parse_assembly(""), tm)
            _llvm = (llvm, tm, eng)
        return _llvm


# ---- decoding ------------------------------------------------------------------------------
def _sext32(v: int) -> int:
    return ((v & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000


@dataclass
class Insn:
    """One decoded guest instruction of a region (``ins`` is the 32-bit form, sign-extended)."""

    off: int  # RAM offset
    length: int
    ins: int
    kind: str  # "ok" translated, "bail" handed back to the interpreter


def _supported(ins: int) -> bool:
    """True when the interpreter would execute ``ins`` without a trap and the JIT translates it."""
    op = ins & 0x7F
    f3 = (ins >> 12) & 7
    f7 = (ins >> 25) & 0x7F
    if op in (0x37, 0x17, 0x6F):
        return True
    if op == 0x67:
        return f3 == 0
    if op == 0x63:
        return f3 not in (2, 3)
    if op == 0x03:
        return f3 != 7
    if op == 0x23:
        return f3 <= 3
    if op == 0x13:
        if f3 == 1:
            return (ins >> 26) & 0x3F == 0
        if f3 == 5:
            return (ins >> 26) & 0x3F in (0, 0x10)
        return True
    if op == 0x1B:
        if f3 == 0:
            return True
        if f3 == 1:
            return f7 == 0
        if f3 == 5:
            return f7 in (0, 0x20)
        return False
    if op == 0x33:
        if f7 in (0, 1):
            return True
        return f7 == 0x20 and f3 in (0, 5)
    if op == 0x3B:
        if f7 == 0:
            return f3 in (0, 1, 5)
        if f7 == 0x20:
            return f3 in (0, 5)
        if f7 == 1:
            return f3 in (0, 4, 5, 6, 7)
        return False
    if op == 0x0F:  # FENCE / FENCE.I: nothing to do (fetch reads RAM; stores invalidate translations)
        return f3 <= 1
    return False


def _continues(ins: int) -> bool:
    """An untranslated instruction after which execution goes on at the next one (CSR access, FP,
    AMO, LR/SC): the region continues there, and the core looks that instruction up again."""
    op = ins & 0x7F
    if op == 0x73:
        return (ins >> 12) & 7 not in (0, 4)  # CSR instructions, not ECALL/EBREAK/xRET/WFI/SFENCE
    return op in (0x07, 0x27, 0x2F, 0x43, 0x47, 0x4B, 0x4F, 0x53)


def _branch_target(ins: int) -> int:
    return ((ins >> 19) & -4096) | ((ins << 4) & 0x800) | ((ins >> 20) & 0x7E0) | ((ins >> 7) & 0x1E)


def _jal_target(ins: int) -> int:
    return ((ins >> 11) & -(1 << 20)) | (ins & 0xFF000) | ((ins >> 9) & 0x800) | ((ins >> 20) & 0x7FE)


def decode_region(r16: np.ndarray, ctab: np.ndarray, entry: int, max_insns: int = MAX_REGION,
                  succ: list[int] | None = None) -> dict[int, Insn]:
    """The instructions reachable from RAM offset ``entry`` inside its 4 KiB page (see module doc).

    ``succ`` collects where straight-line code goes on outside the region: past the instruction cap,
    or into the next page (the translator asks for those next, so long functions become native whole).
    """
    page = entry & ~0xFFF
    end = page + 4096
    insns: dict[int, Insn] = {}
    work = [entry]
    while work:
        o = work.pop()
        if o == end and succ is not None:
            succ.append(o)
        while page <= o < end and o not in insns:
            if len(insns) >= max_insns:
                if succ is not None:
                    succ.extend(w for w in [o, *work] if page <= w < end and w not in insns)
                return insns
            lo = int(r16[o >> 1])
            if lo & 3 == 3:
                if o + 4 > end:
                    break  # crosses the page: the interpreter fetches it
                ins = _sext32(lo | (int(r16[(o >> 1) + 1]) << 16))
                ln = 4
            else:
                ins = _sext32(int(ctab[lo]))
                ln = 2
                if ins == 0:
                    insns[o] = Insn(o, 2, 0, "bail")
                    break
            if not _supported(ins):
                insns[o] = Insn(o, ln, ins, "bail")
                if not _continues(ins):
                    break
                o += ln  # the interpreter runs this one, native code goes on with the next
                continue
            insns[o] = Insn(o, ln, ins, "ok")
            op = ins & 0x7F
            if op == 0x63:
                work.append(o + _branch_target(ins))
            elif op == 0x6F:
                o = o + _jal_target(ins)
                continue
            elif op == 0x67:
                break
            o += ln
            if o == end and succ is not None:
                succ.append(o)
    return insns


def worth_translating(insns: dict[int, Insn], entry: int) -> bool:
    """False when native code would soon hand back to the interpreter: a bail point (FP, CSR, AMO...)
    within the first few instructions from the entry, or bail points in more than 1/8 of the region."""
    o = entry
    for _ in range(MIN_RUN):
        it = insns.get(o)
        if it is None or it.kind == "bail":
            return it is None and o != entry  # left the region (a jump out) after some native work
        if (it.ins & 0x7F) in (0x63, 0x6F, 0x67):
            break
        o += it.length
    bails = sum(1 for i in insns.values() if i.kind == "bail")
    return bails * 8 <= len(insns)


# ---- code generation -----------------------------------------------------------------------
class _Gen:
    """LLVM IR text for one region function."""

    def __init__(self, name: str, insns: dict[int, Insn], entry: int, nharts: int) -> None:
        self.name = name
        self.insns = insns
        self.entry = entry
        self.nharts = nharts
        self.lines: list[str] = []
        self.k = 0
        self.regs_used: set[int] = set()
        self.cache: dict[int, str] = {}
        self.dirty: set[int] = set()
        self.pending = 0  # instructions retired since the last flush of the count n
        order = sorted(insns)
        #: the instruction emitted after each one (emission is in address order)
        self.nexto = dict(zip(order, order[1:], strict=False))
        self.labels = {entry}  # instructions that start an LLVM block: the entry, targets, joins
        for it in insns.values():
            op = it.ins & 0x7F
            nxt = it.off + it.length
            if it.kind != "ok":
                if it.ins and _continues(it.ins) and nxt in insns:
                    self.labels.add(nxt)  # where the core re-enters after interpreting it
                continue
            if op == 0x63:
                self.labels.add(it.off + _branch_target(it.ins))
                self.labels.add(nxt)
            elif op == 0x6F:
                self.labels.add(it.off + _jal_target(it.ins))
            elif op != 0x67 and nxt in insns and self.nexto.get(it.off) != nxt:
                self.labels.add(nxt)

    def falls(self, it: Insn) -> bool:
        """Control continues from ``it`` straight into the next emitted instruction."""
        nxt = it.off + it.length
        return it.kind == "ok" and (it.ins & 0x7F) not in (0x63, 0x6F, 0x67) and self.nexto.get(it.off) == nxt

    def fall(self, o: int, nxt: int) -> None:
        """End of a straight-line instruction at ``o``: leave, jump, or run into the next one."""
        if nxt not in self.insns:
            self.exit_to(self.vpc(nxt), ST_END)
        elif self.nexto.get(o) != nxt:
            self.flush()
            self.e(f"br label %L{nxt}")

    def t(self) -> str:
        self.k += 1
        return f"%t{self.k}"

    def e(self, s: str) -> None:
        self.lines.append("  " + s)

    def label(self, s: str) -> None:
        self.lines.append(f"{s}:")

    # Guest registers live in the hart's x array. Inside one extended basic block (from a label to
    # the next) their values are cached as SSA values and written back lazily: at the block's end
    # and on every side exit, only the registers written since the label ("dirty").
    def rd_reg(self, r: int) -> str:
        if r == 0:
            return "0"
        v = self.cache.get(r)
        if v is None:
            self.regs_used.add(r)
            v = self.t()
            self.e(f"{v} = load i64, ptr %rp{r}, !tbaa !{TBAA_REG}")
            self.cache[r] = v
        return v

    def wr_reg(self, r: int, v: str) -> None:
        if r == 0:
            return
        self.regs_used.add(r)
        self.cache[r] = v
        self.dirty.add(r)

    def writeback(self) -> None:
        """Store the dirty cached registers (the Python-side state is kept: other paths continue)."""
        for r in sorted(self.dirty):
            self.e(f"store i64 {self.cache[r]}, ptr %rp{r}, !tbaa !{TBAA_REG}")

    def new_block(self, name: str) -> None:
        """Start a join block: nothing cached, nothing dirty, the count flushed by every predecessor."""
        self.label(name)
        self.cache = {}
        self.dirty = set()
        self.pending = 0

    def vpc(self, off: int) -> str:
        v = self.t()
        self.e(f"{v} = add i64 %pc0, {off - self.entry}")
        return v

    def flush(self) -> None:
        """Before a branch to a join block: write back registers, add the pending count to ``n``."""
        self.writeback()
        if self.pending:
            a = self.t()
            b = self.t()
            self.e(f"{a} = load i64, ptr %n")
            self.e(f"{b} = add i64 {a}, {self.pending}")
            self.e(f"store i64 {b}, ptr %n")

    def exit_to(self, pc: str, status: int, arg: str = "0") -> None:
        """Leave the region: write back, report pc/status/arg, return ``n + pending`` retired."""
        self.writeback()
        a = self.t()
        b = self.t()
        self.e(f"store i64 {pc}, ptr %opc")
        self.e(f"store i64 {status}, ptr %ost")
        if arg != "0":
            self.e(f"store i64 {arg}, ptr %oarg")
        self.e(f"{a} = load i64, ptr %n")
        self.e(f"{b} = add i64 {a}, {self.pending}")
        self.e(f"ret i64 {b}")

    def goto(self, src: int, dst: int) -> None:
        """Continue at RAM offset ``dst`` once the instruction at ``src`` retired (counted in pending)."""
        if dst not in self.insns:
            self.exit_to(self.vpc(dst), ST_END)
            return
        self.flush()
        if dst <= src:  # backward edge: every loop passes one; check the instruction limit
            nv = self.t()
            ok = self.t()
            self.e(f"{nv} = load i64, ptr %n")
            self.e(f"{ok} = icmp slt i64 {nv}, %lim")
            lx = f"lim{src}_{dst}"
            self.e(f"br i1 {ok}, label %L{dst}, label %{lx}")
            self.label(lx)
            saved, dirty, self.pending, self.dirty = self.pending, self.dirty, 0, set()
            self.exit_to(self.vpc(dst), ST_END)  # registers and count are already flushed
            self.pending, self.dirty = saved, dirty
        else:
            self.e(f"br label %L{dst}")

    def tlb_probe(self, o: int, addr: str, size: int, way: int, ctxv: str) -> str:
        """Emit the inline TLB probe; returns the i64 RAM offset (in the hit block that follows)."""
        vpn = self.t()
        idx = self.t()
        ti = self.t()
        tp = self.t()
        tg = self.t()
        want = self.t()
        hit = self.t()
        self.e(f"{vpn} = ashr i64 {addr}, 12")
        self.e(f"{idx} = and i64 {vpn}, {TLB_SIZE - 1}")
        self.e(f"{ti} = add i64 {idx}, {way * TLB_SIZE}")
        self.e(f"{tp} = getelementptr i64, ptr %TLBT, i64 {ti}")
        self.e(f"{tg} = load i64, ptr {tp}, !tbaa !{TBAA_TAB}")
        self.e(f"{want} = xor i64 {vpn}, {ctxv}")
        self.e(f"{hit} = icmp eq i64 {tg}, {want}")
        if size > 1:
            al = self.t()
            alz = self.t()
            both = self.t()
            self.e(f"{al} = and i64 {addr}, {size - 1}")
            self.e(f"{alz} = icmp eq i64 {al}, 0")
            self.e(f"{both} = and i1 {hit}, {alz}")
            hit = both
        lh = f"h{o}"
        lb = f"b{o}"
        self.e(f"br i1 {hit}, label %{lh}, label %{lb}, !prof !0")
        self.label(lb)
        self.exit_to(self.vpc(o), ST_BAIL)
        self.label(lh)
        op_ = self.t()
        ob = self.t()
        po = self.t()
        ro = self.t()
        self.e(f"{op_} = getelementptr i64, ptr %TLBO, i64 {ti}")
        self.e(f"{ob} = load i64, ptr {op_}, !tbaa !{TBAA_TAB}")
        self.e(f"{po} = and i64 {addr}, 4095")
        self.e(f"{ro} = add i64 {ob}, {po}")
        return ro

    def insn(self, it: Insn, prev_falls: bool) -> None:
        """Emit one instruction; ``prev_falls``: the previously emitted one continues straight here."""
        o = it.off
        if o in self.labels or not prev_falls:
            if prev_falls:
                self.flush()
                self.e(f"br label %L{o}")
            self.new_block(f"L{o}")
        if it.kind == "bail":
            rejoin = it.ins != 0 and _continues(it.ins) and (o + it.length) in self.insns
            self.exit_to(self.vpc(o), ST_REJOIN if rejoin else ST_BAIL)
            return
        ins = it.ins
        nxt = o + it.length
        op = ins & 0x7F
        rd = (ins >> 7) & 31
        f3 = (ins >> 12) & 7
        rs1 = (ins >> 15) & 31
        rs2 = (ins >> 20) & 31
        f7 = (ins >> 25) & 0x7F
        imm = ins >> 20
        if op == 0x37:
            self.wr_reg(rd, str(ins & -4096))
        elif op == 0x17:
            v = self.t()
            self.e(f"{v} = add i64 %pc0, {o - self.entry + (ins & -4096)}")
            self.wr_reg(rd, v)
        elif op == 0x6F:
            self.wr_reg(rd, self.vpc(nxt))
            self.pending += 1
            self.goto(o, o + _jal_target(ins))
            return
        elif op == 0x67:
            a = self.rd_reg(rs1)
            s = self.t()
            tg = self.t()
            self.e(f"{s} = add i64 {a}, {imm}")
            self.e(f"{tg} = and i64 {s}, -2")
            self.wr_reg(rd, self.vpc(nxt))
            self.pending += 1
            self.exit_to(tg, ST_END)
            return
        elif op == 0x63:
            a = self.rd_reg(rs1)
            b = self.rd_reg(rs2)
            cc = {0: "eq", 1: "ne", 4: "slt", 5: "sge", 6: "ult", 7: "uge"}[f3]
            c = self.t()
            self.e(f"{c} = icmp {cc} i64 {a}, {b}")
            self.pending += 1
            lt = f"T{o}"
            lf = f"F{o}"
            self.e(f"br i1 {c}, label %{lt}, label %{lf}")
            self.label(lt)
            self.goto(o, o + _branch_target(ins))
            self.label(lf)
            self.goto(o, nxt)
            return
        elif op == 0x03:
            a = self.rd_reg(rs1)
            addr = self.t()
            self.e(f"{addr} = add i64 {a}, {imm}")
            size = 1 << (f3 & 3)
            ro = self.tlb_probe(o, addr, size, 1, "%lctx")
            hp = self.t()
            v = self.t()
            w = self.t()
            ty = {1: "i8", 2: "i16", 4: "i32", 8: "i64"}[size]
            self.e(f"{hp} = getelementptr i8, ptr %RAM, i64 {ro}")
            self.e(f"{v} = load {ty}, ptr {hp}, align {size}, !tbaa !{TBAA_RAM}")
            if size == 8:
                w = v
            else:
                ext = "zext" if f3 >= 4 else "sext"
                self.e(f"{w} = {ext} {ty} {v} to i64")
            self.wr_reg(rd, w)
        elif op == 0x23:
            a = self.rd_reg(rs1)
            b = self.rd_reg(rs2)
            addr = self.t()
            self.e(f"{addr} = add i64 {a}, {((ins >> 20) & ~31) | rd}")
            size = 1 << f3
            ro = self.tlb_probe(o, addr, size, 2, "%sctx")
            if self.nharts > 1:  # another hart's LR reservation must be broken: the interpreter does that
                rp = self.t()
                rv = self.t()
                rz = self.t()
                self.e(f"{rp} = getelementptr i64, ptr %CFG, i64 {CF_NRESV}")
                self.e(f"{rv} = load i64, ptr {rp}, !tbaa !{TBAA_TAB}")
                self.e(f"{rz} = icmp sgt i64 {rv}, 0")
                self.e(f"br i1 {rz}, label %rb{o}, label %rs{o}, !prof !1")
                self.label(f"rb{o}")
                self.exit_to(self.vpc(o), ST_BAIL)
                self.label(f"rs{o}")
            ty = {1: "i8", 2: "i16", 4: "i32", 8: "i64"}[size]
            hp = self.t()
            self.e(f"{hp} = getelementptr i8, ptr %RAM, i64 {ro}")
            if size == 8:
                sv = b
            else:
                sv = self.t()
                self.e(f"{sv} = trunc i64 {b} to {ty}")
            self.e(f"store {ty} {sv}, ptr {hp}, align {size}, !tbaa !{TBAA_RAM}")
            ch = self.t()
            cp = self.t()
            cm = self.t()
            c1 = self.t()
            cz = self.t()
            self.e(f"{ch} = lshr i64 {ro}, {CSHIFT}")
            self.e(f"{cp} = getelementptr i8, ptr %CMAP, i64 {ch}")
            self.e(f"{cm} = load i8, ptr {cp}, !tbaa !{TBAA_TAB}")
            self.e(f"{c1} = and i8 {cm}, 1")
            self.e(f"{cz} = icmp ne i8 {c1}, 0")
            self.pending += 1
            self.e(f"br i1 {cz}, label %sc{o}, label %sn{o}, !prof !1")
            self.label(f"sc{o}")
            self.exit_to(self.vpc(nxt), ST_CODE, ro)
            self.label(f"sn{o}")
            self.fall(o, nxt)
            return
        elif op == 0x13:
            a = self.rd_reg(rs1)
            v = self.t()
            if f3 == 0:
                self.e(f"{v} = add i64 {a}, {imm}")
            elif f3 == 1:
                self.e(f"{v} = shl i64 {a}, {imm & 63}")
            elif f3 == 2 or f3 == 3:
                c = self.t()
                self.e(f"{c} = icmp {'slt' if f3 == 2 else 'ult'} i64 {a}, {imm}")
                self.e(f"{v} = zext i1 {c} to i64")
            elif f3 == 4:
                self.e(f"{v} = xor i64 {a}, {imm}")
            elif f3 == 5:
                sh = "lshr" if (ins >> 26) & 0x3F == 0 else "ashr"
                self.e(f"{v} = {sh} i64 {a}, {imm & 63}")
            elif f3 == 6:
                self.e(f"{v} = or i64 {a}, {imm}")
            else:
                self.e(f"{v} = and i64 {a}, {imm}")
            self.wr_reg(rd, v)
        elif op == 0x1B:
            a = self.rd_reg(rs1)
            a32 = self.t()
            r = self.t()
            v = self.t()
            self.e(f"{a32} = trunc i64 {a} to i32")
            if f3 == 0:
                self.e(f"{r} = add i32 {a32}, {_sext32(imm)}")
            elif f3 == 1:
                self.e(f"{r} = shl i32 {a32}, {imm & 31}")
            else:
                self.e(f"{r} = {'lshr' if f7 == 0 else 'ashr'} i32 {a32}, {imm & 31}")
            self.e(f"{v} = sext i32 {r} to i64")
            self.wr_reg(rd, v)
        elif op == 0x33:
            a = self.rd_reg(rs1)
            b = self.rd_reg(rs2)
            self.wr_reg(rd, self.op64(f3, f7, a, b))
        elif op == 0x3B:
            a = self.rd_reg(rs1)
            b = self.rd_reg(rs2)
            self.wr_reg(rd, self.op32(f3, f7, a, b))
        elif op == 0x0F:
            pass
        else:  # not reachable: _supported() filtered
            raise AssertionError(f"untranslatable {ins:#x}")
        self.pending += 1
        self.fall(o, nxt)

    def op64(self, f3: int, f7: int, a: str, b: str) -> str:
        v = self.t()
        if f7 == 0 or f7 == 0x20:
            if f3 in (1, 5):
                s = self.t()
                self.e(f"{s} = and i64 {b}, 63")
                sh = {1: "shl", 5: "lshr" if f7 == 0 else "ashr"}[f3]
                self.e(f"{v} = {sh} i64 {a}, {s}")
            elif f3 in (2, 3):
                c = self.t()
                self.e(f"{c} = icmp {'slt' if f3 == 2 else 'ult'} i64 {a}, {b}")
                self.e(f"{v} = zext i1 {c} to i64")
            else:
                name = {0: "sub" if f7 == 0x20 else "add", 4: "xor", 6: "or", 7: "and"}[f3]
                self.e(f"{v} = {name} i64 {a}, {b}")
            return v
        # M extension
        if f3 == 0:
            self.e(f"{v} = mul i64 {a}, {b}")
            return v
        if f3 <= 3:
            ea = "zext" if f3 == 3 else "sext"
            eb = "sext" if f3 == 1 else "zext"
            wa = self.t()
            wb = self.t()
            p = self.t()
            hi = self.t()
            self.e(f"{wa} = {ea} i64 {a} to i128")
            self.e(f"{wb} = {eb} i64 {b} to i128")
            self.e(f"{p} = mul i128 {wa}, {wb}")
            self.e(f"{hi} = lshr i128 {p}, 64")
            self.e(f"{v} = trunc i128 {hi} to i64")
            return v
        return self.divrem("i64", f3, a, b, -(1 << 63))

    def divrem(self, ty: str, f3: int, a: str, b: str, mn: int) -> str:
        """RISC-V DIV/DIVU/REM/REMU semantics (no traps: x/0 and MIN/-1 have defined results)."""
        bz = self.t()
        bs = self.t()
        q = self.t()
        v = self.t()
        self.e(f"{bz} = icmp eq {ty} {b}, 0")
        if f3 in (4, 6):  # signed: MIN / -1 overflows; dividing by 1 instead gives the spec's results
            am = self.t()
            bm = self.t()
            ov = self.t()
            bad = self.t()
            self.e(f"{am} = icmp eq {ty} {a}, {mn}")
            self.e(f"{bm} = icmp eq {ty} {b}, -1")
            self.e(f"{ov} = and i1 {am}, {bm}")
            self.e(f"{bad} = or i1 {bz}, {ov}")
            self.e(f"{bs} = select i1 {bad}, {ty} 1, {ty} {b}")
        else:
            self.e(f"{bs} = select i1 {bz}, {ty} 1, {ty} {b}")
        opn = {4: "sdiv", 5: "udiv", 6: "srem", 7: "urem"}[f3]
        self.e(f"{q} = {opn} {ty} {a}, {bs}")
        if f3 in (4, 5):
            self.e(f"{v} = select i1 {bz}, {ty} -1, {ty} {q}")
        else:
            self.e(f"{v} = select i1 {bz}, {ty} {a}, {ty} {q}")
        return v

    def op32(self, f3: int, f7: int, a: str, b: str) -> str:
        a32 = self.t()
        b32 = self.t()
        self.e(f"{a32} = trunc i64 {a} to i32")
        self.e(f"{b32} = trunc i64 {b} to i32")
        if f7 == 1:
            if f3 == 0:
                r = self.t()
                self.e(f"{r} = mul i32 {a32}, {b32}")
            else:
                r = self.divrem("i32", f3, a32, b32, -(1 << 31))
        elif f3 in (1, 5):
            s = self.t()
            r = self.t()
            self.e(f"{s} = and i32 {b32}, 31")
            sh = {1: "shl", 5: "lshr" if f7 == 0 else "ashr"}[f3]
            self.e(f"{r} = {sh} i32 {a32}, {s}")
        else:
            r = self.t()
            self.e(f"{r} = {'sub' if f7 == 0x20 else 'add'} i32 {a32}, {b32}")
        v = self.t()
        self.e(f"{v} = sext i32 {r} to i64")
        return v

    @property
    def entries(self) -> list[int]:
        """RAM offsets where the core may enter the function: every label that is translated."""
        return [o for o in sorted(self.labels) if o in self.insns and self.insns[o].kind == "ok"]

    def build(self) -> str:
        body_start = len(self.lines)
        prev_falls = False
        for o in sorted(self.insns):
            it = self.insns[o]
            self.insn(it, prev_falls)
            prev_falls = self.falls(it)
        body = self.lines[body_start:]
        self.lines = self.lines[:body_start]
        regs = sorted(self.regs_used)
        head = [f"define i64 @{self.name}(i64 %ctxi) {{", "entry:", "  %ctx = inttoptr i64 %ctxi to ptr"]

        def field(name: str, col: int, ptr: bool) -> None:
            head.append(f"  %{name}_p = getelementptr i64, ptr %ctx, i64 {col}")
            if ptr:
                head.append(f"  %{name}_i = load i64, ptr %{name}_p")
                head.append(f"  %{name} = inttoptr i64 %{name}_i to ptr")
            else:
                head.append(f"  %{name} = load i64, ptr %{name}_p")

        field("X", J_X, True)
        field("RAM", J_RAM, True)
        field("TLBT", J_TLBT, True)
        field("TLBO", J_TLBO, True)
        field("CMAP", J_CMAP, True)
        field("CFG", J_CFG, True)
        field("pcin", J_PC, False)
        field("ein", J_ARG, False)
        field("lim", J_LIMIT, False)
        field("lctx", J_LCTX, False)
        field("sctx", J_SCTX, False)
        head.append("  %n = alloca i64")
        head.append("  store i64 0, ptr %n")
        for r in regs:
            head.append(f"  %rp{r} = getelementptr i64, ptr %X, i64 {r}")
        head.append(f"  %opc = getelementptr i64, ptr %ctx, i64 {J_PC}")
        head.append(f"  %ost = getelementptr i64, ptr %ctx, i64 {J_STATUS}")
        head.append(f"  %oarg = getelementptr i64, ptr %ctx, i64 {J_ARG}")
        # the entry: any label of the region (the core passes pc and the RAM offset of pc)
        head.append("  %pcd = sub i64 %pcin, %ein")
        head.append(f"  %pc0 = add i64 %pcd, {self.entry}")
        cases = " ".join(f"i64 {o}, label %L{o}" for o in self.entries)
        head.append(f"  switch i64 %ein, label %nope [ {cases} ]")
        head.append("nope:")  # not one of ours (a stale table entry): the interpreter runs pc
        head.append("  store i64 %pcin, ptr %opc")
        head.append(f"  store i64 {ST_BAIL}, ptr %ost")
        head.append("  ret i64 0")
        out = head + body
        out.append("}")
        return "\n".join(out) + "\n"


def region_ir(name: str, insns: dict[int, Insn], entry: int, nharts: int) -> tuple[str, list[int]]:
    """LLVM IR text of the function for one decoded region, and its entry points (RAM offsets)."""
    g = _Gen(name, insns, entry, nharts)
    ir = g.build()
    return ir, g.entries


TBAA_REG, TBAA_RAM, TBAA_TAB = 6, 7, 8
_PROF = (
    '!0 = !{!"branch_weights", i32 1000, i32 1}\n!1 = !{!"branch_weights", i32 1, i32 1000}\n'
    '!2 = !{!"virtkit"}\n!3 = !{!"reg", !2, i64 0}\n!4 = !{!"ram", !2, i64 0}\n!5 = !{!"tab", !2, i64 0}\n'
    '!6 = !{!3, !3, i64 0}\n!7 = !{!4, !4, i64 0}\n!8 = !{!5, !5, i64 0}\n'
)


# ---- the JIT state of one engine -----------------------------------------------------------
@dataclass
class Job:
    """One region to translate: the 4 KiB page it lives in, as it was when requested."""

    page: int  # RAM offset of the page
    entry: int  # RAM offset of the entry
    code: bytes  # the page's bytes


@dataclass
class Result:
    """A translated region: object code defining ``name``, its entry points and chunk range."""

    name: str
    obj: bytes
    entries: list[int]
    lo: int
    hi: int
    succ: list[int]  # RAM offsets where straight-line code leaves the region (cap, page end)


_NOT_WORTH = b"-"  # a cache file saying "decoded, not worth translating"


def cache_root() -> Path | None:
    """Where translated regions are kept between runs (``$VIRTKIT_JIT_CACHE``; ``off`` disables it)."""
    v = os.environ.get("VIRTKIT_JIT_CACHE", "")
    if v.lower() in ("off", "no", "none", "0"):
        return None
    root = Path(v) if v else Path.home() / ".cache" / "virtkit" / "jit"
    return root / _jit_version()


_version: str | None = None


def _jit_version() -> str:
    """Hash of everything a translation depends on: this translator, the table layout, LLVM."""
    global _version
    if _version is None:
        import llvmlite

        h = hashlib.sha256()
        here = Path(__file__).resolve().parent
        for name in ("jit.py", "consts.py"):
            h.update((here / name).read_bytes())
        h.update(llvmlite.__version__.encode())
        _version = h.hexdigest()[:16]
    return _version


def region_key(job: Job, nharts: int) -> str:
    """The persistent-cache key of a job: the page's bytes and RAM offset, the entry, the hart count."""
    h = hashlib.sha256(job.code)
    h.update(f"{job.page}:{job.entry}:{nharts}".encode())
    return h.hexdigest()[:32]


def translate(job: Job, ctab: np.ndarray, nharts: int) -> Result | None:
    """Decode and compile one region to object code (runs in the translator process); None if not worth it.

    Results are kept on disk (:func:`cache_root`) keyed by :func:`region_key`: the same guest code at
    the same place (the kernel of every boot) is translated once, later runs load the object code.
    """
    key, path = _cache_file(job, nharts)
    hit = _load(path, key)
    if hit is not MISS:
        return hit  # type: ignore[return-value]
    res = _translate(job, ctab, nharts, f"vk_{key}")
    if path is not None:
        _write_atomic(path, _NOT_WORTH if res is None else pickle.dumps(res, protocol=pickle.HIGHEST_PROTOCOL))
    return res


def _write_atomic(path: Path, data: bytes) -> None:
    """Write a cache file whole or not at all (a temporary file renamed; other VMs may read it meanwhile).
    A read-only or full cache only costs later runs the work again."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        pass


MISS = object()
CACHE_MAX_FILES = 50_000  # a version directory past this is cleared (guest user code lands anywhere in RAM)


def prune_cache() -> None:
    """Drop translations of other translator versions, and this version's when it grew past the cap."""
    root = cache_root()
    if root is None or not root.parent.is_dir():
        return
    for d in root.parent.iterdir():
        if d.is_dir() and d.name != root.name:
            shutil.rmtree(d, ignore_errors=True)
    if root.is_dir():
        with os.scandir(root) as subdirs:  # 256 two-hex-digit directories at most
            count = sum(len(os.listdir(d.path)) for d in subdirs if d.is_dir())
        if count > CACHE_MAX_FILES:
            shutil.rmtree(root, ignore_errors=True)


def _cache_file(job: Job, nharts: int) -> tuple[str, Path | None]:
    """The job's cache key and file (None when the cache is off)."""
    key = region_key(job, nharts)
    return key, _region_path(key)


def _region_path(key: str) -> Path | None:
    root = cache_root()
    return None if root is None else root / key[:2] / key


def _load(path: Path | None, key: str) -> Result | None | object:
    if path is None:
        return MISS
    try:
        data = path.read_bytes()
    except OSError:
        return MISS
    if data == _NOT_WORTH:
        return None
    try:
        res = pickle.loads(data)
    except Exception:  # a damaged cache file: translate again (and replace it)
        return MISS
    return res if isinstance(res, Result) and res.name == f"vk_{key}" else MISS


def page_key(code: bytes, page: int, nharts: int) -> str:
    """The persistent-cache key of a page: its bytes, its RAM offset and the hart count."""
    h = hashlib.sha256(code)
    h.update(f"{page}:{nharts}".encode())
    return h.hexdigest()[:32]


def _index_file(pkey: str) -> Path | None:
    root = cache_root()
    return None if root is None else root / "pages" / pkey[:2] / pkey


def read_page_index(pkey: str) -> dict[int, tuple[str | None, int]]:
    """What earlier runs translated in a page: entry -> (region key, or None for "not worth it"; order).

    A region has many entries (branch targets inside it); which one a run asks for first depends on
    timing, so lookups go through the page: any earlier region that has the entry serves it.
    """
    path = _index_file(pkey)
    if path is None:
        return {}
    try:
        idx = pickle.loads(path.read_bytes())
    except Exception:  # missing or damaged: the page is translated again (and the index rewritten)
        return {}
    return idx if isinstance(idx, dict) else {}


def write_page_index(pkey: str, new: dict[int, tuple[str | None, int]]) -> dict[int, tuple[str | None, int]]:
    """Merge ``new`` into the page's index on disk (another VM may have added entries); the merged index."""
    path = _index_file(pkey)
    idx = read_page_index(pkey)
    for e, (key, order) in new.items():
        old = idx.get(e)
        idx[e] = (key, order if old is None else min(order, old[1]))
    if path is not None:
        _write_atomic(path, pickle.dumps(idx, protocol=pickle.HIGHEST_PROTOCOL))
    return idx


def load_region(key: str) -> Result | None | object:
    """The region file ``key`` of the cache (a Result, None for "not worth it"), or MISS."""
    return _load(_region_path(key), key)


def _translate(job: Job, ctab: np.ndarray, nharts: int, name: str) -> Result | None:
    page16 = np.frombuffer(job.code, dtype=np.uint16)
    succ: list[int] = []
    rel = decode_region(page16, ctab, job.entry - job.page, succ=succ)
    insns = {o + job.page: Insn(o + job.page, i.length, i.ins, i.kind) for o, i in rel.items()}
    if not insns or not worth_translating(insns, job.entry):
        return None
    text, entries = region_ir(name, insns, job.entry, nharts)
    llvm, tm, _ = _llvm_engine()
    with _llvm_lock:
        mod = llvm.parse_assembly(text + _PROF)
        mod.verify()
        pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=0))
        mpm = llvm.create_new_module_pass_manager()
        for pass_name in OPT_PASSES:
            getattr(mpm, f"add_{pass_name}_pass")()
        mpm.run(mod, pb)
        obj = tm.emit_object(mod)
    lo = min(insns) >> CSHIFT
    hi = (max(i.off + i.length for i in insns.values()) - 1) >> CSHIFT
    return Result(name, obj, entries, lo, hi, sorted({o + job.page for o in succ}))


def write_msg(f, msg: object) -> None:
    """One message of the translator protocol: an 8-byte little-endian length, then a pickle."""
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(len(data).to_bytes(8, "little") + data)
    f.flush()


def read_msg(f) -> object:
    """The next message written by :func:`write_msg`; EOFError when the other side has gone."""
    head = f.read(8)
    if len(head) < 8:
        raise EOFError("the JIT translator's pipe closed")
    return pickle.loads(f.read(int.from_bytes(head, "little")))


class _WorkerProcess:
    """The translator as a child process (``python -m virtkit.engines.riscv.jitworker``).

    Decoding and IR generation are Python: in a thread they would take the GIL from the vCPU
    thread's device exits. A process compiles on the other core and only object code comes back.
    """

    def __init__(self, ctab: np.ndarray) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "virtkit.engines.riscv.jitworker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lock = threading.Lock()
        self.ctab = ctab
        self.inited = False  # the table goes with the first jobs (a 512 KiB write would wait for the child)

    def exchange(self, msg: object) -> object:
        """Send ``msg`` (after the one-time table) and return the answer."""
        with self.lock:
            if not self.inited:
                write_msg(self.proc.stdin, ("init", self.ctab.tobytes(), str(self.ctab.dtype)))
                self.inited = True
            write_msg(self.proc.stdin, msg)
            return read_msg(self.proc.stdout)

    def translate(self, jobs: list[Job], nharts: int) -> list[Result | None]:
        out = self.exchange(("jobs", nharts, jobs))
        assert isinstance(out, list)
        return out

    def ping(self) -> None:
        """Wait until the process has imported everything and answers."""
        self.exchange(("ping",))

    def close(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


_the_worker: _WorkerProcess | None = None
_linked: dict[str, int] = {}  # region function name -> address in this process
_pruned = False


def _worker(ctab: np.ndarray) -> _WorkerProcess:
    """The process-wide translator process (started on first use, shared by every engine)."""
    global _the_worker
    with _llvm_lock:
        if _the_worker is None or _the_worker.proc.poll() is not None:
            _the_worker = _WorkerProcess(ctab)
        return _the_worker


def warm_up() -> None:
    """Start the translator process and wait until it is ready (benchmarks call this with the engine load)."""
    from virtkit.engines.riscv.coresel import ctab as _ctab

    _worker(_ctab()).ping()


def _link(res: Result) -> int:
    """Link a region's object code into this process (once per region) and return its entry address."""
    llvm, _, eng = _llvm_engine()
    with _llvm_lock:
        fn = _linked.get(res.name)
        if fn is None:  # the same region (same code, same place) is linked once per process
            eng.add_object_file(llvm.ObjectFileRef.from_data(res.obj))
            eng.finalize_object()
            fn = _linked[res.name] = eng.get_function_address(res.name)
        return fn


def preload_from_env() -> bool:
    """``$VIRTKIT_JIT_PRELOAD``: ``off`` starts every run with no native code, even with a warm cache."""
    v = os.environ.get("VIRTKIT_JIT_PRELOAD", "on").strip().lower()
    if v in ("on", "yes", "1", ""):
        return True
    if v in ("off", "no", "0"):
        return False
    raise ConfigError(f"VIRTKIT_JIT_PRELOAD must be 'on' or 'off': {v!r}")


class Jit:
    """Tables shared with the core, the translator, and the statistics of one engine.

    ``background=True``: a daemon thread drains the request ring and has a translator *process*
    compile the regions to object code (so neither the compiler nor the Python decoder competes
    with the vCPU for the GIL), then links and installs them. ``background=False``: the engine calls
    :meth:`service` between core calls and regions are compiled in-process at once (the core
    returns as soon as one is queued: deterministic runs).
    """

    def __init__(self, ram: np.ndarray, nharts: int, ctab: np.ndarray, threshold: int,
                 background: bool = True) -> None:
        self.threshold = threshold
        self.nharts = nharts
        self.background = background
        self._ram = ram
        self._ctab = ctab
        # one row per column (JT_KEY...): the keys the interpreter probes at every block entry are contiguous,
        # and a page's entries share cache lines
        self.jtab = np.full((4, JSIZE), -1, dtype=np.int64)
        self.jhot = np.zeros(JSIZE, dtype=np.int64)
        self.jreq = np.zeros(JR_RING + REQ_N, dtype=np.int64)
        self.cmap = np.zeros((ram.size >> CSHIFT) + 1, dtype=np.uint8)
        self.jctx = np.zeros((nharts, JC_N), dtype=np.int64)
        self.regions = 0
        self.entries = 0
        self.compile_seconds = 0.0
        self.refused = 0
        self.stale = 0
        self.cache_hits = 0  # regions (or "not worth it" answers) read from the persistent cache
        self.translated = 0  # regions sent to the translator
        self.preloaded = 0  # regions installed before the guest asked for them (:meth:`preload_some`)
        self._pages: dict[str, dict[int, tuple[str | None, int]]] = {}  # page key -> page index
        #: Guest instructions retired so far (the engine sets it): when a region was first wanted, in
        #: a unit that is the same from run to run (the page indexes keep the earliest; preload follows it).
        self.clock: Callable[[], int] = lambda: 0
        self._preload: list[tuple[int, int, str, str]] | None = None  # (order, page, page key, region key)
        self._plan_file: Path | None = None
        # (page, page key) -> the page's bytes when they had that key, None when they did not
        self._plan_checked: dict[tuple[int, str], bytes | None] = {}
        self._loaded: list[int] | None = None
        self._plan_refreshed = False
        self._installed_plan: list[tuple[int, int, str, str]] = []  # plan items already taken
        self._deferred: list[int] = []  # entries to translate once the preload is done
        self._written: list[tuple[int, int]] = []  # RAM written from outside before the first run (images)
        self.preload_enabled = preload_from_env()
        self._thread: threading.Thread | None = None
        self._backlog: list[int] = []  # requested entries not translated yet
        self._lock = threading.Lock()

    def bind(self, x: np.ndarray, ram: np.ndarray, tlbt: np.ndarray, tlbo: np.ndarray, cfg: np.ndarray) -> None:
        """Fill each hart's context row with the addresses the native code uses."""
        for h in range(self.nharts):
            row = self.jctx[h]
            row[J_SELF] = self.jctx.ctypes.data + h * JC_N * 8
            row[J_X] = x.ctypes.data + h * x.strides[0]
            row[J_RAM] = ram.ctypes.data
            row[J_TLBT] = tlbt.ctypes.data + h * tlbt.strides[0]
            row[J_TLBO] = tlbo.ctypes.data + h * tlbo.strides[0]
            row[J_CMAP] = self.cmap.ctypes.data
            row[J_CFG] = cfg.ctypes.data

    def pending(self) -> bool:
        """Block entries are queued for translation."""
        return int(self.jreq[0]) != int(self.jreq[1]) or bool(self._backlog)

    def start(self) -> None:
        """Start the background translator (once; the engine calls it on its first run)."""
        if self._thread is not None or not self.background or self.threshold <= 0:
            return
        # warm start: the earliest cached regions of the loaded images are installed before the first
        # instruction (the firmware's first loops), the rest by the translator thread as the guest runs
        # (a saved plan is one file; planning from the page indexes hashes every loaded page: the thread does that)
        self.plan_preload(from_indexes=len(self._loaded_pages()) <= PRELOAD_SYNC_PAGES)
        if self._preload:
            self.preload_some(PRELOAD_FIRST)
        global _pruned
        if not _pruned:
            _pruned = True
            threading.Thread(target=prune_cache, name="virtkit-jit-prune", daemon=True).start()
        ref = weakref.ref(self)
        self._thread = threading.Thread(target=_translator, args=(ref,), name="virtkit-jit", daemon=True)
        _threads[:] = [t for t in _threads if t.is_alive()] + [self._thread]
        self._thread.start()

    def service(self, rounds: int = 1 << 30) -> None:
        """Translate and install the regions queued since the last call (the caller's thread), at most
        ``rounds`` batches."""
        with self._lock:
            while not _shutdown and rounds > 0:
                rounds -= 1
                head = int(self.jreq[0])
                tail = int(self.jreq[1])
                if head != tail:  # newest first: what was hot last is most likely still hot
                    tail = max(tail, head - REQ_N)
                    fresh = [int(self.jreq[JR_RING + (i & (REQ_N - 1))]) for i in range(head - 1, tail - 1, -1)]
                    self.jreq[1] = head
                    self._backlog = fresh + self._backlog
                    self._trim_backlog()
                if not self._backlog:
                    return
                # hottest first: the core keeps counting entries into untranslated code, so jhot says
                # which waiting entry the guest runs most right now
                self._backlog.sort(key=lambda o: -int(self.jhot[jslot(o)]))
                offs, self._backlog = self._backlog[:BATCH], self._backlog[BATCH:]
                jobs = []
                for off in dict.fromkeys(offs):
                    if self.jtab[JT_KEY, jslot(off)] != off:  # not already an entry of a region
                        jobs.append(self._job(off))
                if jobs:
                    self._run(jobs)

    def release_deferred(self) -> None:
        """Once the preload is done, the translations that waited for it join the backlog."""
        if self._deferred and not self.preloading():
            with self._lock:
                self._backlog = list(dict.fromkeys(self._deferred + self._backlog))
                self._deferred.clear()
                self._trim_backlog()

    def _trim_backlog(self) -> None:
        """Keep the BACKLOG hottest waiting entries; the others count from 0 again (asked for again if still hot)."""
        if len(self._backlog) > BACKLOG:
            self._backlog.sort(key=lambda o: -int(self.jhot[jslot(o)]))
            for o in self._backlog[BACKLOG:]:
                self.jhot[jslot(o)] = 0
            del self._backlog[BACKLOG:]

    def _job(self, entry: int) -> Job:
        page = entry & ~0xFFF
        return Job(page, entry, bytes(self._ram[page : page + 4096]))

    def _run(self, jobs: list[Job]) -> None:
        """Translate ``jobs`` (in the worker process when there is one), link and install the results."""
        t = time.monotonic()
        # translations kept from earlier runs are read here; only the others are translated
        results: list[Result | None | object] = [self._cached(j) for j in jobs]
        misses = [j for j, r in zip(jobs, results, strict=True) if r is MISS]
        self.cache_hits += len(jobs) - len(misses)
        if misses and self.preloading():
            # the translator process waits until the preload is done: the cached code the guest needs
            # first goes in sooner, and the process's start-up does not compete with it for the CPU
            self._deferred.extend(j.entry for j in misses)
            jobs = [j for j, r in zip(jobs, results, strict=True) if r is not MISS]
            results = [r for r in results if r is not MISS]
            misses = []
        self.translated += len(misses)
        if misses:
            if self.background:
                fresh = _worker(self._ctab).translate(misses, self.nharts)
            else:
                fresh = [translate(j, self._ctab, self.nharts) for j in misses]
            for j, r in zip(misses, fresh, strict=True):
                self._remember(j, r)
            done = iter(fresh)
            results = [next(done) if r is MISS else r for r in results]
        for job, res in zip(jobs, results, strict=True):
            if res is None:
                self.refused += 1
                continue
            if (self.cmap[res.lo : res.hi + 1] >> 1).max() >= MAX_INVALIDATIONS:
                self.refused += 1  # code and data share these chunks: translating again would only thrash
                continue
            self._install(job, res, _link(res))  # type: ignore[arg-type]
            for o in res.succ:  # type: ignore[union-attr]
                # the code after a capped region, or in the next page: wanted next, not after 64 more trips
                if o < self._ram.size and self.jtab[JT_KEY, jslot(o)] != o and o not in self._backlog:
                    self._backlog.insert(0, o)
        self.compile_seconds += time.monotonic() - t

    def _page_index(self, job: Job) -> tuple[str, dict[int, tuple[str | None, int]]]:
        pkey = page_key(job.code, job.page, self.nharts)
        idx = self._pages.get(pkey)
        if idx is None:
            idx = self._pages[pkey] = read_page_index(pkey)
        return pkey, idx

    def _cached(self, job: Job) -> Result | None | object:
        """The translation of ``job`` kept by an earlier run (any region of the page with this entry), or MISS."""
        if cache_root() is None:
            return MISS
        pkey, idx = self._page_index(job)
        known = idx.get(job.entry)
        if known is None:
            return MISS
        now = self.clock()
        if now < known[1]:  # wanted earlier in this run than ever before: preload it earlier next time
            self._pages[pkey] = write_page_index(pkey, {job.entry: (known[0], now)})
        if known[0] is None:
            return None
        res = load_region(known[0])
        return res if res is None or (isinstance(res, Result) and job.entry in res.entries) else MISS

    def _remember(self, job: Job, res: Result | None) -> None:
        """Record a fresh translation in its page's index (every entry of the region points to it)."""
        if cache_root() is None:
            return
        now = self.clock()
        key = region_key(job, self.nharts)
        new = {job.entry: (None, now)} if res is None else {e: (key, now) for e in res.entries}
        pkey, _ = self._page_index(job)
        self._pages[pkey] = write_page_index(pkey, new)

    # ---- warm start -----------------------------------------------------------------------------
    def preloading(self) -> bool:
        """The background translator is still installing cached regions (translations wait)."""
        return self.background and (self._preload is None or bool(self._preload) or not self._plan_refreshed)

    def _loaded_pages(self) -> list[int]:
        """Pages written from outside before the first run (the images), or RAM's non-zero pages."""
        if self._loaded is None:
            pages = sorted({p for off, n in self._written for p in range(off >> 12, ((off + n - 1) >> 12) + 1)})
            ram = self._ram
            if not pages and ram.size <= PRELOAD_SCAN_MAX:  # RAM filled before the engine existed: look at it all
                npages = ram.size >> 12
                pages = np.flatnonzero(ram[: npages << 12].view(np.uint64).reshape(npages, 512).any(axis=1)).tolist()
            self._loaded = pages
        return self._loaded

    def _plan_path(self) -> Path | None:
        """The saved preload plan for what was loaded where (validated page by page when used)."""
        root = cache_root()
        if root is None:
            return None
        h = hashlib.sha256(f"{self.nharts}:{self._ram.size}:{sorted(self._written)}".encode())
        return root / "plans" / h.hexdigest()[:32]

    def plan_preload(self, from_indexes: bool = True) -> None:
        """List the cached regions of the pages loaded before the first run (firmware, kernel...).

        Fast path: the plan an earlier run saved for the same loads (one file). Otherwise (and, in the
        translator thread, after a saved plan has been installed) from the page indexes: hash every
        loaded page, read its index. :meth:`preload_some` installs them, earliest wanted first.
        """
        self._preload = []
        if not self.preload_enabled or cache_root() is None or self.threshold <= 0:
            self._plan_refreshed = True  # nothing to plan, now or later
            return
        self._plan_file = self._plan_path()
        try:
            saved = pickle.loads(self._plan_file.read_bytes()) if self._plan_file is not None else None
        except Exception:  # missing or damaged: planned from the indexes
            saved = None
        if isinstance(saved, list):
            self._preload = saved[-PRELOAD_MAX:]
            return
        if from_indexes:
            self._preload = self._plan_from_indexes(set())
            self._plan_refreshed = True
            self._save_plan(self._preload)
        else:
            self._preload = None  # not planned yet: the translator thread plans from the indexes

    def _plan_from_indexes(self, skip: set[str]) -> list[tuple[int, int, str, str]]:
        ram = self._ram
        plan: dict[str, tuple[int, int, str, str]] = {}
        for p in self._loaded_pages():
            code = bytes(ram[p << 12 : (p + 1) << 12])
            pkey = page_key(code, p << 12, self.nharts)
            idx = read_page_index(pkey)
            if not idx:
                continue
            self._plan_checked[(p << 12, pkey)] = code
            self._pages[pkey] = idx
            for key, order in idx.values():
                if key is not None and key not in skip and (key not in plan or order < plan[key][0]):
                    plan[key] = (order, p << 12, pkey, key)
        return sorted(plan.values(), reverse=True)[-PRELOAD_MAX:]  # popped from the end

    def _save_plan(self, plan: list[tuple[int, int, str, str]]) -> None:
        if self._plan_file is not None:
            _write_atomic(self._plan_file, pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL))

    def preload_some(self, n: int = 8) -> bool:
        """Install up to ``n`` planned regions; False when nothing is left to preload.

        When a saved plan runs out, the translator thread plans again from the page indexes (what the
        last runs added) and saves that plan for the next run.
        """
        if self._preload is None:
            self.plan_preload()
        plan = self._preload
        assert plan is not None
        if not plan and not self._plan_refreshed:  # a saved plan is done: add what the last runs translated
            self._plan_refreshed = True
            fresh = self._plan_from_indexes({key for _, _, _, key in self._installed_plan})
            self._save_plan(sorted(self._installed_plan + fresh, reverse=True))
            self._preload = plan = fresh
        t = time.monotonic()
        with self._lock:
            for _ in range(min(n, len(plan))):
                if _shutdown:
                    break
                item = plan.pop()
                self._installed_plan.append(item)
                _, page, pkey, key = item
                # the page must hold the bytes this region was compiled from: plans are shared by every
                # guest loaded the same way, so one page may have items of several programs
                if (page, pkey) in self._plan_checked:
                    code = self._plan_checked[(page, pkey)]
                else:
                    code = bytes(self._ram[page : page + 4096])
                    if page_key(code, page, self.nharts) != pkey:
                        code = None
                    self._plan_checked[(page, pkey)] = code
                if code is None:
                    continue
                res = load_region(key)
                if not isinstance(res, Result) or not res.entries:
                    continue
                if all(self.jtab[JT_KEY, jslot(e)] == e for e in res.entries):
                    continue
                # the bytes the page key was checked on: a store since then makes _install() refuse it
                job = Job(page, res.entries[0], code)
                before = self.regions
                self._install(job, res, _link(res))
                self.preloaded += self.regions - before
        self.compile_seconds += time.monotonic() - t
        return bool(plan) or not self._plan_refreshed

    def _install(self, job: Job, res: Result, fn: int) -> None:
        """Publish ``fn`` for the region's entries unless its code changed since the job was made."""
        # mark the chunks first: any store from now on drops the region (or the checks below see it)
        self.cmap[res.lo : res.hi + 1] |= 1
        span = slice(res.lo << CSHIFT, (res.hi + 1) << CSHIFT)
        snap = job.code[span.start - job.page : span.stop - job.page]
        if bytes(self._ram[span]) != snap:
            self.stale += 1
            return
        slots = [jslot(e) for e in res.entries]
        for e, ji in zip(res.entries, slots, strict=True):
            self.jtab[JT_KEY, ji] = -1
            self.jtab[JT_FN, ji] = fn
            self.jtab[JT_LO, ji] = res.lo
            self.jtab[JT_HI, ji] = res.hi
            self.jtab[JT_KEY, ji] = e
        if bytes(self._ram[span]) != snap:  # a store raced with the installation: take it back
            for e, ji in zip(res.entries, slots, strict=True):
                if self.jtab[JT_KEY, ji] == e and self.jtab[JT_FN, ji] == fn:
                    self.jtab[JT_KEY, ji] = -1
            self.stale += 1
            return
        self.regions += 1
        self.entries += len(res.entries)

    def invalidate(self, off: int, n: int) -> None:
        """Drop the regions translated from RAM ``[off, off+n)`` (device DMA, image loading)."""
        if n <= 0:
            return
        if self._loaded is None and len(self._written) < 64:
            # firmware, kernel, initrd...: where the preload looks, frozen when the engine starts (device DMA
            # after that must not change the key of the saved plan the next run looks up)
            self._written.append((off, n))
        lo = off >> CSHIFT
        hi = (off + n - 1) >> CSHIFT
        seg = self.cmap[lo : hi + 1]
        if not (seg & 1).any():
            return
        first, last = off >> 12, (off + n - 1) >> 12
        if (last - first + 1) * PAGE_SLOTS < JSIZE:  # a region lies in one page: only its slots can hold it
            slots = ((np.arange(first, last + 1)[:, None] * JSTRIDE + np.arange(PAGE_SLOTS)) & JMASK).ravel()
        else:
            slots = np.arange(JSIZE)
        cols = self.jtab[:, slots]
        kill = slots[(cols[JT_KEY] >= 0) & (cols[JT_LO] <= hi) & (cols[JT_HI] >= lo)]
        self.jtab[JT_KEY, kill] = -1
        self.jhot[kill] = 0
        hit = (seg & 1) != 0
        cnt = np.minimum((seg >> 1) + 1, 127).astype(np.uint8)
        seg[hit] = (cnt[hit] << 1).astype(np.uint8)
        self.jreq[JR_INVAL] += 1

    def stats(self) -> dict:
        """Regions compiled, their entry points, time spent compiling, invalidations."""
        return {
            "threshold": self.threshold,
            "background": self.background,
            "regions": self.regions,
            "entries": self.entries,
            "compile_seconds": round(self.compile_seconds, 3),
            "invalidations": int(self.jreq[JR_INVAL]),
            "refused": self.refused,
            "stale": self.stale,
            "cache_hits": self.cache_hits,
            "translated": self.translated,
            "preloaded": self.preloaded,
        }


def _translator(ref: weakref.ref) -> None:
    """The background translator: preloads cached regions, then polls the request ring while its engine lives."""
    idle = 0.001
    while not _shutdown:
        j = ref()
        if j is None:
            return
        busy = False
        if j.preloading():  # interleaved with the requests (cache hits; translations wait for the end)
            busy = True
            try:
                j.preload_some()
            except Exception as err:  # a damaged cache must not kill the VM: the guest's requests go on
                print(f"virtkit: JIT preload stopped: {err!r}", file=sys.stderr)
                j._preload = []
                j._plan_refreshed = True
            j.release_deferred()
        if j.pending():
            busy = True
            try:
                j.service(rounds=1)
            except Exception as err:  # a translator bug must not kill the VM: the interpreter runs on
                if not _shutdown:  # (at exit the translator process is stopped under it: not news)
                    print(f"virtkit: JIT translator stopped: {err!r}", file=sys.stderr)
                return
        del j
        if busy:
            idle = 0.001
            continue
        idle = min(idle * 2, 0.005)
        time.sleep(idle)
