"""Recipes without building anything big: config parsing, cache atomicity and locking, initramfs layout,
the /init command-line contract helpers and the `virtkit images` CLI's errors."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from tests.helpers import require_tool
from virtkit.cli import main
from virtkit.errors import ConfigError, ImageError
from virtkit.images import RECIPES, cache, exec_append, parse_exit_status
from virtkit.images.busybox import check_static_riscv, set_options
from virtkit.images.cpio import read_cpio
from virtkit.images.initramfs import INIT_SCRIPT, build_initramfs, read_links
from virtkit.images.kernel import FRAGMENT, config_mismatches, parse_config


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VIRTKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --- kernel config -------------------------------------------------------------------------------

def test_fragment_parses_and_has_the_essentials():
    frag = parse_config(FRAGMENT.read_text())
    for opt in ("CONFIG_64BIT", "CONFIG_MMU", "CONFIG_SMP", "CONFIG_FPU", "CONFIG_VIRTIO_MMIO", "CONFIG_VIRTIO_BLK",
                "CONFIG_VIRTIO_NET", "CONFIG_SERIAL_8250_CONSOLE", "CONFIG_SERIAL_OF_PLATFORM", "CONFIG_EXT4_FS",
                "CONFIG_DEVTMPFS", "CONFIG_BLK_DEV_INITRD", "CONFIG_HW_RANDOM_VIRTIO", "CONFIG_BINFMT_SCRIPT"):
        assert frag[opt] == "y", opt
    assert 2 <= int(frag["CONFIG_NR_CPUS"]) <= 8
    assert "CONFIG_EFI" not in frag  # selected by PORTABLE; turning it off needs NONPORTABLE


def test_parse_config_syntax():
    cfg = parse_config('CONFIG_A=y\n# CONFIG_B is not set\n\n# comment\nCONFIG_C="str"\nCONFIG_D=0x10\n')
    assert cfg == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": '"str"', "CONFIG_D": "0x10"}
    assert config_mismatches({"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_X": "n"}, cfg) == []
    assert config_mismatches({"CONFIG_A": "n", "CONFIG_Z": "y"}, cfg) == ["CONFIG_A=n (got y)", "CONFIG_Z=y (got n)"]


@pytest.mark.parametrize("bad", ["CONFIG_A y", "FOO=y", "CONFIG_=y", "config_a=y", "CONFIG A=y"])
def test_parse_config_rejects_garbage_with_line_number(bad):
    with pytest.raises(ImageError, match=r"frag:2: not a Kconfig line"):
        parse_config(f"CONFIG_OK=y\n{bad}\n", "frag")


def test_busybox_config_edit():
    text = "CONFIG_A=y\n# CONFIG_STATIC is not set\nCONFIG_TC=y\n"
    out = set_options(text, ("CONFIG_STATIC", "CONFIG_NEW"), ("CONFIG_TC",))
    assert out.splitlines() == ["CONFIG_A=y", "CONFIG_STATIC=y", "# CONFIG_TC is not set", "CONFIG_NEW=y"]


def test_static_check_rejects_host_binaries(tmp_path):
    with pytest.raises(ImageError, match="not RISC-V|dynamically"):
        check_static_riscv(__import__("pathlib").Path(sys.executable).resolve())
    (tmp_path / "junk").write_bytes(b"not an elf")
    with pytest.raises(ImageError, match="not a 64-bit"):
        check_static_riscv(tmp_path / "junk")


# --- the cache -----------------------------------------------------------------------------------

def test_cache_builds_once_and_is_atomic(cache_dir):
    calls = []

    def build(ctx):
        calls.append(1)
        ctx.step("writing")
        ctx.run(["sh", "-c", "echo compiling; echo out > artifact"], cwd=ctx.out)

    key = cache.hash_inputs({"v": 1})
    entry = cache.build_entry("toy", key, {"v": 1}, build, cache.Reporter())
    assert (entry / "artifact").read_text() == "out\n"
    meta = json.loads((entry / cache.META).read_text())
    assert meta["key"] == key and meta["files"] == ["artifact"]
    assert "compiling" in (cache_dir / "images/logs" / f"toy-{key}.log").read_text()
    cache.build_entry("toy", key, {"v": 1}, build, cache.Reporter())
    assert len(calls) == 1
    cache.build_entry("toy", key, {"v": 1}, build, cache.Reporter(), force=True)
    assert len(calls) == 2 and (entry / "artifact").exists()
    assert [p.name for p in (cache_dir / "images").iterdir() if p.name.startswith(".tmp")] == []


def test_failed_build_leaves_no_entry_and_names_the_log(cache_dir):
    def build(ctx):
        (ctx.out / "half").write_text("partial")
        ctx.run(["sh", "-c", "echo 'error: no such header'; exit 3"])

    with pytest.raises(ImageError, match=r"toy: .*failed \(exit 3\).*no such header"):
        cache.build_entry("toy", "k1", {}, build, cache.Reporter())
    assert not cache.is_built("toy", "k1")
    assert sorted(p.name for p in (cache_dir / "images").iterdir() if not p.name.startswith(".lock")) == ["logs"]


def test_concurrent_builds_build_once(cache_dir):
    calls = []

    def build(ctx):
        calls.append(1)
        ctx.run(["sh", "-c", "sleep 0.3; echo x > a"], cwd=ctx.out)

    threads = [threading.Thread(target=cache.build_entry, args=("toy", "k2", {}, build, cache.Reporter()))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and cache.is_built("toy", "k2")


def test_missing_program_names_the_debian_package():
    with pytest.raises(cache.MissingToolError, match="install Debian package frob-utils"):
        cache.require_program("no-such-program-xyz", "frob-utils", "kernel")
    with pytest.raises(cache.MissingToolError, match="not installed"):
        cache.deb_version("no-such-package-xyz", "kernel")


def test_keys_change_with_inputs_and_dependencies(monkeypatch):
    require_tool("riscv64-linux-gnu-gcc", "dpkg-query")
    from virtkit import images

    try:
        before = images.recipe_key("initramfs")
    except cache.MissingToolError as err:
        pytest.skip(str(err))
    monkeypatch.setattr("virtkit.images.busybox.RECIPE_VERSION", 999)
    assert images.recipe_key("initramfs") != before  # a busybox change rebuilds the initramfs


# --- initramfs -----------------------------------------------------------------------------------

def test_initramfs_layout():
    links = read_links("/bin/sh\n/bin/ls\n/sbin/poweroff\n/usr/bin/base64\n\n/usr/sbin/chroot\n")
    image = build_initramfs(b"\x7fELF-busybox", links, INIT_SCRIPT.read_bytes())
    members = {m.name: m for m in read_cpio(image)}
    assert members["init"].kind == "file" and members["init"].mode & 0o777 == 0o755
    assert members["init"].data.startswith(b"#!/bin/sh\n")
    assert members["bin/busybox"].data == b"\x7fELF-busybox"
    for link in ("bin/sh", "sbin/poweroff", "usr/bin/base64", "usr/sbin/chroot"):
        assert members[link].kind == "symlink" and members[link].data == b"/bin/busybox"
    assert members["dev/console"].kind == "char" and (members["dev/console"].rdevmajor,
                                                      members["dev/console"].rdevminor) == (5, 1)
    for d in ("proc", "sys", "dev", "tmp", "mnt", "root"):
        assert members[d].kind == "dir"


def test_initramfs_extracts_with_gnu_cpio(tmp_path):
    require_tool("cpio")
    image = build_initramfs(b"bb", read_links("/bin/sh\n"), INIT_SCRIPT.read_bytes())
    import gzip

    subprocess.run(["cpio", "-i", "-d", "--quiet", "--no-absolute-filenames"], input=gzip.decompress(image),
                   cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "init").read_bytes() == INIT_SCRIPT.read_bytes()
    assert (tmp_path / "bin/sh").is_symlink()


def test_init_script_is_valid_sh():
    require_tool("sh")
    subprocess.run(["sh", "-n", str(INIT_SCRIPT)], check=True)


@pytest.mark.parametrize("bad", ["sh", "/bin/../../etc/x", "bin/sh", "/a/\0b"])
def test_bad_links_file(bad):
    with pytest.raises(ImageError, match="busybox.links:2"):
        read_links(f"/bin/ls\n{bad}\n")


def test_exec_contract_helpers():
    word = exec_append("echo 'a b' | wc -c")
    assert word.startswith("virtkit.exec=") and " " not in word
    import base64

    assert base64.b64decode(word.split("=", 1)[1]).decode() == "echo 'a b' | wc -c"
    assert parse_exit_status("boot...\nhello\nvirtkit-exit-status: 0\n") == 0
    assert parse_exit_status("outputvirtkit-exit-status: 42\r\n") == 42
    assert parse_exit_status("kernel panic") is None
    for bad in ("", "   ", None):
        with pytest.raises(ConfigError):
            exec_append(bad)


# --- CLI -----------------------------------------------------------------------------------------

def test_cli_list_json(cache_dir, capsys):
    assert main(["images", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(RECIPES) | {"firmware"}
    assert all(not r["built"] for r in rows if r["name"] != "firmware")


def test_cli_list_table(cache_dir, capsys):
    assert main(["images", "list"]) == 0
    out = capsys.readouterr().out
    assert "kernel" in out and "initramfs" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["images", "path", "nonsense"], "unknown image 'nonsense'"),
        (["images", "build", "nonsense"], "unknown image 'nonsense'"),
        (["images", "path", "kernel"], "not built"),
    ],
)
def test_cli_errors_are_one_line(cache_dir, argv, message, capsys):
    try:
        rc = main(argv)
    except ImageError:
        pytest.fail("ImageError escaped the CLI")
    assert rc == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_no_action_prints_help():
    p = subprocess.run([sys.executable, "-m", "virtkit.cli", "images"], capture_output=True, text=True)
    assert p.returncode == 2 and "build" in p.stdout
