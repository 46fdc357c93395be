"""`virtkit pool` and `virtkit volume`: the whole life cycle through the CLI, and clear one-line
errors (exit 1 or 2, no traceback, nothing changed) for every malformed flag, size or name."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from virtkit.cli import main
from virtkit.storage import open_disk


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("VIRTKIT_POOLS_DIR", str(tmp_path / "pools"))
    devs = []
    for name in "abcd":
        p = tmp_path / f"{name}.img"
        with open(p, "wb") as f:
            f.truncate(24 << 20)
        devs.append(str(p))
    return tmp_path, devs


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        rc = main(list(argv))
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def ok(capsys, *argv: str) -> str:
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    return out


def test_lifecycle(env, capsys):
    tmp, devs = env
    ok(capsys, "pool", "create", "tank", *devs[:3], "--extent-size", "1M")
    ok(capsys, "volume", "create", "tank/lin", "--size", "3M")
    ok(capsys, "volume", "create", "tank/m", "--size", "4M", "--layout", "mirror", "--copies", "3")
    ok(capsys, "volume", "create", "tank/s", "--size", "4M", "--layout", "striped", "--stripes", "2",
       "--stripe-size", "16K")
    info = json.loads(ok(capsys, "volume", "create", "tank/r5", "--size", "4M", "--layout", "parity", "--json"))
    assert info["width"] == 3 and info["layout"] == "parity"
    ok(capsys, "volume", "create", "tank/t", "--size", "1T", "--thin")
    st = json.loads(ok(capsys, "pool", "status", "tank", "--json"))
    assert st["state"] == "ok" and len(st["devices"]) == 3 and st["overcommit"] > 1
    assert {v["name"] for v in st["volumes"]} == {"lin", "m", "s", "r5", "t"}
    assert "tank" in ok(capsys, "pool", "status", "tank") and "r5" in ok(capsys, "volume", "list", "tank")

    d = open_disk("tank/m")
    d.write(0, b"before")
    d.close()
    ok(capsys, "volume", "snapshot", "tank/m", "snap")
    d = open_disk("tank/m")
    d.write(0, b"after!")
    d.close()
    ok(capsys, "volume", "rollback", "tank/m", "snap")
    assert "clone" in ok(capsys, "volume", "snapshot", "tank/m", "c1", "--writable")
    d = open_disk("tank/c1")
    d.write(0, b"clone!")
    d.close()
    ok(capsys, "volume", "delete", "tank/c1")
    d = open_disk("tank/m")
    assert d.read(0, 6) == b"before"
    d.close()

    ok(capsys, "volume", "resize", "tank/lin", "--size", "+2M")
    vols = {v["name"]: v for v in json.loads(ok(capsys, "volume", "list", "tank", "--json"))}
    assert vols["lin"]["size"] == 5 << 20 and vols["snap"]["snapshot_of"] == "m"

    assert json.loads(ok(capsys, "pool", "scrub", "tank", "--json"))["inconsistent"] == 0
    assert "0 inconsistent" in ok(capsys, "pool", "scrub", "tank", "--repair")
    ok(capsys, "pool", "add", "tank", devs[3])
    ok(capsys, "volume", "move", "tank/lin", "--from", devs[0], "--to", devs[3])
    ok(capsys, "pool", "fail", "tank", devs[1])
    assert json.loads(ok(capsys, "pool", "status", "tank", "--json"))["state"] == "degraded"
    d = open_disk("tank/m")
    assert d.read(0, 6) == b"before"
    d.close()
    spare = tmp / "spare.img"
    with open(spare, "wb") as f:
        f.truncate(24 << 20)
    rc, out, err = run(capsys, "pool", "rebuild", "tank", "--replace", devs[1], str(spare))
    # lin/s have no redundancy; if they had extents on the failed device the rebuild must refuse
    if rc != 0:
        assert "no redundancy" in err
        ok(capsys, "volume", "delete", "tank/s")
        ok(capsys, "volume", "delete", "tank/lin")
        ok(capsys, "pool", "rebuild", "tank", "--replace", devs[1], str(spare))
    assert json.loads(ok(capsys, "pool", "status", "tank", "--json"))["state"] == "ok"
    ok(capsys, "volume", "delete", "tank/snap")
    pools = json.loads(ok(capsys, "pool", "list", "--json"))
    assert pools[0]["name"] == "tank"


BAD = [
    (["pool", "create", "tank"], "required"),  # no devices
    (["pool", "create", "tank", "{a}", "--extent-size", "3M"], "power of two"),
    (["pool", "create", "tank", "{a}", "--extent-size", "lots"], "bad size"),
    (["pool", "create", "ta nk", "{a}"], "bad pool name"),
    (["pool", "create", "tank", "/nonexistent/dev.img"], "does not exist"),
    (["pool", "create", "tank", "{small}"], "too small"),
    (["pool", "create", "tank", "{a}", "{a}"], "given twice"),
    (["pool", "create", "tank", "{a}", "--warn-percent", "0"], "between 1 and 100"),
    (["pool", "create", "tank", "{a}", "--warn-percent", "x"], "invalid int"),
    (["pool", "status", "nothere"], "no pool"),
    (["volume", "create", "tank/v", "--size=-1G"], "bad size"),
    (["volume", "create", "tank/v", "--size", "1.3"], "not a whole number of bytes"),
    (["volume", "create", "tank/v", "--size", "0"], "positive multiple of 512"),
    (["volume", "create", "tank/v", "--size", "1000"], "multiple of 512"),
    (["volume", "create", "tank/v", "--size", "1G", "--layout", "raid6"], "invalid choice"),
    (["volume", "create", "tank/v", "--size", "1M", "--layout", "mirror", "--copies", "9"], "healthy devices"),
    (["volume", "create", "tank/v", "--size", "1M", "--layout", "parity", "--stripes", "2"], "at least 3"),
    (["volume", "create", "tank/v", "--size", "1M", "--copies", "2"], "only applies"),
    (["volume", "create", "tank/v", "--size", "1M", "--layout", "striped", "--stripes", "2", "--stripe-size", "3K"],
     "power of two"),
    (["volume", "create", "tank/v", "--size", "1M", "--stripes", "x"], "invalid int"),
    (["volume", "create", "tank/v", "--size", "1T"], "not enough free space"),
    (["volume", "create", "tank/-v", "--size", "1M"], "bad volume name"),
    (["volume", "create", "tankv", "--size", "1M"], "POOL/VOLUME"),
    (["volume", "create", "tank/", "--size", "1M"], "POOL/VOLUME"),
    (["volume", "create", "tank/existing", "--size", "1M"], "already exists"),
    (["volume", "resize", "tank/existing", "--size", "1K"], "shrinking"),
    (["volume", "resize", "tank/nope", "--size", "1G"], "no volume"),
    (["volume", "snapshot", "tank/existing", "existing"], "already exists"),
    (["volume", "rollback", "tank/existing", "nosnap"], "no volume"),
    (["volume", "move", "tank/existing", "--from", "/dev/null/x"], "no device"),
    (["volume", "delete", "tank/nope"], "no volume"),
    (["pool", "remove", "tank", "{a}"], "last device"),
    (["pool", "fail", "tank", "nodev"], "no device"),
    (["pool", "scrub", "nothere"], "no pool"),
    (["pool", "rebuild", "tank", "--replace", "{a}"], "expected 2"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a[:3]) + f" [{m}]" for a, m in BAD])
def test_malformed_input_is_a_clear_error(env, capsys, argv, message):
    tmp, devs = env
    small = tmp / "small.img"
    small.write_bytes(b"\0" * 4096)
    if argv[:2] != ["pool", "create"]:
        ok(capsys, "pool", "create", "tank", devs[0], "--extent-size", "1M")
        ok(capsys, "volume", "create", "tank/existing", "--size", "2M")
    pools = tmp / "pools"
    before = {p: p.read_bytes() for p in pools.rglob("metadata.*")} if pools.exists() else {}
    argv = [a.format(a=devs[0], small=small) for a in argv]
    rc, out, err = run(capsys, *argv)
    assert rc in (1, 2)
    assert message in err
    assert "Traceback" not in err
    if rc == 1:
        assert len(err.strip().splitlines()) == 1
    after = {p: p.read_bytes() for p in pools.rglob("metadata.*")} if pools.exists() else {}
    assert after == before  # a refused command changes nothing


def test_cli_subprocess_error_has_no_traceback(env):
    tmp, devs = env
    e = dict(os.environ, VIRTKIT_POOLS_DIR=str(tmp / "pools"))
    p = subprocess.run([sys.executable, "-m", "virtkit.cli", "volume", "create", "x/y", "--size", "1G"],
                       capture_output=True, text=True, env=e)
    assert p.returncode == 1 and "no pool 'x'" in p.stderr and "Traceback" not in p.stderr


def test_pool_shared_by_another_process(env, capsys):
    """Another process has volume v open for writing: the pool stays usable, v itself is refused."""
    tmp, devs = env
    ok(capsys, "pool", "create", "tank", devs[0], "--extent-size", "1M")
    ok(capsys, "volume", "create", "tank/v", "--size", "1M")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from virtkit.storage.pool import Pool; p=Pool.open('tank'); "
         "b=p.open_volume('v'); b.write(0, b'x' * 512); b.flush(); print('open', flush=True); sys.stdin.readline(); "
         "print(sorted(p.volumes) if p.refresh() is None else '', p.volume('w').size, flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=dict(os.environ),
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        ok(capsys, "volume", "create", "tank/w", "--size", "2M")  # metadata changes go on
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().split() == ["['v',", "'w']", str(2 << 20)]  # the holder sees them
        rc, _, err = run(capsys, "volume", "delete", "tank/v")
        assert rc == 1 and "is open" in err
        from virtkit.storage.pool import Pool

        with Pool.open("tank") as p:
            with pytest.raises(Exception, match="in use by another VM or process"):
                p.open_volume("v")
            ro = p.open_volume("v", force_share=True)  # like qemu-img -U
            assert ro.read(0, 512) == b"x" * 512
            ro.close()
        assert "tank" in ok(capsys, "pool", "status", "tank")
    finally:
        holder.stdin.close()
        holder.wait()
    ok(capsys, "volume", "delete", "tank/v")  # closed now
