"""Generate the F/D test programs (rv64uf_*.S, rv64ud_*.S) from the exact reference in fpref.py.

Run: python3 genfp.py  (writes into the parent isa/ directory; every case is then checked on QEMU).
"""

import re
import sys
from fractions import Fraction as F
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fpref import FMT, NV, NX, arith, decode, f2b, qnan, rnd_int, round_to  # noqa: E402

RM = ["rne", "rtz", "rdn", "rup", "rmm"]


def vals(f):
    def b(x):
        return f2b(x, f)

    if f == "d":
        return dict(
            one=b(1.0),
            three=b(3.0),
            m3=b(-3.0),
            tenth=b(0.1),
            mtenth=b(-0.1),
            two=b(2.0),
            half=b(0.5),
            maxf=0x7FEFFFFFFFFFFFFF,
            mmaxf=0xFFEFFFFFFFFFFFFF,
            minn=0x0010000000000000,
            sub=0x0000000000000001,
            inf=0x7FF0000000000000,
            minf=0xFFF0000000000000,
            qnan=0x7FF8000000000000,
            snan=0x7FF0000000000001,
            nqnan=0xFFF8000000000123,
            zero=0,
            mzero=0x8000000000000000,
            big=b(1e300),
            tiny=b(1e-300),
            pi=b(3.141592653589793),
            e=b(2.718281828459045),
            seven=b(7.0),
            m25=b(-2.5),
            m15=b(-1.5),
            x25=b(2.5),
            x35=b(3.5),
            i31=b(2147483647.0),
            i31p=b(2147483648.0),
            i32=b(4294967296.0),
            m31=b(-2147483648.0),
            m31m=b(-2147483649.0),
            i63=b(9.223372036854775807e18),
            m1=b(-1.0),
            m03=b(-0.3),
            x03=b(0.3),
            big2=b(1.8446744073709552e19),
        )
    return dict(
        one=b(1.0),
        three=b(3.0),
        m3=b(-3.0),
        tenth=b(0.1),
        mtenth=b(-0.1),
        two=b(2.0),
        half=b(0.5),
        maxf=0x7F7FFFFF,
        mmaxf=0xFF7FFFFF,
        minn=0x00800000,
        sub=0x00000001,
        inf=0x7F800000,
        minf=0xFF800000,
        qnan=0x7FC00000,
        snan=0x7F800001,
        nqnan=0xFFC00123,
        zero=0,
        mzero=0x80000000,
        big=b(1e38),
        tiny=b(1e-38),
        pi=b(3.14159265),
        e=b(2.71828182),
        seven=b(7.0),
        m25=b(-2.5),
        m15=b(-1.5),
        x25=b(2.5),
        x35=b(3.5),
        i31=b(2147483520.0),
        i31p=b(2147483648.0),
        i32=b(4294967296.0),
        m31=b(-2147483648.0),
        m31m=b(-2147483904.0),
        i63=b(9.223372036854775807e18),
        m1=b(-1.0),
        m03=b(-0.3),
        x03=b(0.3),
        big2=b(1.8446744073709552e19),
    )


def gen(f):
    V = vals(f)
    L = []
    n = [0]

    def T():
        n[0] += 1
        return n[0]

    ld = "LOAD_D" if f == "d" else "LOAD_S"
    get = (lambda r, fr: f"fmv.x.d {r}, {fr}") if f == "d" else (lambda r, fr: f"GET_S({r}, {fr})")

    def emit_arith(op, mode, names, dyn=False):
        bits = [V[x] for x in names]
        res, fl = arith(op, f, mode, *bits)
        loads = "; ".join(f"{ld}(f{i if i < 2 else 3}, {hex(b)})" for i, b in enumerate(bits))
        regs = ", ".join(f"f{i if i < 2 else 3}" for i in range(len(bits)))
        rm = "dyn" if dyn else RM[mode]
        pre = f"csrwi frm, {mode}; " if dyn else ""
        L.append(
            f"  li TESTNUM, {T()}; {pre}{loads}; csrwi fflags, 0; {op_name(op)}.{f} f2, {regs}, {rm}; "
            f"{get('a2', 'f2')}; CHECK_FLAGS({fl}); CHECK(a2, {hex(res)})   /* {op} {' '.join(names)} {rm} */"
        )

    def op_name(op):
        return "fsqrt" if op == "sqrt" else ("f" + op if not op.startswith("f") else op)

    pairs = [
        ("one", "three"),
        ("tenth", "three"),
        ("mtenth", "three"),
        ("maxf", "maxf"),
        ("mmaxf", "mmaxf"),
        ("minn", "half"),
        ("sub", "half"),
        ("tiny", "tiny"),
        ("pi", "e"),
        ("inf", "minf"),
        ("zero", "mzero"),
        ("one", "zero"),
        ("zero", "zero"),
        ("snan", "one"),
        ("qnan", "one"),
        ("inf", "zero"),
        ("m3", "seven"),
        ("three", "three"),
    ]
    for op, sel in [
        ("add", [0, 1, 2, 3, 9, 10, 13, 14, 16, 17]),
        ("sub", [0, 1, 3, 4, 9, 10, 17]),
        ("mul", [0, 1, 2, 3, 5, 6, 7, 15, 13, 16]),
        ("div", [0, 1, 2, 3, 5, 11, 12, 14, 16]),
    ]:
        for i in sel:
            for mode in range(5):
                if len(L) > 200:
                    break
                emit_arith(op, mode, pairs[i])
    for x in ["two", "three", "tenth", "maxf", "sub", "mzero", "m3", "inf", "snan"]:
        for mode in (0, 1, 3):
            emit_arith("sqrt", mode, [x])
    for op in ["fmadd", "fmsub", "fnmsub", "fnmadd"]:
        for trip in [
            ("one", "three", "tenth"),
            ("tenth", "three", "m3"),
            ("maxf", "two", "mmaxf"),
            ("inf", "zero", "qnan"),
            ("pi", "e", "mtenth"),
            ("three", "three", "seven"),
        ]:
            for mode in (0, 2, 3):
                emit_arith(op, mode, list(trip))
    # dynamic rounding through frm
    for mode in range(5):
        emit_arith("div", mode, ["one", "three"], dyn=True)
        emit_arith("add", mode, ["mtenth", "three"], dyn=True)
    L.append("  csrwi frm, 0")
    return L, n


def gen_misc(f, L, n):
    V = vals(f)
    eb, mb = FMT[f]
    SM = 1 << (eb + mb)

    def T():
        n[0] += 1
        return n[0]

    ld = "LOAD_D" if f == "d" else "LOAD_S"
    get = (lambda r, fr: f"fmv.x.d {r}, {fr}") if f == "d" else (lambda r, fr: f"GET_S({r}, {fr})")
    for op, fn in [
        ("fsgnj", lambda a, b: (a & ~SM) | (b & SM)),
        ("fsgnjn", lambda a, b: (a & ~SM) | (~b & SM)),
        ("fsgnjx", lambda a, b: a ^ (b & SM)),
    ]:
        for a, b in [("one", "m3"), ("m3", "one"), ("m3", "m1"), ("snan", "m1"), ("mzero", "zero")]:
            r = fn(V[a], V[b])
            L.append(
                f"  li TESTNUM, {T()}; {ld}(f0, {hex(V[a])}); {ld}(f1, {hex(V[b])}); csrwi fflags, 0; "
                f"{op}.{f} f2, f0, f1; "
                f"{get('a2', 'f2')}; CHECK_FLAGS(0); CHECK(a2, {hex(r)})"
            )

    def isnan(b):
        return decode(b, f)[0] in ("snan", "qnan")

    def issnan(b):
        return decode(b, f)[0] == "snan"

    def key(b):
        d = decode(b, f)
        if d[0] == "inf":
            return F(-(10**400)) if d[1] else F(10**400)
        return d[1]

    for op in ["fmin", "fmax"]:
        for a, b in [
            ("one", "three"),
            ("m3", "one"),
            ("zero", "mzero"),
            ("mzero", "zero"),
            ("qnan", "one"),
            ("one", "qnan"),
            ("snan", "one"),
            ("qnan", "qnan"),
            ("snan", "qnan"),
            ("minf", "maxf"),
            ("inf", "nqnan"),
        ]:
            A, B = V[a], V[b]
            fl = NV if issnan(A) or issnan(B) else 0
            if isnan(A) and isnan(B):
                r = qnan(f)
            elif isnan(A):
                r = B
            elif isnan(B):
                r = A
            else:
                ka, kb = key(A), key(B)
                if ka == kb:  # zeros
                    sa = A >> (eb + mb)
                    r = (A if sa else B) if op == "fmin" else (B if sa else A)
                else:
                    r = (A if ka < kb else B) if op == "fmin" else (A if ka > kb else B)
            L.append(
                f"  li TESTNUM, {T()}; {ld}(f0, {hex(A)}); {ld}(f1, {hex(B)}); csrwi fflags, 0; {op}.{f} f2, f0, f1; "
                f"{get('a2', 'f2')}; CHECK_FLAGS({fl}); CHECK(a2, {hex(r)})   /* {op} {a} {b} */"
            )
    for op in ["feq", "flt", "fle"]:
        for a, b in [
            ("one", "three"),
            ("three", "one"),
            ("one", "one"),
            ("zero", "mzero"),
            ("qnan", "one"),
            ("snan", "one"),
            ("minf", "mmaxf"),
        ]:
            A, B = V[a], V[b]
            if isnan(A) or isnan(B):
                r = 0
                fl = NV if (op != "feq" or issnan(A) or issnan(B)) else 0
            else:
                ka, kb = key(A), key(B)
                r = int({"feq": ka == kb, "flt": ka < kb, "fle": ka <= kb}[op])
                fl = 0
            L.append(
                f"  li TESTNUM, {T()}; {ld}(f0, {hex(A)}); {ld}(f1, {hex(B)}); csrwi fflags, 0; {op}.{f} a2, f0, f1; "
                f"CHECK_FLAGS({fl}); CHECK(a2, {r})   /* {op} {a} {b} */"
            )
    # fclass
    cls = {"minf": 0, "m3": 1, "zero": 4, "mzero": 3, "sub": 5, "one": 6, "inf": 7, "snan": 8, "qnan": 9, "nqnan": 9}
    for name, bit in cls.items():
        L.append(
            f"  li TESTNUM, {T()}; {ld}(f0, {hex(V[name])}); fclass.{f} a2, f0; "
            f"CHECK(a2, {1 << bit})   /* fclass {name} */"
        )
    L.append(
        f"  li TESTNUM, {T()}; {ld}(f0, {hex(V['sub'] | SM)}); fclass.{f} a2, f0; "
        "CHECK(a2, 4)   /* negative subnormal */"
    )
    # conversions to integers
    M64 = (1 << 64) - 1

    def to_int(b, mode, signed, width):
        d = decode(b, f)
        lo = -(1 << (width - 1)) if signed else 0
        hi = (1 << (width - 1)) - 1 if signed else (1 << width) - 1
        if d[0] in ("snan", "qnan"):
            return hi, NV
        if d[0] == "inf":
            return (lo if d[1] else hi), NV
        v = d[1]
        sign = 1 if v < 0 else 0
        r, inexact = rnd_int(abs(v), sign, mode)
        r = -r if sign else r
        if r < lo:
            return lo, NV
        if r > hi:
            return hi, NV
        return r, NX if inexact else 0

    RMN = ["rne", "rtz", "rdn", "rup", "rmm"]
    for ins, signed, width in [("fcvt.w", 1, 32), ("fcvt.wu", 0, 32), ("fcvt.l", 1, 64), ("fcvt.lu", 0, 64)]:
        for name in [
            "x25",
            "m25",
            "x35",
            "m15",
            "x03",
            "m03",
            "m1",
            "i31",
            "i31p",
            "i32",
            "m31",
            "m31m",
            "i63",
            "big2",
            "inf",
            "minf",
            "qnan",
            "snan",
            "big",
        ]:
            for mode in [0, 1, 2, 3, 4] if name in ("x25", "m25", "m15", "m03") else [1]:
                r, fl = to_int(V[name], mode, signed, width)
                if width == 32:
                    r &= 0xFFFFFFFF
                    if r >> 31:
                        r |= 0xFFFFFFFF00000000  # rd gets the 32-bit result sign-extended
                r &= M64
                L.append(
                    f"  li TESTNUM, {T()}; {ld}(f0, {hex(V[name])}); csrwi fflags, 0; {ins}.{f} a2, f0, {RMN[mode]}; "
                    f"CHECK_FLAGS({fl}); CHECK(a2, {hex(r)})   /* {ins} {name} */"
                )
    # conversions from integers
    for ins, signed, width, ints in [
        ("fcvt.{f}.w", 1, 32, [0, 1, -1, 0x7FFFFFFF, -0x80000000, 16777217, 0x123456789]),
        ("fcvt.{f}.wu", 0, 32, [0xFFFFFFFF, 16777217, 0xFFFFFFFF80000000]),
        ("fcvt.{f}.l", 1, 64, [-(1 << 63), (1 << 63) - 1, 9007199254740993, -3]),
        ("fcvt.{f}.lu", 0, 64, [(1 << 64) - 1, 9007199254740993, 1 << 63]),
    ]:
        for x in ints:
            exact = f == "d" and width == 32
            for mode in (0,) if exact else (0, 1, 3):
                xm = x & M64
                if width == 32:
                    v = xm & 0xFFFFFFFF
                    if signed and v >> 31:
                        v -= 1 << 32
                else:
                    v = xm - (1 << 64) if signed and xm >> 63 else xm
                r, fl = round_to(F(v), f, mode) if v != 0 else (0, 0)
                L.append(
                    f"  li TESTNUM, {T()}; li a0, {hex(xm)}; csrwi fflags, 0; "
                    f"{ins.format(f=f)} f2, a0{'' if exact else ', ' + RMN[mode]}; "
                    f"{get('a2', 'f2')}; CHECK_FLAGS({fl}); CHECK(a2, {hex(r)})"
                )
    return L


WHAT = {
    "arith": "arithmetic (add/sub/mul/div/sqrt/fused multiply-add) in every rounding mode, static and dynamic",
    "misc": "sign injection, min/max, compares, fclass, conversions to and from integers (saturation, rounding)",
}


def emit_all(dst):
    for f, ext in (("s", "F"), ("d", "D")):
        L, n = gen(f)
        arith_count = len(L)
        L = gen_misc(f, L, n)
        parts = [("arith", L[:arith_count]), ("misc", L[arith_count:])]
        for kind, lines in parts:
            cases = [l for l in lines if "TESTNUM" in l]
            for ci in range(0, len(cases), 240):
                chunk = cases[ci : ci + 240]
                idx = ci // 240 + 1
                name = f"rv64u{'f' if f == 's' else 'd'}_{kind}{idx}.S"
                out = [
                    f"/* RV64{ext} {WHAT[kind]}:",
                    f" * results and fflags checked against an exact rational reference.  Part {idx}; generated by",
                    " * tools/genfp.py (exact Fraction arithmetic), expected values verified on QEMU. */",
                    '#include "test.h"',
                    "TEST_BEGIN",
                ]
                for k, l in enumerate(chunk, 1):
                    out.append(re.sub(r"li TESTNUM, \d+;", f"li TESTNUM, {k};", l))
                out.append("  csrwi frm, 0")
                out.append("TEST_END")
                open(f"{dst}/{name}", "w").write("\n".join(out) + "\n")
                print(name, len(chunk))


if __name__ == "__main__":
    emit_all(str(Path(__file__).resolve().parent.parent))
