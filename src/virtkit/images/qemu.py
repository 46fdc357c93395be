"""Boot a guest on QEMU (``qemu-system-riscv64 -M virt``), the reference peer for virtkit's board.

Used by the image tests (the kernel config and /init are proven on QEMU before virtkit's own
board exists) and by ``bench/boot.py``. :func:`run_console` drives any emulator whose console is
its stdout, so the benchmark times ``virtkit run`` with the same code.
"""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from virtkit.errors import ConfigError
from virtkit.images.cache import require_program
from virtkit.images.initramfs import parse_exit_status

QEMU = "qemu-system-riscv64"
#: The interactive shell's prompt (PS1 from the initramfs's /etc/profile).
PROMPT = re.compile(r"virtkit:[^\s#]*# ")


@dataclass
class ConsoleRun:
    """What happened on a guest console: all output, when each awaited pattern appeared, how it ended."""

    output: str
    seconds: float
    returncode: int | None
    timed_out: bool
    marks: dict[str, float] = field(default_factory=dict)

    @property
    def exit_status(self) -> int | None:
        """The ``virtkit-exit-status`` the guest printed, if any."""
        return parse_exit_status(self.output)


def run_console(argv: Sequence[str], timeout: float, marks: Sequence[str | re.Pattern] = (),
                replies: dict[str | re.Pattern, str] | None = None, stop_at: str | re.Pattern | None = None,
                env: dict[str, str] | None = None) -> ConsoleRun:
    """Run ``argv``, read its console (stdout+stderr) until it exits, ``stop_at`` is seen or ``timeout``.

    ``marks`` are patterns (strings or regexes) whose first appearance is timed (seconds after
    start, keyed by pattern text). ``replies`` maps a pattern to text written to the guest's stdin
    once, when the pattern first appears (e.g. the shell prompt -> ``"exit\\n"``).
    """
    if timeout <= 0:
        raise ConfigError(f"timeout must be positive, not {timeout}")
    def compiled(p: str | re.Pattern) -> tuple[str, re.Pattern]:
        return (p.pattern, p) if isinstance(p, re.Pattern) else (p, re.compile(re.escape(p)))

    pats = dict(compiled(p) for p in [*marks, *(replies or {}), *([stop_at] if stop_at else [])])
    pending_replies = {compiled(k)[0]: v for k, v in (replies or {}).items()}
    found: dict[str, float] = {}
    chunks: list[bytes] = []
    full_env = dict(os.environ)
    full_env.update(env or {})
    start = time.monotonic()
    proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=full_env, start_new_session=True)
    assert proc.stdout is not None and proc.stdin is not None
    os.set_blocking(proc.stdout.fileno(), False)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    timed_out = False
    stop = False
    text = ""
    try:
        while True:
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                timed_out = True
                break
            events = sel.select(min(left, 0.5))
            eof = False
            for _key, _ in events:
                try:
                    data = os.read(proc.stdout.fileno(), 65536)
                except BlockingIOError:
                    continue
                if not data:
                    eof = True
                    continue
                chunks.append(data)
            if events:
                now = time.monotonic() - start
                text = b"".join(chunks).decode(errors="replace")
                for name, rx in pats.items():
                    if name not in found and rx.search(text):
                        found[name] = now
                        if name in pending_replies:
                            try:
                                proc.stdin.write(pending_replies.pop(name).encode())
                                proc.stdin.flush()
                            except (BrokenPipeError, OSError):
                                pass
                        if stop_at is not None and name == compiled(stop_at)[0]:
                            stop = True
            if stop or eof or (not events and proc.poll() is not None):
                break
    finally:
        sel.close()
        if proc.poll() is None:
            proc.kill()
        rc = proc.wait()
        elapsed = time.monotonic() - start
        for s in (proc.stdin, proc.stdout):
            try:
                s.close()
            except OSError:
                pass
    text = b"".join(chunks).decode(errors="replace")
    return ConsoleRun(output=text, seconds=elapsed, returncode=rc, timed_out=timed_out, marks=found)


def firmware_default() -> Path:
    """Debian's OpenSBI ``fw_jump.bin`` for the generic platform (QEMU virt and virtkit's board)."""
    return Path("/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_jump.bin")


def qemu_argv(kernel: Path, initrd: Path | None, append: str, firmware: Path | None = None, smp: int = 1,
              memory: str = "256M", disks: Sequence[Path] = (), rng: bool = False) -> list[str]:
    """The ``qemu-system-riscv64 -M virt`` command line booting kernel + initrd with virtio-mmio devices."""
    require_program(QEMU, "qemu-system-misc", "qemu")
    if not isinstance(smp, int) or not 1 <= smp <= 8:
        raise ConfigError(f"smp must be 1..8, not {smp!r}")
    argv = [QEMU, "-M", "virt", "-m", memory, "-smp", str(smp), "-nographic", "-no-reboot",
            "-bios", str(firmware or firmware_default()), "-kernel", str(kernel), "-append", append]
    if initrd is not None:
        argv += ["-initrd", str(initrd)]
    for i, disk in enumerate(disks):
        argv += ["-drive", f"file={disk},format=raw,if=none,id=disk{i}",
                 "-device", f"virtio-blk-device,drive=disk{i}"]
    if rng:
        argv += ["-object", "rng-random,filename=/dev/urandom,id=rng0", "-device", "virtio-rng-device,rng=rng0"]
    return argv
