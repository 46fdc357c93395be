"""Tiny hand-encoded guests for the VM-state tests (snapshots, migration): a counter in RAM and a page
dirtier, run from reset on the riscv64-virt board with no firmware."""

from __future__ import annotations

import struct

from tests.helpers.rvenc import (
    S0,
    T0,
    T1,
    T2,
    add,
    addi,
    andi,
    auipc,
    beq,
    bne,
    jal0,
    load,
    lui,
    slli,
    store,
)

COUNTER = 0x8000_0000 + 0x40 + (1 << 20)  # auipc s0, 0x100 at the first instruction after the Image header

# counts in RAM at COUNTER, printing '.' every 1024
COUNTING = [
    auipc(S0, 0x100),                    # s0 = counter address
    lui(T0, 0x10000),                    # t0 = UART
    load(3, T2, S0, 0),                  # loop: t2 = counter
    addi(T2, T2, 1),
    store(3, T2, S0, 0),                 # counter += 1
    andi(T1, T2, 0x3FF),
    beq(T1, 0, 8),                       # every 1024: print '.'
    jal0(-20),
    addi(T1, 0, ord(".")),
    store(0, T1, T0, 0),
    jal0(-32),
]

# copies the VM generation ID (16 bytes at 0x102000) to RAM at COUNTER, over and over: what the guest reads
GENID = [
    auipc(S0, 0x100),                    # s0 = where the copy goes
    lui(T0, 0x102),                      # t0 = the generation ID window
    load(3, T1, T0, 0),                  # loop: copy two 64-bit words
    store(3, T1, S0, 0),
    load(3, T2, T0, 8),
    store(3, T2, S0, 8),
    jal0(-16),
]

# writes a word in page after page of an 8 MiB region, with ~8k instructions of work between two pages:
# at full speed it dirties pages faster than a 16 MiB/s link carries them, throttled it does not
BUSY = [
    auipc(S0, 0x100),          # s0 = 1 MiB in
    addi(T1, 0, 0),            # t1 = i
    andi(T2, T1, 0x7FF),       # loop: t2 = i % 2048
    slli(T2, T2, 12),          #       * 4096
    add(T2, T2, S0),
    store(3, T1, T2, 0),       #       *(s0 + page * 4096) = i
    addi(T1, T1, 1),
    lui(T0, 1),                #       t0 = 4096
    addi(T0, T0, -1),          # delay: t0 -= 1
    bne(T0, 0, -4),
    jal0(-32),
]


class Out:
    """A console that keeps what the guest printed."""

    def __init__(self):
        self.data = bytearray()

    def __call__(self, b):
        self.data += b


def counter(m) -> int:
    """The COUNTING guest's counter in machine ``m``."""
    return struct.unpack("<Q", m.mem.read(COUNTER, 8))[0]
