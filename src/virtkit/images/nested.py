"""The nested-virtualization kit: ``kvm-hello`` (a VMM of ~100 lines of C on the KVM API) and its payload (a
VS-mode guest that prints through SBI and shuts down), packed as an initramfs piece to append to the default
guest's (Linux reads concatenated cpio archives). A guest whose CPU has the H extension (``--cpu rv64,h=on``)
then runs ``kvm-hello /lib/nested/payload.bin``: its own KVM runs a guest of its own.

Built with the Debian cross compiler on first use, cached by the hash of the sources in
``~/.cache/virtkit/nested/<key>/``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from virtkit.images.cache import cache_root, require_program
from virtkit.images.cpio import CpioWriter, gzip_bytes

SOURCES = Path(__file__).with_name("nested")
#: where the pieces land in the guest
VMM_PATH, PAYLOAD_PATH = "/bin/kvm-hello", "/lib/nested/payload.bin"
#: the marker the payload prints when it ran right
MARKER = "NESTED-GUEST: sum 1..100000 = 5000050000"


def nested_initrd() -> Path:
    """The initramfs piece (gzip cpio) with kvm-hello and the payload; built once per source change."""
    gcc = require_program("riscv64-linux-gnu-gcc", "gcc-riscv64-linux-gnu", "the nested-virtualization kit")
    objcopy = require_program("riscv64-linux-gnu-objcopy", "binutils-riscv64-linux-gnu", "the nested kit")
    key = hashlib.sha256(b"".join((SOURCES / n).read_bytes() for n in ("vmm.c", "payload.S"))).hexdigest()[:16]
    out = cache_root() / "nested" / key / "nested.cpio.gz"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        t = Path(tmp)
        for cmd in ([gcc, "-static", "-O2", "-Wall", "-o", str(t / "kvm-hello"), str(SOURCES / "vmm.c")],
                    [gcc, "-nostdlib", "-static", "-march=rv64gc", "-mabi=lp64d", "-Wl,-Ttext=0x80000000",
                     "-Wl,--build-id=none", "-o", str(t / "payload.elf"), str(SOURCES / "payload.S")],
                    [objcopy, "-O", "binary", str(t / "payload.elf"), str(t / "payload.bin")]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                from virtkit.errors import ImageError

                raise ImageError(f"nested kit: {' '.join(cmd[:1])} failed: {r.stderr.strip()[:1500]}")
        raw = t / "nested.cpio"
        with open(raw, "wb") as f, CpioWriter(f) as w:
            for d in ("bin", "lib", "lib/nested"):  # (the base has the first two: the kernel keeps them)
                w.add_dir(d)
            w.add_file(VMM_PATH.lstrip("/"), (t / "kvm-hello").read_bytes(), mode=0o755)
            w.add_file(PAYLOAD_PATH.lstrip("/"), (t / "payload.bin").read_bytes())
        part = t / "part"
        part.write_bytes(gzip_bytes(raw.read_bytes()))
        os.replace(part, out)
    return out


def initrd_with_kit(base: Path, dest: Path) -> Path:
    """``base`` (the default initramfs) followed by the kit, written to ``dest``."""
    dest.write_bytes(base.read_bytes() + nested_initrd().read_bytes())
    return dest
