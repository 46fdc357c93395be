"""SIGKILL at a moment hypothesis chooses, during disk convert, resize, rebase, commit and volume convert: the source
is intact and the destination is absent, complete, or (for in-place changes) consistent for ``qemu-img check``
(leaked clusters at most), and reads what it read before."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import require_tool

MiB = 1 << 20
SETTINGS = settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module", autouse=True)
def _tools():
    require_tool("qemu-img", "qemu-io")


def timed_kill(args: list[str], when: float, env: dict | None = None) -> int:
    """Run ``virtkit ARGS`` and SIGKILL it ``when`` seconds in (if it is still running); its return code."""
    p = subprocess.Popen([sys.executable, "-m", "virtkit.cli", *args], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=env)
    try:
        p.wait(timeout=when)
    except subprocess.TimeoutExpired:
        p.kill()
    p.wait()
    return p.returncode


def duration(args: list[str], env: dict | None = None) -> float:
    t = time.monotonic()
    subprocess.run([sys.executable, "-m", "virtkit.cli", *args], check=True, capture_output=True, env=env)
    return time.monotonic() - t


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def view(img, tmp_path, name="view.raw") -> str:
    """The hash of what a guest reads from ``img`` (flattened by qemu-img, which must be able to open it)."""
    out = tmp_path / name
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(img), str(out)], check=True, capture_output=True)
    h = sha(out)
    out.unlink()
    return h


def check_ok(img) -> None:
    p = subprocess.run(["qemu-img", "check", str(img)], capture_output=True, text=True)
    assert p.returncode in (0, 3), p.stdout + p.stderr  # clean, or leaked clusters only (never corrupt)


@pytest.fixture(scope="module")
def big_raw(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    src = d / "src.raw"
    with open(src, "wb") as f:
        for i in range(48):
            f.write(os.urandom(MiB) if i % 3 else bytes(MiB))
    return src


@given(frac=st.floats(0.0, 1.2))
@SETTINGS
def test_convert_killed(big_raw, tmp_path_factory, frac):
    tmp = tmp_path_factory.mktemp("conv")
    before = sha(big_raw)
    for fmt in ("qcow2", "raw"):
        dst = tmp / f"out.{fmt}"
        full = duration(["disk", "convert", "-q", "-f", "raw", "-O", fmt, str(big_raw), str(tmp / f"t.{fmt}")])
        timed_kill(["disk", "convert", "-q", "-f", "raw", "-O", fmt, str(big_raw), str(dst)], frac * full)
        assert sha(big_raw) == before
        if dst.exists():  # renamed into place only when complete
            if fmt == "qcow2":
                check_ok(dst)
            assert view(dst, tmp) == before
        leftovers = list(tmp.glob(f".out.{fmt}.virtkit-*.tmp"))
        for t in leftovers:  # what a killed convert leaves is its own temporary file, never the destination
            t.unlink()


@given(frac=st.floats(0.0, 1.2))
@SETTINGS
def test_resize_killed(tmp_path_factory, frac):
    tmp = tmp_path_factory.mktemp("resize")
    img = tmp / "img.qcow2"
    subprocess.run([sys.executable, "-m", "virtkit.cli", "disk", "create", "--cluster-size", "512", str(img), "2M"],
                   check=True, capture_output=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", str(img)], check=True, capture_output=True)
    before = view(img, tmp)
    probe = tmp / "probe.qcow2"
    shutil.copy(img, probe)
    full = duration(["disk", "resize", str(probe), "+2G"])
    timed_kill(["disk", "resize", str(img), "+2G"], frac * full)
    check_ok(img)
    size = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(img)], capture_output=True,
                                     text=True, check=True).stdout)["virtual-size"]
    assert size in (2 * MiB, 2 * MiB + (2 << 30))
    if size != 2 * MiB:  # grown: the old part reads as before (compared at the old size)
        subprocess.run(["qemu-img", "resize", "--shrink", str(img), "2M"], check=True, capture_output=True)
    assert view(img, tmp) == before


@pytest.fixture(scope="module")
def chain_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("chain")
    base, top, other = d / "base.qcow2", d / "top.qcow2", d / "other.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(base), "64M"], check=True, capture_output=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 40M", str(base)], check=True, capture_output=True)
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", str(top)], check=True,
                   capture_output=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x22 8M 24M", "-c", "write -z 36M 1M", str(top)],
                   check=True, capture_output=True)
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(other), "64M"], check=True, capture_output=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x33 0 20M", str(other)], check=True,
                   capture_output=True)
    return d


def copy_chain(chain_dir, tmp):
    for n in ("base.qcow2", "top.qcow2", "other.qcow2"):
        shutil.copy(chain_dir / n, tmp / n)
    return tmp / "base.qcow2", tmp / "top.qcow2", tmp / "other.qcow2"


@given(frac=st.floats(0.0, 1.2))
@SETTINGS
def test_rebase_killed(chain_dir, tmp_path_factory, frac):
    tmp = tmp_path_factory.mktemp("rebase")
    probe = tmp_path_factory.mktemp("rebase-probe")
    _, ptop, pother = copy_chain(chain_dir, probe)
    full = duration(["disk", "rebase", "-b", str(pother), "-F", "qcow2", str(ptop)])
    base, top, other = copy_chain(chain_dir, tmp)
    before, other_before = view(top, tmp), sha(other)
    timed_kill(["disk", "rebase", "-b", str(other), "-F", "qcow2", str(top)], frac * full)
    check_ok(top)
    assert view(top, tmp) == before  # old backing or new, the guest reads the same
    assert sha(other) == other_before


@given(frac=st.floats(0.0, 1.2))
@SETTINGS
def test_commit_killed(chain_dir, tmp_path_factory, frac):
    tmp = tmp_path_factory.mktemp("commit")
    probe = tmp_path_factory.mktemp("commit-probe")
    _, ptop, _ = copy_chain(chain_dir, probe)
    full = duration(["disk", "commit", str(ptop)])
    base, top, _ = copy_chain(chain_dir, tmp)
    before = view(top, tmp)
    timed_kill(["disk", "commit", str(top)], frac * full)
    check_ok(top)
    check_ok(base)
    assert view(top, tmp) == before  # the overlay is emptied only after the base has everything


@given(frac=st.floats(0.0, 1.2))
@SETTINGS
def test_volume_convert_killed_and_resumed(tmp_path_factory, frac):
    tmp = tmp_path_factory.mktemp("vconv")
    env = dict(os.environ, VIRTKIT_POOLS_DIR=str(tmp / "pools"))
    devs = []
    for i in range(3):
        p = tmp / f"d{i}.img"
        with open(p, "wb") as f:
            f.truncate(80 * MiB)
        devs.append(str(p))
    subprocess.run([sys.executable, "-m", "virtkit.cli", "pool", "create", "tank", *devs, "--extent-size", "1M"],
                   check=True, capture_output=True, env=env)
    subprocess.run([sys.executable, "-m", "virtkit.cli", "volume", "create", "tank/v", "--size", "48M"],
                   check=True, capture_output=True, env=env)
    data = os.urandom(48 * MiB)
    code = ("import sys; from virtkit.storage import open_disk; b = open_disk('tank/v'); "
            "b.write(0, sys.stdin.buffer.read()); b.close()")
    subprocess.run([sys.executable, "-c", code], input=data, check=True, env=env)
    subprocess.run([sys.executable, "-m", "virtkit.cli", "volume", "snapshot", "tank/v", "probe", "--writable"],
                   check=True, capture_output=True, env=env)
    full = duration(["volume", "convert", "-q", "tank/probe", "--layout", "mirror"], env)
    timed_kill(["volume", "convert", "-q", "tank/v", "--layout", "mirror"], frac * full, env)
    read = ("import sys; from virtkit.storage import open_disk; b = open_disk('tank/v', read_only=True); "
            "sys.stdout.buffer.write(b.read(0, b.size)); b.close()")
    assert subprocess.run([sys.executable, "-c", read], capture_output=True, check=True, env=env).stdout == data
    subprocess.run([sys.executable, "-m", "virtkit.cli", "volume", "convert", "-q", "tank/v", "--layout", "mirror"],
                   check=True, capture_output=True, env=env)  # run again: it finishes from where it stopped
    assert subprocess.run([sys.executable, "-c", read], capture_output=True, check=True, env=env).stdout == data
    info = json.loads(subprocess.run([sys.executable, "-m", "virtkit.cli", "volume", "show", "tank/v", "--json"],
                                     capture_output=True, text=True, check=True, env=env).stdout)
    assert info["layout"] == "mirror" and info["converting_to"] is None
