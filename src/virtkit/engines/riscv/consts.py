"""Constants shared by the Numba core and the Python side: exit reasons, state-array indices, CSR numbers, masks.

Plain Python with no Numba import, so the engine can use them without loading Numba (the AOT core path).
``core.py`` imports every name here; Numba folds them in as compile-time constants.
"""

from __future__ import annotations

# ---- exit reasons (out[0]) -------------------------------------------------
EXIT_BUDGET = 0
EXIT_MMIO_READ = 1
EXIT_MMIO_WRITE = 2
EXIT_WFI = 3
EXIT_HTIF = 4
EXIT_SHUTDOWN = 5
EXIT_DEBUG = 11  # an ebreak while a debugger is attached (machine.engine.ExitReason.DEBUG), pc at the ebreak
EXIT_HYPERCALL = 9  # an SBI call the core does not serve itself (machine.engine.ExitReason.HYPERCALL)

# ---- hart state columns (hs[h, k]) -----------------------------------------
HS_PC = 0
HS_PRIV = 1
HS_WFI = 2  # 0 running, 1 waiting for an interrupt (WFI, SBI retentive suspend), 2 stopped (SBI HSM)
HS_RESV = 3  # RAM offset of the reserved 64-byte granule, -1 when none
HS_MMIO_RD = 4
HS_MMIO_KIND = 5
HS_INSTRET = 6
HS_CYC_OFF = 7
HS_IRET_OFF = 8
HS_EXC_CAUSE = 9
HS_EXC_TVAL = 10
HS_TRAPS = 11
HS_CY_FROZEN = 12
HS_IR_FROZEN = 13
HS_JIT = 14  # instructions retired by native (JIT) code
HS_JIT_CALLS = 15  # calls into native code
HS_V = 16  # the virtualization mode (H extension): 1 in VS- and VU-mode
HS_HLV = 17  # an HLV/HSV in progress: 1 (access as V=1 at hstatus.SPVP), 2 HLVX (execute permission reads)
HS_EXC_TVAL2 = 18  # with HS_EXC_CAUSE: the guest physical address >> 2 of a guest-page fault (htval, mtval2)
HS_EXC_GVA = 19  # with HS_EXC_CAUSE: 1 when the tval is a guest virtual address (hstatus.GVA, mstatus.GVA);
#                  2 | that: the fault was an implicit access for VS-stage translation (htinst pseudoinstruction)
HS_VPRIV = 20  # trap-and-emulate: the guest's virtual privilege (1 vS, 0 vU) while the hart really runs in U-mode
HS_WALK_LEVEL = 21  # the level of the leaf the last successful page walk found (0: a 4 KiB page)
HS_N = 24

# ---- configuration / shared scalars (cfg[k]) -------------------------------
CF_RAM_BASE = 0
CF_RAM_SIZE = 1
CF_CLINT_BASE = 2
CF_TOHOST = 3
CF_NHARTS = 4
CF_NMMIO = 5
CF_RATE = 6  # mtime ticks per instruction, in 1/65536 units
CF_DETERMINISTIC = 7
CF_SLICE = 8
CF_NRESV = 9
CF_STOP = 10
CF_JIT = 11  # JIT hotness threshold (0: interpreter only), see jit.py
CF_JIT_SYNC = 12  # 1: run_harts returns when a region is queued (translated in the vCPU thread)
CF_NFAST = 13  # fast MMIO cells in use (rows FAST0.. of the mmio table)
CF_FCOUNT = 14  # buffered MMIO writes waiting in the ring (rows FRING0.. of the mmio table)
CF_FREADS = 15  # loads answered from a read shadow (statistics)
CF_SBI = 16  # 1: the VMM is the SBI (--bios builtin): S-mode ECALLs are served by the core or exit as hypercalls
CF_SBI_TIME = 17  # SBI calls the core served itself, by extension (statistics): TIME (and legacy set_timer)
CF_SBI_IPI = 18  # IPI
CF_SBI_RFENCE = 19  # RFENCE
CF_DEBUG = 21  # 1: guest debug (a debugger is attached): ebreak exits as EXIT_DEBUG instead of trapping
CF_STEP_HART = 22  # h + 1: only hart h runs (a debugger's single step); 0: every hart
CF_NEXT_HART = 20  # the hart run_harts runs first on its next call (round robin across calls: no hart starves)
CF_SBI_CONSOLE = 23  # 1 + the fast MMIO cell of the console's THR: legacy putchar goes through it (0: none)
CF_SBI_PUTCHAR = 24  # legacy console_putchar calls served in the core through that cell (statistics)
CF_TRIG_OFF = 25  # 1: debug triggers do not fire (a debugger stepping over the access its watchpoint caught)
CF_TRAP = 27  # 1: trap and emulate (--mode trap): the guest kernel runs in U-mode under a monitor (trapmon.py)
CF_GUEST_RAM = 28  # trap and emulate: the RAM the guest sees (the shadow page tables live above it)
CF_N = 32

# ---- the mmio table (int64, MMIO_COLS columns): regions, then fast cells, then the write ring ----------
MAX_MMIO = 64  # rows 0..: (base, size) of the regions whose accesses exit to the device model
FAST0 = MAX_MMIO  # rows FAST0..: fast cells (address, size, kind, value), see engine.add_fast_mmio
MAX_FAST = 8
FAST_OFF, FAST_SHADOW, FAST_BUFFER = 0, 1, 2  # cell kinds: disabled, read shadow, buffered write
FRING0 = FAST0 + MAX_FAST  # rows FRING0..: buffered writes (cell, value), drained in order before any exit
FRING_N = 1024
MMIO_ROWS = FRING0 + FRING_N
MMIO_COLS = 4

# ---- CLINT time array (ctime[k]) -------------------------------------------
CT_MTIME = 0
CT_FRAC = 1

CLINT_SIZE = 0x10000
TLB_BITS = 9
TLB_SIZE = 1 << TLB_BITS
TLB_MASK = TLB_SIZE - 1
NPMP = 16

# ---- the SBI (--bios builtin): extension IDs and error codes (SBI specification 2.0) ----
SBI_EXT_TIME = 0x54494D45
SBI_EXT_IPI = 0x735049
SBI_EXT_RFENCE = 0x52464E43
SBI_SUCCESS = 0
SBI_ERR_NOT_SUPPORTED = -2
SBI_ERR_INVALID_PARAM = -3
HART_STOPPED = 2  # hs[h, HS_WFI]: a hart the SBI's HSM has stopped (never woken by an interrupt)

# ---- statistics kept in CSR slots no instruction reaches (csr_read refuses them): traps taken, by cause
TRAPS_EXC = 0x7E0  # + exception code (15: 15 and above; the H extension's 20-23 count at TRAPS_H)
TRAPS_H = 0x7DA  # + 0..3: guest-page faults (20 fetch, 21 load, 23 store at +3) and virtual-instruction (22)
TRAPS_INT = 0x7F0  # + interrupt code

# ---- the hypervisor extension (privileged spec, "Hypervisor Extension") ------------------------------------
HSTATUS = 0x600
HEDELEG = 0x602
HIDELEG = 0x603
HIE = 0x604
HTIMEDELTA = 0x605
HCOUNTEREN = 0x606
HGEIE = 0x607
HENVCFG = 0x60A
HTVAL = 0x643
HIP = 0x644
HVIP = 0x645
HTINST = 0x64A
HGATP = 0x680
HGEIP = 0xE12
VSSTATUS = 0x200
VSIE = 0x204
VSTVEC = 0x205
VSSCRATCH = 0x240
VSEPC = 0x241
VSCAUSE = 0x242
VSTVAL = 0x243
VSIP = 0x244
VSATP = 0x280
MTINST = 0x34A
MTVAL2 = 0x34B
MISA_H = 1 << 7
VS_IRQ = 0x444  # VSSIP, VSTIP, VSEIP (mip/hip/hvip bits 2, 6, 10): delegated to HS for good (mideleg reads 1)
MIDELEG_H = VS_IRQ | (1 << 12)  # and SGEIP (GEILEN = 0: never pending)
HSTATUS_WMASK = (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 20) | (1 << 21) | (1 << 22)  # GVA SPV SPVP HU
#                                                              VTVM VTW VTSR (VGEIN: GEILEN = 0, VSBE: little)
HSTATUS_FIXED = 2 << 32  # VSXL = 64-bit
HEDELEG_MASK = 0xB1FF  # never: ecalls from HS/VS/M (9-11), guest-page faults and virtual instruction (20-23)
MEDELEG_H = (1 << 10) | (0xF << 20)  # with H: ecall from VS, guest-page faults, virtual instruction
MSTATUS_MPV = 1 << 39
MSTATUS_GVA = 1 << 38
HGATP_MODE_BARE, HGATP_SV39X4, HGATP_SV48X4 = 0, 8, 9
CAUSE_VIRTUAL = 22  # virtual-instruction exception
#: the exceptions memory accesses raise (misaligned, access, page and guest-page faults): their tval is an address
MEM_CAUSES = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 12) | (1 << 13) | (1 << 15) | (
    1 << 20) | (1 << 21) | (1 << 23)
VIRT_CSR = 0x7DF  # a CSR slot no instruction reaches: 1 on every hart when H is on (csr_read/write look here)

# ---- trap and emulate (trapmon.py): per-hart words in CSR slots no instruction reaches ----------------------
TM_SATP = 0x7D0  # the guest's satp (the real satp points at the shadow tables)
TM_POOL = 0x7D1  # RAM offset of the hart's shadow pool: 3 roots (vU, vS, vS with SUM), then tables
TM_NEXT = 0x7D2  # the pool's next free page (RAM offset)
TM_ZAP = 0x7D3  # 1: drop every shadow table before the hart runs again (a remote fence asked for it)
TM_PRIV_TRAPS = 0x7D4  # privileged instructions the monitor emulated (statistics)
TM_FILLS = 0x7D5  # shadow page-table entries filled from the guest's tables
TM_GUEST_FAULTS = 0x7D6  # page faults the guest's own tables gave, handed to the guest
TM_ZAPS = 0x7D7  # times the shadow tables were dropped (sfence.vma, satp writes, remote fences, a full pool)
TM_SBI = 0x7D9  # SBI calls (ecalls from vS) the monitor took
TM_POOL_PAGES = 1024  # 4 MiB of shadow tables per hart

# ---- CSR numbers -------------------------------------------------------------
FFLAGS = 0x001
FRM = 0x002
FCSR = 0x003
SSTATUS = 0x100
SIE = 0x104
STVEC = 0x105
SCOUNTEREN = 0x106
SENVCFG = 0x10A
SSCRATCH = 0x140
SEPC = 0x141
SCAUSE = 0x142
STVAL = 0x143
SIP = 0x144
SATP = 0x180
MSTATUS = 0x300
MISA = 0x301
MEDELEG = 0x302
MIDELEG = 0x303
MIE = 0x304
MTVEC = 0x305
MCOUNTEREN = 0x306
MENVCFG = 0x30A
MCOUNTINHIBIT = 0x320
MSCRATCH = 0x340
MEPC = 0x341
MCAUSE = 0x342
MTVAL = 0x343
MIP = 0x344
PMPCFG0 = 0x3A0
PMPADDR0 = 0x3B0
MCYCLE = 0xB00
MINSTRET = 0xB02
CYCLE = 0xC00
TIME = 0xC01
INSTRET = 0xC02
MVENDORID = 0xF11
MARCHID = 0xF12
MIMPID = 0xF13
MHARTID = 0xF14
MCONFIGPTR = 0xF15

MISA_VALUE = -(1 << 63) | (1 << 0) | (1 << 2) | (1 << 3) | (1 << 5) | (1 << 8) | (1 << 12) | (1 << 18) | (1 << 20)
MSTATUS_WMASK = (1 << 1) | (1 << 3) | (1 << 5) | (1 << 7) | (1 << 8) | (3 << 11) | (3 << 13) | (1 << 17) | (
    1 << 18) | (1 << 19) | (1 << 20) | (1 << 21) | (1 << 22)
SSTATUS_MASK = (1 << 1) | (1 << 5) | (1 << 8) | (3 << 13) | (1 << 18) | (1 << 19) | (3 << 32)
MSTATUS_FIXED = (2 << 32) | (2 << 34)  # UXL = SXL = 64-bit
MEDELEG_MASK = 0xB3FF
MIDELEG_MASK = 0x222
MIE_MASK = 0xAAA
MIP_SWMASK = 0x222  # SSIP, STIP, SEIP writable by M
INTBIT = -(1 << 63)

S_MODE_IRQ = 0x222

# interrupt priority order: MEI, MSI, MTI, SEI, SSI, STI, then (H) SGEI, VSEI, VSSI, VSTI
IRQ_ORDER = (11, 3, 7, 9, 1, 5, 12, 10, 2, 6)

# ---- the JIT tier's tables (jit.py builds them, core.py uses them) -------------------------------------
JBITS = 16
JSIZE = 1 << JBITS  # entries of the direct-mapped region table, indexed by jslot(RAM offset)
JSTRIDE = 2531  # odd: page p's entries use slots p*JSTRIDE.. (+2048, mod JSIZE): page starts never pile up


def jslot(off: int) -> int:
    """The region-table slot of RAM offset ``off`` (core.py inlines the same formula)."""
    return (((off & 0xFFF) >> 1) + (off >> 12) * JSTRIDE) & JMASK


PAGE_SLOTS = 2048  # the slots a 4 KiB page's entries map to (consecutive, mod JSIZE): a region's are among them
JMASK = JSIZE - 1
JT_KEY, JT_FN, JT_LO, JT_HI = 0, 1, 2, 3  # jtab rows (shape (4, JSIZE)): entry RAM offset (-1 empty), fn, chunks
CSHIFT = 8  # cmap: one byte per 256-byte chunk of RAM
REQ_AGAIN = 4096  # a block entry still interpreted is requested again every this many entries (a power of 2)
REQ_N = 256  # request ring (a power of 2): jreq[0] head, jreq[1] tail, jreq[2] invalidations
JR_INVAL = 2
JR_RING = 3  # jreq[3:] = RAM offsets of the block entries to translate
# jctx columns (one row per hart; the native code reads and writes them)
J_SELF, J_X, J_RAM, J_TLBT, J_TLBO, J_CMAP, J_CFG, J_PC, J_LIMIT, J_LCTX, J_SCTX, J_STATUS, J_ARG = range(13)
JC_N = 16
ST_END, ST_BAIL, ST_CODE = 0, 1, 2  # native exit status: block end, interpret the insn at pc, code written
ST_REJOIN = 3  # interpret the insn at pc, then look the next pc up again (it is an entry of the region)

