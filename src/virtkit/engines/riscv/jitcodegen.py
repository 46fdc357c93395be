"""The JIT's code generator: a guest code region decoded and turned into one LLVM function, then object code.

:func:`decode_region` follows a region from its entry (fall-through, branches, direct jumps, inside one 4 KiB
page, at most ``MAX_REGION`` instructions); :class:`_Gen` emits LLVM IR with the guest registers in SSA values,
the software TLB probed inline for loads and stores and a bail to the interpreter before anything it does not
translate; :func:`compile_region` runs LLVM (llvmlite, the LLVM Numba uses) on it. This runs in the translator
process (:mod:`virtkit.engines.riscv.jitworker`); :mod:`virtkit.engines.riscv.jit` links the object code.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

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
    J_STATUS,
    J_TLBO,
    J_TLBT,
    J_X,
    ST_BAIL,
    ST_CODE,
    ST_END,
    ST_REJOIN,
    TLB_SIZE,
)

MAX_REGION = 256
#: IR passes: sroa makes the instruction count n SSA (instcombine cost ~30% more compile time for ~4% less code)
OPT_PASSES = ("sroa",)
MIN_RUN = 6  # worth_translating(): native instructions from the entry before a bail

_llvm_lock = threading.Lock()
_llvm: tuple | None = None


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


def compile_region(job: Job, ctab: np.ndarray, nharts: int, name: str) -> Result | None:
    """Decode and compile the region of ``job`` into object code defining ``name``; None if not worth it."""
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


