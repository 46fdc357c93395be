"""A tiny S-mode payload in a Linux Image header, for booting OpenSBI fw_jump without the Linux image."""

from __future__ import annotations

import struct
from pathlib import Path

FW_JUMP = Path("/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_jump.bin")

J_PLUS_64 = 0x0400006F  # jal x0, +64: skip the Image header
POWEROFF = [0x001002B7, 0x00005337, 0x55530313, 0x0062A023, 0x0000006F]  # *(u32*)0x100000 = 0x5555; j .
FAIL_7 = [0x001002B7, 0x00073337, 0x33330313, 0x0062A023, 0x0000006F]  # 0x3333 | 7 << 16


def payload_image(path: Path, body: list[int]) -> str:
    hdr = bytearray(64)
    struct.pack_into("<I", hdr, 0, J_PLUS_64)
    struct.pack_into("<Q", hdr, 16, 1 << 20)
    hdr[48:56] = b"RISCV\0\0\0"
    hdr[56:60] = b"RSC\x05"
    path.write_bytes(bytes(hdr) + struct.pack(f"<{len(body)}I", *body))
    return str(path)
