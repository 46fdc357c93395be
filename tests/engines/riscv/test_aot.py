"""The ahead-of-time compiled core (engines/riscv/aot.py): cache checks, fallback, CLI, and (slow) a real build
that runs guest programs with the same results and instruction counts as the Numba JIT core."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import isa_harness as harness  # noqa: E402
from tests.helpers import require_tool
from virtkit.engines.riscv import aot  # noqa: E402


def virtkit(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the virtkit CLI in a fresh process (start-up and core selection happen per process)."""
    return subprocess.run([sys.executable, "-m", "virtkit.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.fixture
def aot_cache(tmp_path, monkeypatch) -> Path:
    """An empty AOT cache root for this test."""
    root = tmp_path / "aot"
    monkeypatch.setenv("VIRTKIT_AOT_CACHE", str(root))
    monkeypatch.delenv("VIRTKIT_CORE", raising=False)
    return root


def fake_build(so_bytes: bytes, **meta_overrides) -> Path:
    """Put a module file and a build record where the current key's AOT core would be."""
    d = aot.aot_dir()
    d.mkdir(parents=True)
    so = aot.module_file(d)
    so.write_bytes(so_bytes)
    meta = {"key": d.name, "size": len(so_bytes), "sha256": hashlib.sha256(so_bytes).hexdigest(),
            "exports": {"run_harts": "(int64)"}}
    meta.update(meta_overrides)
    (d / aot.META).write_text(json.dumps(meta))
    return so


# ---- fast: key, descriptions, stale and corrupt modules -------------------------------------

def test_describe_tells_apart_what_the_compiled_signature_sees():
    a = np.zeros((2, 3), dtype=np.int64)
    assert aot.describe(a) == "array(<i8,2,C,rw)"
    assert aot.describe(a.T) == "array(<i8,2,F,rw)"
    assert aot.describe(a[:, ::2]) == "array(<i8,2,A,rw)"
    assert aot.describe(a.view(np.uint64)) != aot.describe(a)
    assert aot.describe((1, a[0], True)) == "(int64,array(<i8,1,C,rw),bool)"


def test_key_is_per_root_and_stable(aot_cache):
    assert aot.aot_dir() == aot_cache / aot.aot_key()
    assert aot.aot_key() == aot.aot_key()
    assert len(aot.aot_key()) == 16


def test_missing_core_is_reported_not_loaded(aot_cache):
    mod, reason = aot.load()
    assert mod is None and "no AOT core built" in reason
    st = aot.status()
    assert st["core"] == "jit" and not st["aot_ready"] and st["dir"] == str(aot.aot_dir())


def test_truncated_module_is_ignored(aot_cache):
    so = fake_build(b"\x7fELF" + b"\0" * 4000)
    so.write_bytes(so.read_bytes()[:100])  # truncated after the build record was written
    mod, reason = aot.load()
    assert mod is None and "damaged" in reason


def test_module_built_for_other_sources_is_ignored(aot_cache):
    fake_build(b"\x7fELF" + b"\0" * 64, key="0123456789abcdef")
    mod, reason = aot.load()
    assert mod is None and "other sources" in reason


def test_unloadable_module_is_ignored_with_the_loader_error(aot_cache):
    fake_build(b"this is not a shared object")
    mod, reason = aot.load()
    assert mod is None and "cannot load the AOT core" in reason


def test_signature_mismatch_is_ignored(aot_cache):
    fake_build(b"x")
    assert "run_harts() was built for (int64)" in aot.check({"run_harts": "(int64,int64)"})
    assert "lacks csr_read()" in aot.check({"csr_read": "(int64)"})


def test_build_into_unusable_root_is_one_line_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("VIRTKIT_AOT_CACHE", str(blocker / "aot"))
    with pytest.raises(aot.EngineBuildError, match="cannot build the AOT core"):
        aot.build()


def test_compiled_sources_follow_the_imports_of_njit_modules(tmp_path, monkeypatch):
    import virtkit.engines.riscv.corecache as pkg

    (tmp_path / "a.py").write_text("from virtkit.engines.riscv.b import (  # noqa\n    X,\n)\n"
                                   "from virtkit.engines.riscv import c, d\n\n@njit\ndef f():\n    pass\n")
    (tmp_path / "b.py").write_text("from virtkit.engines.riscv.e import Y\n")
    for name in ("c", "d", "e", "unrelated"):
        (tmp_path / f"{name}.py").write_text("Z = 1  # mentions @njit only in a comment\n")
    monkeypatch.setattr(pkg, "HERE", tmp_path)
    assert [p.name for p in pkg.compiled_sources()] == ["a.py", "b.py", "c.py", "d.py", "e.py"]


def test_real_compiled_sources_include_the_constants():
    import virtkit.engines.riscv.corecache as pkg

    names = [p.name for p in pkg.compiled_sources()]
    assert {"core.py", "fpu.py", "consts.py"} <= set(names) and "aot.py" not in names


def test_old_builds_are_pruned(tmp_path):
    for i in range(6):
        d = tmp_path / f"{i:016x}"
        d.mkdir()
        os.utime(d, (1000 + i, 1000 + i))
        (tmp_path / f"build-{d.name}.log").write_text("log")
    aot._prune(tmp_path, keep=f"{0:016x}", n=3)
    left = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert left == [f"{i:016x}" for i in (0, 4, 5)]  # the current build and the 2 newest others
    assert not (tmp_path / f"build-{1:016x}.log").exists()


# ---- CLI -------------------------------------------------------------------------------------

def test_engine_status_json_without_a_build(aot_cache):
    p = virtkit("engine", "status", "--json")
    assert p.returncode == 0, p.stderr
    st = json.loads(p.stdout)
    assert st["core"] == "jit" and st["aot_ready"] is False and st["key"] == aot.aot_key()
    assert st["dir"] == str(aot_cache / st["key"])


def test_engine_status_human(aot_cache):
    p = virtkit("engine", "status")
    assert p.returncode == 0 and "core: jit" in p.stdout and "no AOT core built" in p.stdout


@pytest.mark.parametrize("args,match", [
    (["engine", "build", "--bogus"], "unrecognized arguments"),
    (["engine", "frobnicate"], "invalid choice"),
])
def test_engine_cli_malformed(aot_cache, args, match):
    p = virtkit(*args)
    assert p.returncode == 2 and match in p.stderr and "Traceback" not in p.stderr


def test_engine_status_into_a_closed_pipe_has_no_traceback(aot_cache):
    """`virtkit engine status | head -1`: the reader may be gone before virtkit writes."""
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", "virtkit.cli", "engine", "status"], stdout=w, stderr=subprocess.PIPE,
                           text=True, timeout=120)
    finally:
        os.close(w)
    assert p.returncode == 141 and p.stderr == ""


def test_engine_build_unusable_root_is_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    p = virtkit("engine", "build", env={"VIRTKIT_AOT_CACHE": str(blocker / "aot")})
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert [ln for ln in p.stderr.splitlines() if ln.startswith("virtkit: error:")] == [
        p.stderr.strip().splitlines()[-1]]


@pytest.mark.parametrize("value,match", [("bogus", "VIRTKIT_CORE must be auto, aot or jit"),
                                         ("aot", "VIRTKIT_CORE=aot: no AOT core built")])
def test_bad_core_choice_is_one_line_error(aot_cache, tmp_path, value, match):
    require_tool(harness.CROSS_CC)
    from virtkit.images import demo

    p = virtkit("run", "--bios", "none", "--kernel", str(demo.build_demo()),
                env={"VIRTKIT_CORE": value, "VIRTKIT_AOT_CACHE": str(aot_cache)})
    assert p.returncode == 1 and match in p.stderr and "Traceback" not in p.stderr


def test_corrupt_core_falls_back_to_numba_with_one_note(aot_cache):
    """A damaged AOT module is ignored: the run uses the Numba core, says so once and passes."""
    require_tool(harness.CROSS_CC)
    from virtkit.images import demo

    elf = demo.build_demo()
    fake_build(b"\x7fELF" + b"\0" * 64, size=1)
    p = virtkit("run", "--bios", "none", "--kernel", str(elf), "--json", env={"VIRTKIT_AOT_CACHE": str(aot_cache)})
    assert p.returncode == 0, p.stderr
    notes = [ln for ln in p.stderr.splitlines() if ln.startswith("virtkit: note:")]
    assert len(notes) == 1 and "damaged" in notes[0] and "virtkit engine build" in notes[0]
    assert json.loads(p.stdout)["result"] == "PASS"


# ---- slow: a real AOT build, run side by side with the JIT core ------------------------------

@pytest.fixture(scope="session")
def built_aot(tmp_path_factory) -> Path:
    """Build the AOT core once per session into a temporary cache (minutes)."""
    root = tmp_path_factory.mktemp("aot-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VIRTKIT_AOT_CACHE", str(root))
        st = aot.build()
        assert st["built"] and st["aot_ready"], st
        again = aot.build()  # cached: not rebuilt
        assert not again["built"] and again["aot_ready"]
    return root


PROBE = """
import json, sys
from virtkit.engines.riscv import engine
from virtkit.engines.riscv.baremetal import run_elf
r = run_elf(sys.argv[1], deterministic=True, nharts=int(sys.argv[2]), max_instructions=200_000_000)
print(json.dumps({"code": r.exit_code, "reason": r.reason, "instructions": r.instructions, "traps": r.stats["traps"],
                  "output": r.output.decode(errors="replace"), "core": engine.selected_core(),
                  "numba_imported": "numba" in sys.modules}))
"""


def probe(elf: Path, core: str, root: Path, harts: int = 1) -> dict:
    """Run ``elf`` bare-metal (deterministic time) in a fresh process forced onto ``core``."""
    p = subprocess.run([sys.executable, "-c", PROBE, str(elf), str(harts)], capture_output=True, text=True,
                       env={**os.environ, "VIRTKIT_CORE": core, "VIRTKIT_AOT_CACHE": str(root)}, timeout=900)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("program", ["demo", "rv64ui_arith.S", "rv64uf_arith1.S", "vm_sv39.S", "priv_irq.S",
                                     "smp_amo.S"])
def test_aot_core_matches_jit_core(built_aot, program):
    require_tool(harness.CROSS_CC)
    if program == "demo":
        from virtkit.images import demo

        elf = demo.build_demo()
    else:
        elf = harness.build(program)
    harts = harness.harts_for(program)
    fast = probe(elf, "aot", built_aot, harts)
    ref = probe(elf, "jit", built_aot, harts)
    assert fast["core"] == "aot" and not fast["numba_imported"]
    assert ref["core"] == "jit"
    assert fast["code"] == 0
    for k in ("code", "reason", "instructions", "traps", "output"):
        assert fast[k] == ref[k], k


@pytest.mark.slow
def test_engine_status_and_run_stats_after_build(built_aot):
    require_tool(harness.CROSS_CC)
    from virtkit.images import demo

    env = {"VIRTKIT_AOT_CACHE": str(built_aot)}
    st = json.loads(virtkit("engine", "status", "--json", env=env).stdout)
    assert st["core"] == "aot" and st["aot_ready"] and "run_harts" in st["exports"]
    p = virtkit("run", "--bios", "none", "--kernel", str(demo.build_demo()), "--stats", env=env)
    assert p.returncode == 0, p.stderr
    assert "virtkit: note:" not in p.stderr
    assert "aot" in p.stderr  # the stats table names the core


GIL_PROBE = """
import sys, threading
from virtkit.engines.riscv.consts import HS_INSTRET
from virtkit.engines.riscv.engine import RiscvEngine, selected_core
from virtkit.machine.memory import GuestMemory
mem = GuestMemory(1 << 16, 0x8000_0000)
mem.write(0x8000_0000, (0x6f).to_bytes(4, "little"))  # j .  (forever)
eng = RiscvEngine(mem)
th = threading.Thread(target=eng.run, args=(10**12,))
th.start()
while eng.hs[0, HS_INSTRET] == 0:  # updated every slice; Python runs meanwhile only if run() released the GIL
    pass
eng.request_exit()
th.join()
print(selected_core(), eng.stats()["instructions"])
"""


@pytest.mark.slow
def test_aot_core_releases_the_gil(built_aot):
    """The vCPU thread runs the AOT core without the GIL: another thread watches a guest that loops forever
    retire instructions and stops it (with the GIL held, the watcher never runs: the subprocess times out)."""
    p = subprocess.run([sys.executable, "-c", GIL_PROBE], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "VIRTKIT_CORE": "aot", "VIRTKIT_AOT_CACHE": str(built_aot)})
    assert p.returncode == 0, p.stderr
    core, n = p.stdout.split()
    assert core == "aot" and 0 < int(n) < 10**12


@pytest.mark.slow
def test_core_function_missing_from_the_aot_core_comes_from_numba_with_a_note(built_aot):
    code = ("from virtkit.engines.riscv import engine\n"
            "from virtkit.machine.memory import GuestMemory\n"
            "engine.RiscvEngine(GuestMemory(1 << 16, 0x8000_0000))\n"
            "print(engine.selected_core(), engine.core.srl(-1, 60))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                       env={**os.environ, "VIRTKIT_CORE": "aot", "VIRTKIT_AOT_CACHE": str(built_aot)})
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["aot", "15"]
    assert "core.srl is not in the AOT core" in p.stderr
