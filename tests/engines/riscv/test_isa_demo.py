"""The demo guest (virtkit.images.demo): builds with the cross compiler, is cached, runs and exits 0."""

from __future__ import annotations

import pytest

from tests.helpers import isa_harness as harness  # noqa: E402
from tests.helpers import require_tool
from virtkit.errors import ImageError  # noqa: E402
from virtkit.images import demo  # noqa: E402


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Point the virtkit cache at a temporary directory."""
    monkeypatch.setenv("VIRTKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_build_demo_caches_in_demo_dir(cache):
    require_tool(demo.CROSS_CC)
    elf = demo.build_demo()
    assert elf == cache / "demo" / "hello.elf"
    assert elf.read_bytes()[:4] == b"\x7fELF"
    mtime = elf.stat().st_mtime_ns
    assert demo.build_demo().stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_rebuilds_when_source_changes(cache, tmp_path):
    require_tool(demo.CROSS_CC)
    src = tmp_path / "p.c"
    src.write_text('#include "baremetal.h"\nDEFINE_TRAP_REPORT\nint main(void) { return 3; }\n')
    out = cache / "p.elf"
    first = demo.build_baremetal([src], out).read_bytes()
    src.write_text('#include "baremetal.h"\nDEFINE_TRAP_REPORT\nint main(void) { put_str("x"); return 4; }\n')
    assert demo.build_baremetal([src], out).read_bytes() != first


def test_missing_compiler_is_a_clear_image_error(cache, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ImageError, match="gcc-riscv64-linux-gnu"):
        demo.build_demo()


def test_compile_error_is_one_line_image_error(cache, tmp_path):
    require_tool(demo.CROSS_CC)
    src = tmp_path / "bad.c"
    src.write_text("int main(void) { return }\n")
    with pytest.raises(ImageError) as err:
        demo.build_baremetal([src], cache / "bad.elf")
    assert "bad.c" in str(err.value) and "\n" not in str(err.value)
    assert not (cache / "bad.elf").exists()


def test_missing_source_is_image_error(cache, tmp_path):
    require_tool(demo.CROSS_CC)
    with pytest.raises(ImageError, match="does not exist"):
        demo.build_baremetal([tmp_path / "nope.c"], cache / "nope.elf")


def test_demo_runs_on_qemu(cache):
    require_tool(demo.CROSS_CC, harness.QEMU)
    result = harness.run_qemu(demo.build_demo(), timeout=60)
    assert result.code == 0, harness.describe(result)
    assert "Hello from virtkit" in result.console
    assert "2 3 5 7 11 13" in result.console
    assert "RV64" in result.console


def test_demo_runs_on_virtkit(cache):
    require_tool(demo.CROSS_CC)
    missing = harness.virtkit_missing()
    if missing:
        pytest.skip(missing)
    result = harness.run_virtkit(demo.build_demo())
    assert result.code == 0, harness.describe(result)
    assert "Hello from virtkit" in result.console
    assert "2 3 5 7 11 13" in result.console
