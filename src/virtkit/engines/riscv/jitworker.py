"""The JIT's translator process: reads region jobs on stdin, writes object code on stdout.

Started by :class:`virtkit.engines.riscv.jit.Jit` (``python -m virtkit.engines.riscv.jitworker``);
messages are 8-byte little-endian lengths followed by a pickle. ``("init", ctab, dtype)``,
then ``("jobs", nharts, [Job, ...])``, answered by a list of ``Result | None`` in the same order
(``("ping",)`` is answered ``"pong"``: the process is ready).
"""

from __future__ import annotations

import sys

import numpy as np

from virtkit.engines.riscv.jit import read_msg, translate, write_msg


def main() -> int:
    """Serve translation jobs until stdin closes."""
    inp = sys.stdin.buffer
    out = sys.stdout.buffer
    try:
        msg = read_msg(inp)
        if not (isinstance(msg, tuple) and msg[0] == "init"):
            return 2
        ctab = np.frombuffer(msg[1], dtype=np.dtype(msg[2]))
        while True:
            msg = read_msg(inp)
            if msg[0] == "ping":
                write_msg(out, "pong")
                continue
            results = []
            nharts = int(msg[1])
            for job in msg[2]:
                try:
                    results.append(translate(job, ctab, nharts))
                except Exception as err:  # a bad region is not translated; the interpreter runs it
                    print(f"virtkit: JIT: region at {job.entry:#x} not translated: {err!r}", file=sys.stderr)
                    results.append(None)
            write_msg(out, results)
    except EOFError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
