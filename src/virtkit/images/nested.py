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

from virtkit.errors import ImageError
from virtkit.images.cache import cache_root, require_program
from virtkit.images.cpio import CpioWriter, gzip_bytes

SOURCES = Path(__file__).with_name("nested")
#: where the pieces land in the guest
VMM_PATH, PAYLOAD_PATH = "/bin/kvm-hello", "/lib/nested/payload.bin"
KERNEL_PATH, INITRD_PATH = "/lib/nested/Image", "/lib/nested/initrd.gz"
#: the marker the payload prints when it ran right
MARKER = "NESTED-GUEST: sum 1..100000 = 5000050000"


def nested_initrd(kernel: Path | None = None, initrd: Path | None = None) -> Path:
    """The initramfs piece (gzip cpio) with kvm-hello, the payload and, when given, a kernel and initramfs
    for a Linux guest of the guest (``/lib/nested/Image``, ``/lib/nested/initrd.gz``); built once per input."""
    gcc = require_program("riscv64-linux-gnu-gcc", "gcc-riscv64-linux-gnu", "the nested-virtualization kit")
    objcopy = require_program("riscv64-linux-gnu-objcopy", "binutils-riscv64-linux-gnu", "the nested kit")
    h = hashlib.sha256()
    for p in (SOURCES / "vmm.c", SOURCES / "payload.S", kernel, initrd):
        h.update(p.read_bytes() if p is not None else b"-")
    out = cache_root() / "nested" / h.hexdigest()[:16] / "nested.cpio.gz"
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
                raise ImageError(f"nested kit: {Path(cmd[0]).name} failed: {r.stderr.strip()[:1500]}")
        raw = t / "nested.cpio"
        with open(raw, "wb") as f, CpioWriter(f) as w:
            for d in ("bin", "lib", "lib/nested"):  # (the base has the first two: the kernel keeps them)
                w.add_dir(d)
            w.add_file(VMM_PATH.lstrip("/"), (t / "kvm-hello").read_bytes(), mode=0o755)
            w.add_file(PAYLOAD_PATH.lstrip("/"), (t / "payload.bin").read_bytes())
            if kernel is not None:
                w.add_file(KERNEL_PATH.lstrip("/"), kernel.read_bytes())
            if initrd is not None:
                w.add_file(INITRD_PATH.lstrip("/"), initrd.read_bytes())
        part = t / "part"
        part.write_bytes(gzip_bytes(raw.read_bytes()))
        os.replace(part, out)
    return out


def initrd_with_kit(base: Path, dest: Path, kernel: Path | None = None) -> Path:
    """``base`` (the default initramfs) followed by the kit, written to ``dest``; with ``kernel``, the kit
    carries that kernel and ``base`` for a Linux guest of the guest."""
    kit = nested_initrd(kernel, base if kernel is not None else None)
    dest.write_bytes(base.read_bytes() + kit.read_bytes())
    return dest


def nested_linux_command(command: str, mem_mib: int = 64) -> str:
    """The L1 shell command that boots the kit's Linux as a KVM guest running ``command`` (the default
    initramfs's ``virtkit.exec``; its output comes back on kvm-hello's stdout)."""
    import shlex

    from virtkit.images.initramfs import exec_command_line

    append = f"console=hvc0 quiet {exec_command_line(command)}"
    return (f"kvm-hello --kernel {KERNEL_PATH} --initrd {INITRD_PATH} --mem {mem_mib} "
            f"--append {shlex.quote(append)}")
