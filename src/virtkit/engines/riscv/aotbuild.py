"""The AOT core's build subprocess (``python -m virtkit.engines.riscv.aotbuild BUILD_DIR``): compile the core
functions the engine calls, with the engine's own sample arguments, into an extension module with ``numba.pycc``.

Kept apart from :mod:`virtkit.engines.riscv.aot` (which only checks and loads the result) so that loading the
core never imports the engine.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

from virtkit.engines.riscv.aot import META, MODULE_NAME, describe, module_file


def build_into(out: Path) -> None:
    """(build subprocess) Compile the exported core functions into ``out``; write the signatures to meta.json."""
    os.environ["VIRTKIT_CORE"] = "jit"  # the engine's sample arguments come from a JIT-core engine
    from virtkit.engines.riscv import engine

    calls = engine.aot_exports()
    import numba
    from numba.pycc import CC, compiler

    class _NoGilFlags(compiler.Flags):
        """pycc's wrappers hold the GIL by default; the core runs in a vCPU thread and must release it."""

        def __init__(self, *a, **kw) -> None:
            super().__init__(*a, **kw)
            self.release_gil = True

    compiler.Flags = _NoGilFlags
    cc = CC(MODULE_NAME, source_module="virtkit.engines.riscv.aot")
    cc.output_dir = str(out)
    cc.output_file = module_file(out).name
    cc.target_cpu = "host"
    cc.verbose = False
    exports = {}
    for name, (func, args) in calls.items():
        sig = tuple(numba.typeof(a) for a in args)
        cc.export(name, sig)(func.py_func)
        exports[name] = describe(tuple(args))
        print(f"export {name}{sig}", flush=True)
    t = time.monotonic()
    cc.compile()
    print(f"compiled in {time.monotonic() - t:.1f} s", flush=True)
    (out / META).write_text(json.dumps({"exports": exports, "numba": numba.__version__,
                                        "python": platform.python_version()}, indent=1))


if __name__ == "__main__":
    build_into(Path(sys.argv[1]))
