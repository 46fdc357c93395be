"""Layout geometry of a pool chunk: where each logical byte of a chunk lives on its extents.

A chunk is the allocation unit of a volume: ``width`` physical extents on distinct devices.
linear (1 extent), striped (RAID 0, ``width`` extents, data in ``stripe``-byte units round
robin), mirror (RAID 1, ``width`` identical copies) and parity (RAID 5, ``width`` extents, one
stripe unit of parity per row, rotating left-symmetric like Linux md's default).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

LAYOUTS = ("linear", "striped", "mirror", "parity")


@dataclass(frozen=True)
class Piece:
    """A contiguous run of a request on one column: column, offset in that extent, buffer slice."""

    col: int
    pe_off: int
    buf_off: int
    length: int


@dataclass(frozen=True)
class Row:
    """The part of a request inside one parity row: its parity column and data pieces."""

    row: int
    parity_col: int
    pieces: list[Piece]
    full: bool  # the request covers every data unit of the row completely


@dataclass(frozen=True)
class Geometry:
    """Layout parameters shared by every chunk of a volume."""

    layout: str
    width: int
    stripe: int
    extent: int

    def check(self) -> str | None:
        """Return why these parameters are invalid, or None when they are fine."""
        if self.layout not in LAYOUTS:
            return f"unknown layout {self.layout!r} (choose {', '.join(LAYOUTS)})"
        minimum = {"linear": 1, "striped": 2, "mirror": 2, "parity": 3}[self.layout]
        if self.layout == "linear" and self.width != 1:
            return "a linear volume has exactly one extent per chunk"
        if self.width < minimum:
            return f"{self.layout} needs at least {minimum} devices (got {self.width})"
        if self.width > 64:
            return "at most 64 devices per chunk"
        if self.stripe < 512 or self.stripe & (self.stripe - 1) or self.extent % self.stripe:
            return f"stripe size {self.stripe} must be a power of two >= 512 dividing the extent size {self.extent}"
        return None

    @property
    def capacity(self) -> int:
        """Logical bytes one chunk holds."""
        if self.layout in ("linear", "mirror"):
            return self.extent
        if self.layout == "striped":
            return self.width * self.extent
        return (self.width - 1) * self.extent

    @property
    def redundant(self) -> bool:
        """True when the chunk survives the loss of one device."""
        return self.layout in ("mirror", "parity")

    @property
    def row_bytes(self) -> int:
        """Logical bytes in one parity row (data units only)."""
        return (self.width - 1) * self.stripe

    def parity_col(self, row: int) -> int:
        """Column holding the parity of ``row`` (rotates from the last column to the first)."""
        return self.width - 1 - row % self.width

    def data_col(self, row: int, unit: int) -> int:
        """Column of data unit ``unit`` (0..width-2) of ``row``; left-symmetric placement."""
        return (self.parity_col(row) + 1 + unit) % self.width

    def striped_pieces(self, off: int, n: int) -> Iterator[Piece]:
        """Split ``[off, off+n)`` of a striped chunk into per-column pieces."""
        s, w, pos, end = self.stripe, self.width, off, off + n
        while pos < end:
            unit = pos // s
            inner = pos % s
            length = min(end - pos, s - inner)
            yield Piece(unit % w, (unit // w) * s + inner, pos - off, length)
            pos += length

    def parity_rows(self, off: int, n: int) -> Iterator[Row]:
        """Split ``[off, off+n)`` of a parity chunk into rows of data pieces."""
        s, rb, pos, end = self.stripe, self.row_bytes, off, off + n
        while pos < end:
            row = pos // rb
            row_end = min(end, (row + 1) * rb)
            pieces = []
            full = pos == row * rb and row_end == (row + 1) * rb
            p = pos
            while p < row_end:
                unit = (p - row * rb) // s
                inner = p % s
                length = min(row_end - p, s - inner)
                pieces.append(Piece(self.data_col(row, unit), row * s + inner, p - off, length))
                p += length
            yield Row(row, self.parity_col(row), pieces, full)
            pos = row_end


def xor_into(dst: bytearray | memoryview, src: bytes | bytearray | memoryview) -> None:
    """dst ^= src, byte for byte (numpy: parity computations run at memory speed)."""
    d = np.frombuffer(dst, dtype=np.uint8)
    s = np.frombuffer(src, dtype=np.uint8)
    np.bitwise_xor(d, s, out=d)
