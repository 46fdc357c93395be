"""A small flattened-device-tree (DTB, version 17) writer.

Boards describe their hardware to firmware and kernels with a device tree; this builds one in
memory (nodes, typed properties, phandles, /memreserve/ entries) and serialises it to the
binary format of the Devicetree Specification, chapter 5.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from virtkit.errors import ConfigError

FDT_MAGIC = 0xD00DFEED
FDT_BEGIN_NODE = 1
FDT_END_NODE = 2
FDT_PROP = 3
FDT_END = 9
_VERSION = 17
_LAST_COMP_VERSION = 16


def _check_name(name: str, what: str) -> None:
    if not name or (what == "property" and len(name) > 31) or "\0" in name or "/" in name:
        raise ConfigError(f"bad device-tree {what} name {name!r}")


class Node:
    """One device-tree node: an ordered list of properties and children."""

    def __init__(self, name: str) -> None:
        if name:
            _check_name(name, "node")
        self.name = name
        self.props: dict[str, bytes] = {}
        self.children: list[Node] = []

    # -- children -----------------------------------------------------------------------------
    def add(self, name: str) -> Node:
        """Create (or return the existing) child node called ``name``."""
        for c in self.children:
            if c.name == name:
                return c
        child = Node(name)
        self.children.append(child)
        return child

    def child(self, name: str) -> Node | None:
        """The child called ``name``, or None."""
        return next((c for c in self.children if c.name == name), None)

    # -- typed properties ---------------------------------------------------------------------
    def set_bytes(self, name: str, value: bytes) -> Node:
        """Set a raw property value."""
        _check_name(name, "property")
        self.props[name] = bytes(value)
        return self

    def set_empty(self, name: str) -> Node:
        """Set a boolean (empty) property such as ``interrupt-controller``."""
        return self.set_bytes(name, b"")

    def set_u32(self, name: str, *cells: int) -> Node:
        """Set a property of one or more big-endian 32-bit cells."""
        for c in cells:
            if not 0 <= c <= 0xFFFFFFFF:
                raise ConfigError(f"device-tree cell {c:#x} of {name!r} does not fit 32 bits")
        return self.set_bytes(name, struct.pack(f">{len(cells)}I", *cells))

    def set_u64(self, name: str, *values: int) -> Node:
        """Set a property of 64-bit values (two cells each, high first)."""
        for v in values:
            if not 0 <= v <= 0xFFFFFFFFFFFFFFFF:
                raise ConfigError(f"device-tree value {v:#x} of {name!r} does not fit 64 bits")
        return self.set_bytes(name, struct.pack(f">{len(values)}Q", *values))

    def set_str(self, name: str, value: str) -> Node:
        """Set a NUL-terminated string property."""
        return self.set_strings(name, [value])

    def set_strings(self, name: str, values: Iterable[str]) -> Node:
        """Set a string-list property (``compatible = "a", "b"``)."""
        out = b""
        for v in values:
            if "\0" in v:
                raise ConfigError(f"device-tree string {v!r} of {name!r} contains a NUL")
            out += v.encode() + b"\0"
        return self.set_bytes(name, out)

    def set_reg(self, name: str, *pairs: tuple[int, int], address_cells: int = 2, size_cells: int = 2) -> Node:
        """Set a ``reg``-style property of (address, size) pairs with the given cell counts."""
        cells: list[int] = []
        for addr, size in pairs:
            for v, n in ((addr, address_cells), (size, size_cells)):
                if v >> (32 * n):
                    raise ConfigError(f"{v:#x} does not fit {n} cell(s) in {name!r}")
                cells += [(v >> (32 * (n - 1 - i))) & 0xFFFFFFFF for i in range(n)]
        return self.set_u32(name, *cells)


class Fdt:
    """A device tree: a root node, /memreserve/ entries and a phandle allocator."""

    def __init__(self) -> None:
        self.root = Node("")
        self.memreserve: list[tuple[int, int]] = []
        self._next_phandle = 1
        self.boot_cpuid = 0

    def node(self, path: str) -> Node:
        """The node at an absolute ``path`` such as ``/soc/serial@10000000``, created as needed."""
        if not path.startswith("/"):
            raise ConfigError(f"device-tree path {path!r} must be absolute")
        n = self.root
        for part in filter(None, path.split("/")):
            n = n.add(part)
        return n

    def phandle(self, node: Node) -> int:
        """The node's phandle, allocating one (and setting the ``phandle`` property) on first use."""
        if "phandle" in node.props:
            return struct.unpack(">I", node.props["phandle"])[0]
        ph = self._next_phandle
        self._next_phandle += 1
        node.set_u32("phandle", ph)
        return ph

    def reserve(self, address: int, size: int) -> None:
        """Add a /memreserve/ entry (memory the OS must not use)."""
        if address < 0 or size <= 0 or address + size > 1 << 64:
            raise ConfigError(f"bad /memreserve/ entry {address:#x}+{size:#x}")
        self.memreserve.append((address, size))

    def to_bytes(self, pad: int = 0) -> bytes:
        """Serialise to a DTB blob, with ``pad`` free bytes at the end for firmware fix-ups."""
        strings = bytearray()
        offsets: dict[str, int] = {}
        struct_blk = bytearray()

        def str_off(name: str) -> int:
            if name not in offsets:
                offsets[name] = len(strings)
                strings.extend(name.encode() + b"\0")
            return offsets[name]

        def pad4() -> None:
            struct_blk.extend(b"\0" * (-len(struct_blk) % 4))

        def emit(node: Node) -> None:
            struct_blk.extend(struct.pack(">I", FDT_BEGIN_NODE))
            struct_blk.extend(node.name.encode() + b"\0")
            pad4()
            for name, value in node.props.items():
                struct_blk.extend(struct.pack(">III", FDT_PROP, len(value), str_off(name)))
                struct_blk.extend(value)
                pad4()
            for c in node.children:
                emit(c)
            struct_blk.extend(struct.pack(">I", FDT_END_NODE))

        emit(self.root)
        struct_blk.extend(struct.pack(">I", FDT_END))

        rsv = b"".join(struct.pack(">QQ", a, s) for a, s in self.memreserve) + struct.pack(">QQ", 0, 0)
        off_rsv = 40  # header size, already 8-aligned
        off_struct = off_rsv + len(rsv)
        off_strings = off_struct + len(struct_blk)
        total = off_strings + len(strings) + pad
        header = struct.pack(">10I", FDT_MAGIC, total, off_struct, off_strings, off_rsv, _VERSION,
                             _LAST_COMP_VERSION, self.boot_cpuid, len(strings), len(struct_blk))
        return header + rsv + bytes(struct_blk) + bytes(strings) + bytes(pad)
