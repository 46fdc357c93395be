"""The link between the interpreter and JIT-compiled code: Numba intrinsics (unmanaged arrays, calling a region's
host code) and the invalidation of translated regions a store hits. Part of the core (``@njit``)."""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic
from numba.np.arrayobj import make_array, populate_array

from virtkit.engines.riscv.consts import (
    CSHIFT,
    JMASK,
    JR_INVAL,
    JSTRIDE,
    JT_HI,
    JT_KEY,
    JT_LO,
    PAGE_SLOTS,
)


@intrinsic
def unmanaged(typingctx, arr):
    """The same array without its NRT meminfo, so calls that pass it do no reference counting.

    Only valid while the caller (RiscvEngine.run, which holds every array) keeps the memory alive.
    With the hot helpers inlined (``inline='always'``) this removes ~30 ns of incref/decref and
    argument marshalling from every CSR access, trap and fetch-page change.
    """

    def codegen(context, builder, signature, args):
        src = make_array(arr)(context, builder, value=args[0])
        dst = make_array(arr)(context, builder)
        populate_array(dst, data=src.data, shape=src.shape, strides=src.strides, itemsize=src.itemsize,
                       meminfo=None)
        return dst._getvalue()

    return arr(arr), codegen


@intrinsic
def call_native(typingctx, fn, ctxp):
    """Call the JIT-compiled region at address ``fn`` as ``int64 fn(int64 ctx)`` (see jit.py)."""

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(i64, [i64])
        return builder.call(builder.inttoptr(args[0], fnty.as_pointer()), [args[1]])

    return types.int64(types.int64, types.int64), codegen


@njit(cache=True, nogil=True)
def jit_inval(o, jt):
    """A store hit RAM offset ``o`` in a chunk with translated code: drop every region covering it."""
    jtab = jt[0]
    jhot = jt[1]
    jreq = jt[2]
    cmap = jt[3]
    ch = o >> CSHIFT
    cnt = (cmap[ch] >> 1) + 1
    cmap[ch] = np.uint8((min(cnt, 127) << 1) & 0xFE)
    jreq[JR_INVAL] += 1
    base = (o >> 12) * JSTRIDE  # a region lies inside one page: its entries use that page's slots
    for k in range(PAGE_SLOTS):
        i = (base + k) & JMASK
        if jtab[JT_KEY, i] >= 0 and jtab[JT_LO, i] <= ch and jtab[JT_HI, i] >= ch:
            jtab[JT_KEY, i] = -1
            jhot[i] = 0
