"""Hand-encoded RV64 instructions for tiny test guests (no toolchain needed)."""

T0, T1, T2, S0, S1 = 5, 6, 7, 8, 9
WFI = 0x10500073


def lui(rd, imm20):
    return (imm20 << 12) | (rd << 7) | 0x37


def addi(rd, rs1, imm):
    return ((imm & 0xFFF) << 20) | (rs1 << 15) | (rd << 7) | 0x13


def load(f3, rd, rs1, imm):  # f3: 2 lw, 3 ld, 4 lbu
    return ((imm & 0xFFF) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | 0x03


def store(f3, rs2, rs1, imm):  # f3: 0 sb, 2 sw, 3 sd
    return (((imm >> 5) & 0x7F) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | ((imm & 0x1F) << 7) | 0x23


def jal0(off):
    i = off & 0x1FFFFF
    return (((i >> 20) & 1) << 31) | (((i >> 1) & 0x3FF) << 21) | (((i >> 11) & 1) << 20) | (((i >> 12) & 0xFF) << 12) \
        | 0x6F


def andi(rd, rs1, imm):
    return ((imm & 0xFFF) << 20) | (rs1 << 15) | (7 << 12) | (rd << 7) | 0x13


def beq(rs1, rs2, off):
    i = off & 0x1FFF
    return (((i >> 12) & 1) << 31) | (((i >> 5) & 0x3F) << 25) | (rs2 << 20) | (rs1 << 15) | (((i >> 1) & 0xF) << 8) \
        | (((i >> 11) & 1) << 7) | 0x63


def auipc(rd, imm20):
    return (imm20 << 12) | (rd << 7) | 0x17


def add(rd, rs1, rs2):
    return (rs2 << 20) | (rs1 << 15) | (rd << 7) | 0x33


def slli(rd, rs1, sh):
    return (sh << 20) | (rs1 << 15) | (1 << 12) | (rd << 7) | 0x13


def bne(rs1, rs2, off):
    return beq(rs1, rs2, off) | (1 << 12)


def putc(ch):
    """t1 = ch; *(u8*)t0 = t1 (t0 holds the UART base)."""
    return [addi(T1, 0, ord(ch)), store(0, T1, T0, 0)]


POWEROFF = [lui(T0, 0x100), lui(T1, 0x5), addi(T1, T1, 0x555), store(2, T1, T0, 0), jal0(0)]
