"""qemu-img's verbs on virtkit disk, checked against qemu-img itself: the same operation on copies of the same
images gives images that ``qemu-img compare`` finds equal and ``qemu-img check`` finds clean; ``map``,
``measure`` and ``compare`` print what qemu-img prints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import require_tool

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _qemu_img():
    require_tool("qemu-img", "qemu-io")


def vk(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "virtkit.cli", *args], capture_output=True, text=True)
    assert "Traceback" not in p.stderr, p.stderr
    if check:
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def qi(*args, check=True):
    p = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
    if check:
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def qio(img, *cmds, fmt="qcow2"):
    args = ["qemu-io", "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    subprocess.run([*args, str(img)], check=True, capture_output=True)


def same(a, b):
    p = qi("compare", str(a), str(b), check=False)
    assert p.returncode == 0, p.stdout + p.stderr


def clean(img):
    p = qi("check", str(img), check=False)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.fixture
def chain(tmp_path):
    """base (data at 0, zeros at 128K) <- top (data at 64K, a zero cluster at 256K), both made by QEMU."""
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    qi("create", "-f", "qcow2", str(base), "4M")
    qio(base, "write -P 0x11 0 64k", "write -P 0x12 1M 300k", "write -z 128k 64k")
    qi("create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top))
    qio(top, "write -P 0x22 64k 64k", "write -z 256k 64k", "write -P 0x23 3M 4k")
    return base, top


def twin(tmp_path, *paths):
    """Copies of the images for qemu-img (in a sibling directory; backing files point at the copies)."""
    d = tmp_path / "qemu"
    d.mkdir()
    out = []
    for p in paths:
        shutil.copy(p, d / p.name)
        out.append(d / p.name)
    for p in out:
        info = json.loads(qi("info", "--output=json", "-U", str(p)).stdout)
        if info.get("backing-filename"):
            qi("rebase", "-u", "-b", str(d / os.path.basename(info["backing-filename"])), "-F", "qcow2", str(p))
    return out


def test_map_json_is_qemu_imgs(chain):
    base, top = chain
    for img in (base, top):
        assert vk("disk", "map", "--output=json", str(img)).stdout == qi("map", "--output=json", str(img)).stdout
    assert vk("disk", "map", str(top)).stdout == qi("map", str(top)).stdout


def test_measure_is_qemu_imgs(chain, tmp_path):
    base, top = chain
    for size in ("10G", "1M", "3000M"):
        assert vk("disk", "measure", "--size", size, "-O", "qcow2").stdout == \
            qi("measure", "--size", size, "-O", "qcow2").stdout
    for img in (base, top):
        ours = json.loads(vk("disk", "measure", "--output=json", "-O", "qcow2", str(img)).stdout)
        theirs = json.loads(qi("measure", "--output=json", "-O", "qcow2", str(img)).stdout)
        assert ours == theirs
    assert json.loads(vk("disk", "measure", "--json", "-O", "raw", str(top)).stdout) == \
        json.loads(qi("measure", "--output=json", "-O", "raw", str(top)).stdout)


def test_compare_exit_codes_and_messages(chain, tmp_path):
    base, top = chain
    raw = tmp_path / "top.raw"
    qi("convert", "-O", "raw", str(top), str(raw))
    for a, b in ((top, raw), (base, top), (raw, base)):
        ours, theirs = vk("disk", "compare", str(a), str(b), check=False), qi("compare", str(a), str(b), check=False)
        assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout)
    big = tmp_path / "big.raw"
    qi("create", "-f", "raw", str(big), "8M")
    ours, theirs = vk("disk", "compare", "-s", str(big), str(base), check=False), \
        qi("compare", "-s", str(big), str(base), check=False)
    want = (1, "Strict mode: Image size mismatch!\n")
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout) == want
    p = vk("disk", "compare", str(tmp_path / "missing"), str(base), check=False)
    assert p.returncode == 2 and "does not exist" in p.stderr


@pytest.mark.parametrize("change", ["+3M", "64M", "--shrink 2M", "--shrink 1536K"])
def test_resize_like_qemu_img(tmp_path, chain, change):
    base, _ = chain
    ours, = [tmp_path / "ours.qcow2"]
    shutil.copy(base, ours)
    theirs = tmp_path / "theirs.qcow2"
    shutil.copy(base, theirs)
    args = change.split()
    vk("disk", "resize", *(["--shrink"] if len(args) == 2 else []), str(ours), args[-1])
    qi("resize", *(["--shrink"] if len(args) == 2 else []), str(theirs), args[-1])
    clean(ours)
    same(ours, theirs)
    assert json.loads(qi("info", "--output=json", str(ours)).stdout)["virtual-size"] == \
        json.loads(qi("info", "--output=json", str(theirs)).stdout)["virtual-size"]
    # raw too
    r1, r2 = tmp_path / "r1.raw", tmp_path / "r2.raw"
    qi("convert", "-O", "raw", str(base), str(r1))
    shutil.copy(r1, r2)
    vk("disk", "resize", "-f", "raw", *(["--shrink"] if len(args) == 2 else []), str(r1), args[-1])
    qi("resize", "-f", "raw", *(["--shrink"] if len(args) == 2 else []), str(r2), args[-1])
    assert r1.read_bytes() == r2.read_bytes()


def test_resize_grows_the_l1_table(tmp_path):
    img = tmp_path / "small-clusters.qcow2"
    vk("disk", "create", "--cluster-size", "512", str(img), "1M")  # 64 KiB per L2 table: L1 grows quickly
    qio(img, "write -P 0x5a 0 512k")
    vk("disk", "resize", str(img), "+200M")
    clean(img)
    qio(img, "read -P 0x5a 0 512k", "write -P 0x6b 200M 4k", "read -P 0x6b 200M 4k")
    clean(img)
    assert json.loads(qi("info", "--output=json", str(img)).stdout)["virtual-size"] == 201 * MiB


def test_rebase_safe_and_unsafe_like_qemu_img(tmp_path, chain):
    base, top = chain
    other = tmp_path / "other.qcow2"
    qi("create", "-f", "qcow2", str(other), "4M")
    qio(other, "write -P 0x77 0 2M")
    flat_before = tmp_path / "before.raw"
    qi("convert", "-O", "raw", str(top), str(flat_before))
    _, q_top, q_other = twin(tmp_path, base, top, other)
    vk("disk", "rebase", "-b", str(other), "-F", "qcow2", str(top))
    qi("rebase", "-b", str(q_other), "-F", "qcow2", str(q_top))
    clean(top)
    same(top, flat_before)  # what the guest sees did not change
    same(top, q_top)
    assert json.loads(qi("info", "--output=json", str(top)).stdout)["backing-filename"] == str(other)
    # -u: only the header
    vk("disk", "rebase", "-u", "-b", str(base), "-F", "qcow2", str(top))
    info = json.loads(qi("info", "--output=json", str(top)).stdout)
    assert info["backing-filename"] == str(base) and info["backing-filename-format"] == "qcow2"
    clean(top)
    # to no backing file: the image holds everything itself
    vk("disk", "rebase", "-b", "", str(top))
    assert "backing-filename" not in json.loads(qi("info", "--output=json", str(top)).stdout)


def test_commit_like_qemu_img(tmp_path, chain):
    base, top = chain
    q_base, q_top = twin(tmp_path, base, top)
    flat = tmp_path / "flat.raw"
    qi("convert", "-O", "raw", str(top), str(flat))
    vk("disk", "commit", str(top))
    qi("commit", str(q_top))
    clean(base)
    clean(top)
    same(base, flat)
    same(base, q_base)
    same(top, q_top)
    assert all(r["depth"] == 1 or not r["present"] for r in json.loads(vk("disk", "map", "--output=json",
                                                                          str(top)).stdout))  # emptied


def test_amend_lazy_refcounts_and_info(tmp_path, chain):
    base, top = chain
    vk("disk", "amend", "-o", "lazy_refcounts=on", str(base))
    assert "lazy refcounts: true" in qi("info", str(base)).stdout
    clean(base)
    vk("disk", "amend", "-o", "lazy_refcounts=off", str(base))
    assert "lazy refcounts: false" in qi("info", str(base)).stdout
    p = vk("disk", "amend", "-o", "compat=0.10", str(base), check=False)
    assert p.returncode == 1 and "only 1.1" in p.stderr
    chain_info = json.loads(vk("disk", "info", "--backing-chain", "--output=json", str(top)).stdout)
    theirs = json.loads(qi("info", "--backing-chain", "--output=json", str(top)).stdout)
    assert [c["filename"] for c in chain_info] == [c["filename"] for c in theirs]
    assert [c["virtual-size"] for c in chain_info] == [c["virtual-size"] for c in theirs]


def test_images_written_by_create_convert_snapshot_are_clean_for_qemu(tmp_path, chain):
    _, top = chain
    out = tmp_path / "out.qcow2"
    vk("disk", "convert", "-O", "qcow2", str(top), str(out))
    clean(out)
    same(out, top)
    vk("disk", "snapshot", "-c", "s1", str(out))
    vk("disk", "create", "-o", "cluster_size=4K,lazy_refcounts=on", str(tmp_path / "new.qcow2"), "8M")
    clean(tmp_path / "new.qcow2")
    assert "s1" in qi("snapshot", "-l", str(out)).stdout
    p = vk("disk", "bench", "-c", "2000", "-d", "8", str(out))
    assert "Run completed in" in p.stdout and "Sending 2000 read requests" in p.stdout
    w = vk("disk", "bench", "-w", "-c", "500", "--json", str(out))
    assert json.loads(w.stdout)["requests"] == 500
    clean(out)


def test_list_and_delete(tmp_path, chain):
    base, top = chain
    rows = {r["name"]: r for r in json.loads(vk("disk", "list", "--json", str(tmp_path)).stdout)}
    assert rows["top.qcow2"]["backing_file"] == str(base) and rows["base.qcow2"]["virtual_size"] == 4 * MiB
    vk("disk", "delete", str(top))
    assert not top.exists()
