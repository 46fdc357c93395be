"""Build tiny bare-metal RISC-V test programs with the Debian cross toolchain (gcc-riscv64-linux-gnu).

Used by the engine's tests: :func:`build` links assembly (or C) at 0x8000_0000 with a
``tohost``/``fromhost`` pair, so ``PASS``/``FAIL n`` end the program through HTIF.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from virtkit.errors import ImageError

GCC = "riscv64-linux-gnu-gcc"

LINKER_SCRIPT = """OUTPUT_ARCH(riscv)
ENTRY(_start)
SECTIONS {{
  . = {base:#x};
  .text.init : {{ *(.text.init) }}
  .text : {{ *(.text*) }}
  . = ALIGN(0x1000);
  .tohost : {{ *(.tohost) }}
  . = ALIGN(0x1000);
  .data : {{ *(.data*) *(.sdata*) *(.rodata*) *(.srodata*) }}
  .bss : {{ *(.bss*) *(.sbss*) *(COMMON) }}
  . = ALIGN(0x1000);
  _end = .;
}}
"""

#: Prepended to every assembly program: HTIF words and PASS/FAIL macros.
PRELUDE = """
.macro PASS
    li t6, 1
    la t5, tohost
1:  sd t6, 0(t5)
    j 1b
.endm
.macro FAIL n
    li t6, (\\n << 1) | 1
    la t5, tohost
1:  sd t6, 0(t5)
    j 1b
.endm
.section .tohost, "aw", @progbits
.align 6
.globl tohost
tohost: .dword 0
.size tohost, 8
.align 6
.globl fromhost
fromhost: .dword 0
.size fromhost, 8
.text
"""


def have_toolchain() -> bool:
    """True when the RISC-V cross compiler is installed."""
    return shutil.which(GCC) is not None


def build(source: str, workdir: str | Path, name: str = "prog", *, lang: str = "S",
          march: str = "rv64gc", extra: list[str] | None = None, base: int = 0x8000_0000) -> Path:
    """Assemble/compile ``source`` into ``workdir/name.elf`` linked at ``base``."""
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    src = wd / f"{name}.{lang}"
    src.write_text((PRELUDE + source) if lang == "S" else source)
    ld = wd / "link.ld"
    ld.write_text(LINKER_SCRIPT.format(base=base))
    out = wd / f"{name}.elf"
    cmd = [GCC, "-nostdlib", "-nostartfiles", "-static", "-mcmodel=medany", f"-march={march}", "-mabi=lp64d",
           "-fno-pic", "-no-pie", "-O2", "-Wl,--build-id=none", "-T", str(ld), "-o", str(out), str(src)] + (extra or [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise ImageError(f"cross build failed: {r.stderr.strip()[:2000]}")
    return out
