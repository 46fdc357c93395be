"""The JIT's translator process, both sides: the process itself (``python -m virtkit.engines.riscv.jitworker``:
reads region jobs on stdin, writes object code on stdout) and the engine's handle on it (:class:`WorkerProcess`).

Messages are 8-byte little-endian lengths followed by a pickle. ``("init", ctab, dtype)``, then
``("jobs", nharts, [Job, ...])``, answered by a list of ``Result | None`` in the same order (``("ping",)`` is
answered ``"pong"``: the process is ready).
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading

import numpy as np

from virtkit.engines.riscv.jitcache import translate
from virtkit.engines.riscv.jitcodegen import Job, Result

_lock = threading.Lock()


def write_msg(f, msg: object) -> None:
    """One message of the translator protocol: an 8-byte little-endian length, then a pickle."""
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(len(data).to_bytes(8, "little") + data)
    f.flush()


def read_msg(f) -> object:
    """The next message written by :func:`write_msg`; EOFError when the other side has gone."""
    head = f.read(8)
    if len(head) < 8:
        raise EOFError("the JIT translator's pipe closed")
    return pickle.loads(f.read(int.from_bytes(head, "little")))


class WorkerProcess:
    """The translator as a child process (``python -m virtkit.engines.riscv.jitworker``).

    Decoding and IR generation are Python: in a thread they would take the GIL from the vCPU
    thread's device exits. A process compiles on the other core and only object code comes back.
    """

    def __init__(self, ctab: np.ndarray) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "virtkit.engines.riscv.jitworker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lock = threading.Lock()
        self.ctab = ctab
        self.inited = False  # the table goes with the first jobs (a 512 KiB write would wait for the child)

    def exchange(self, msg: object) -> object:
        """Send ``msg`` (after the one-time table) and return the answer."""
        with self.lock:
            if not self.inited:
                write_msg(self.proc.stdin, ("init", self.ctab.tobytes(), str(self.ctab.dtype)))
                self.inited = True
            write_msg(self.proc.stdin, msg)
            return read_msg(self.proc.stdout)

    def translate(self, jobs: list[Job], nharts: int) -> list[Result | None]:
        out = self.exchange(("jobs", nharts, jobs))
        assert isinstance(out, list)
        return out

    def ping(self) -> None:
        """Wait until the process has imported everything and answers."""
        self.exchange(("ping",))

    def close(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


the_worker: WorkerProcess | None = None


def worker(ctab: np.ndarray) -> WorkerProcess:
    """The process-wide translator process (started on first use, shared by every engine)."""
    global the_worker
    with _lock:
        if the_worker is None or the_worker.proc.poll() is not None:
            the_worker = WorkerProcess(ctab)
        return the_worker


def warm_up() -> None:
    """Start the translator process and wait until it is ready (benchmarks call this with the engine load)."""
    from virtkit.engines.riscv.coresel import ctab as _ctab

    worker(_ctab()).ping()


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
