"""The FDT writer, checked by decompiling its output with dtc (device-tree-compiler)."""

import struct
import subprocess

import pytest

from tests.helpers import require_tool
from virtkit.errors import ConfigError
from virtkit.fdt import FDT_MAGIC, Fdt


def dtc_decompile(blob: bytes, tmp_path) -> str:
    require_tool("dtc")
    p = tmp_path / "t.dtb"
    p.write_bytes(blob)
    r = subprocess.run(["dtc", "-I", "dtb", "-O", "dts", str(p)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_fdt_properties_roundtrip_through_dtc(tmp_path):
    f = Fdt()
    f.root.set_u32("#address-cells", 2).set_u32("#size-cells", 2).set_str("compatible", "riscv-virtio")
    intc = f.node("/cpus/cpu@0/interrupt-controller")
    intc.set_empty("interrupt-controller").set_strings("compatible", ["riscv,cpu-intc"])
    ph = f.phandle(intc)
    assert f.phandle(intc) == ph  # stable
    f.node("/soc/plic@c000000").set_u32("interrupts-extended", ph, 11, ph, 9)
    f.node("/memory@80000000").set_str("device_type", "memory").set_reg("reg", (0x8000_0000, 0x1000_0000))
    f.node("/chosen").set_u64("linux,initrd-start", 0x8800_0000).set_strings("compat", ["a", "b"])
    f.node("/soc/serial@10000000").set_bytes("raw", b"\x01\x02\x03")
    f.reserve(0x8000_0000, 0x20000)
    blob = f.to_bytes()
    assert struct.unpack(">I", blob[:4])[0] == FDT_MAGIC
    assert struct.unpack(">I", blob[4:8])[0] == len(blob)
    dts = dtc_decompile(blob, tmp_path)
    assert "/memreserve/\t0x0000000080000000 0x0000000000020000;" in dts
    assert '#address-cells = <0x02>;' in dts
    assert 'compatible = "riscv-virtio";' in dts
    assert "interrupt-controller;" in dts
    assert f"interrupts-extended = <{ph:#04x} 0x0b {ph:#04x} 0x09>;" in dts
    assert "reg = <0x00 0x80000000 0x00 0x10000000>;" in dts
    assert "linux,initrd-start = <0x00 0x88000000>;" in dts
    assert 'compat = "a\\0b";' in dts
    assert "raw = [01 02 03];" in dts
    assert "cpu@0 {" in dts and "plic@c000000 {" in dts


def test_fdt_dtc_reencodes_identically(tmp_path):
    """dtc turning our blob into dts and back gives the same tree (so the layout is canonical)."""
    f = Fdt()
    f.node("/a@1").set_u32("x", 1, 2, 3).set_str("s", "hello")
    f.node("/a@1/b").set_empty("flag")
    blob = f.to_bytes()
    dts = dtc_decompile(blob, tmp_path)
    (tmp_path / "t.dts").write_text(dts)
    r = subprocess.run(["dtc", "-I", "dts", "-O", "dtb", str(tmp_path / "t.dts")], capture_output=True)
    assert r.returncode == 0
    assert dtc_decompile(r.stdout, tmp_path) == dts


@pytest.mark.parametrize("bad", [
    lambda f: f.node("relative/path"),
    lambda f: f.root.set_u32("x", -1),
    lambda f: f.root.set_u32("x", 1 << 32),
    lambda f: f.root.set_u64("x", 1 << 64),
    lambda f: f.root.set_str("x", "nul\0inside"),
    lambda f: f.root.set_str("", "noname"),
    lambda f: f.root.set_reg("reg", (1 << 40, 1), address_cells=1, size_cells=1),
    lambda f: f.reserve(0, 0),
])
def test_fdt_bad_input_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        bad(Fdt())
