"""Pool metadata on disk: checksummed, two alternating copies, clear errors for corruption
(flipped bytes, truncation, wrong checksum, unknown version), nothing silently overwritten."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtkit.storage.pool import POOL_FILES, Pool, PoolError
from virtkit.storage.pool_meta import SLOTS, Label, MetadataError, decode_metadata, unpack_label

EXTENT = 64 << 10


def make_devices(tmp: Path, n: int, size: int = 2 << 20) -> list[str]:
    paths = []
    for i in range(n):
        p = tmp / f"dev{i}.img"
        with open(p, "wb") as f:
            f.truncate(size)
        paths.append(str(p))
    return paths


def make_pool(tmp: Path) -> Path:
    """A pool with a few metadata commits behind it (both slots populated)."""
    with Pool.create(tmp / "p", make_devices(tmp, 2), extent_size=EXTENT) as pool:
        pool.create_volume("a", 2 * EXTENT, "mirror")
        pool.create_volume("t", "1G", thin=True)
        v = pool.open_volume("t")
        v.write(0, b"data")
        v.close()
        pool.snapshot("t", "s")
    return tmp / "p"


def slots(path: Path) -> dict[str, bytes]:
    return {s: (path / s).read_bytes() for s in SLOTS if (path / s).exists()}


def newest(path: Path) -> str:
    copies = slots(path)
    return max(copies, key=lambda s: json.loads(copies[s].split(b"\n")[0])["seq"])


def test_both_copies_kept_and_newest_wins(tmp_path):
    path = make_pool(tmp_path)
    copies = slots(path)
    assert len(copies) == 2
    seqs = sorted(decode_metadata(raw)["seq"] for raw in copies.values())
    assert seqs[1] == seqs[0] + 1
    with Pool.open(path, read_only=True) as pool:
        assert pool.seq == seqs[1] and "s" in pool.volumes and not pool.warnings


@pytest.mark.parametrize("damage", ["flip", "truncate", "checksum", "version", "empty", "garbage"])
def test_damaged_newest_copy_falls_back_and_is_preserved(tmp_path, damage):
    path = make_pool(tmp_path)
    name = newest(path)
    raw = (path / name).read_bytes()
    header, body = raw.split(b"\n", 1)
    if damage == "flip":
        bad = raw[:-20] + bytes([raw[-20] ^ 0x55]) + raw[-19:]
    elif damage == "truncate":
        bad = raw[: len(raw) // 2]
    elif damage == "checksum":
        h = json.loads(header)
        h["sha256"] = hashlib.sha256(b"x").hexdigest()
        bad = json.dumps(h).encode() + b"\n" + body
    elif damage == "version":
        h = json.loads(header)
        h["version"] = 99
        bad = json.dumps(h).encode() + b"\n" + body
    elif damage == "empty":
        bad = b""
    else:
        bad = b"\xff\xfe not json at all"
    (path / name).write_bytes(bad)
    with Pool.open(path, read_only=True) as pool:  # falls back to the previous good copy
        assert pool.warnings and "skipped damaged metadata copy" in pool.warnings[0]
        assert "a" in pool.volumes
    assert (path / name).read_bytes() == bad  # a read-only open changes nothing
    with Pool.open(path) as pool:
        pool.create_volume("new", EXTENT)  # the next commit keeps the damaged copy aside
    kept = list(path.glob(f"{name}.damaged-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == bad
    with Pool.open(path) as pool:  # (the older copy was written mid-session: a scrub is suggested, rightly)
        assert "new" in pool.volumes and not any("damaged" in w for w in pool.warnings)


@pytest.mark.parametrize(
    "damage,message",
    [
        ("flip", "checksum mismatch"),
        ("truncate", "truncated"),
        ("version", "version 2 not supported"),
        ("magic", "bad magic"),
        ("empty", "no header line"),
    ],
)
def test_all_copies_damaged_is_a_clear_error_and_nothing_is_written(tmp_path, damage, message):
    path = make_pool(tmp_path)
    for name, raw in slots(path).items():
        header, body = raw.split(b"\n", 1)
        h = json.loads(header)
        if damage == "flip":
            raw = header + b"\n" + body[:10] + bytes([body[10] ^ 1]) + body[11:]
        elif damage == "truncate":
            raw = raw[:-7]
        elif damage == "version":
            h["version"] = 2
            raw = json.dumps(h).encode() + b"\n" + body
        elif damage == "magic":
            h["magic"] = "something-else"
            raw = json.dumps(h).encode() + b"\n" + body
        else:
            raw = b""
        (path / name).write_bytes(raw)
    before = slots(path)
    with pytest.raises(MetadataError, match=message) as err:
        Pool.open(path)
    assert "\n" not in str(err.value)
    assert slots(path) == before
    assert sorted(p.name for p in path.iterdir()) == sorted([*SLOTS, *POOL_FILES])


def test_missing_pool_and_missing_metadata(tmp_path):
    with pytest.raises(PoolError, match="no pool"):
        Pool.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MetadataError, match="no pool metadata"):
        Pool.open(tmp_path / "empty")


def test_two_writers_share_the_pool_and_readers_see_their_changes(tmp_path):
    path = make_pool(tmp_path)
    with Pool.open(path) as one, Pool.open(path) as two:
        one.create_volume("x", EXTENT)
        two.create_volume("y", EXTENT)  # re-reads first: x is kept
        one.refresh()
        assert {"a", "x", "y"} <= set(one.volumes) and {"a", "x", "y"} <= set(two.volumes)
        with Pool.open(path, read_only=True) as ro:
            assert {"a", "x", "y"} <= set(ro.volumes)
            with pytest.raises(PoolError, match="read-only"):
                ro.create_volume("z", EXTENT)


def test_device_labels(tmp_path):
    path = make_pool(tmp_path)
    dev0 = tmp_path / "dev0.img"
    raw = dev0.read_bytes()[:4096]
    label = unpack_label(raw)
    assert isinstance(label, Label) and label.pool_name == "p" and label.extent_size == EXTENT
    with pytest.raises(PoolError, match="already belongs to pool 'p'"):
        Pool.create(tmp_path / "q", [str(dev0)])
    damaged = raw[:20] + bytes([raw[20] ^ 1]) + raw[21:]
    with pytest.raises(MetadataError, match="label checksum"):
        unpack_label(damaged)
    with open(dev0, "r+b") as f:
        f.write(damaged)
    with Pool.open(path) as pool:
        dev = pool.find_device(str(dev0))
        assert dev.state == "missing" and "label" in dev.reason
        vol = pool.open_volume("a")
        assert vol.read(0, 4) == bytes(4)  # the mirror is still served by the other device
        vol.close()


# -- fuzzing: random byte damage, and structurally wrong bodies with a valid checksum ---------------

_fuzz = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_fuzz
@given(data=st.data())
def test_fuzz_metadata_bytes(tmp_path_factory, data):
    path = make_pool(tmp_path_factory.mktemp("f"))
    frac = st.integers(0, 10**6 - 1)  # positions as fractions: the metadata length varies between runs
    for name in SLOTS:
        raw = (path / name).read_bytes()
        edits = data.draw(st.lists(st.tuples(frac, st.integers(1, 255)), min_size=1, max_size=4))
        b = bytearray(raw)
        for pos, x in edits:
            b[pos * len(b) // 10**6] ^= x
        cut = data.draw(frac) * len(b) // 10**6
        (path / name).write_bytes(bytes(b[:cut]) if data.draw(st.booleans()) else bytes(b))
    before = slots(path)
    try:
        Pool.open(path, read_only=True).close()
    except MetadataError as err:
        assert str(err) and "\n" not in str(err)
    assert slots(path) == before


def _leaves(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, (*prefix, i))
    yield prefix


_json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.text(max_size=5),
    st.lists(st.integers(-5, 5), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@_fuzz
@given(data=st.data())
def test_fuzz_metadata_structure(tmp_path_factory, data):
    path = make_pool(tmp_path_factory.mktemp("s"))
    body = decode_metadata((path / newest(path)).read_bytes())
    paths = [p for p in _leaves(body) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(paths))
        parent = body
        try:
            for k in where[:-1]:
                parent = parent[k]
            if data.draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(where[-1], None)
            else:
                parent[where[-1]] = data.draw(_json_values)
        except (KeyError, IndexError, TypeError):
            continue
    text = json.dumps(body).encode()
    header = {
        "magic": "virtkit-pool-metadata",
        "version": body.get("version") if isinstance(body.get("version"), int) else 1,
        "seq": body.get("seq") if isinstance(body.get("seq"), int) else 0,
        "length": len(text),
        "sha256": hashlib.sha256(text).hexdigest(),
    }
    for s in SLOTS:
        (path / s).write_bytes(json.dumps(header).encode() + b"\n" + text)
    before = slots(path)
    try:
        with Pool.open(path, read_only=True) as pool:
            pool.status()
    except MetadataError as err:
        assert str(err) and "\n" not in str(err)
    assert slots(path) == before


def test_failed_create_leaves_no_labels_behind(tmp_path):
    good = make_devices(tmp_path, 1)[0]
    small = tmp_path / "small.img"
    small.write_bytes(bytes(4096))
    with pytest.raises(PoolError, match="too small"):
        Pool.create(tmp_path / "p", [good, str(small)], extent_size=EXTENT)
    assert not (tmp_path / "p").exists()
    with open(good, "rb") as f:
        assert f.read(8) == bytes(8)
    with Pool.create(tmp_path / "p", [good], extent_size=EXTENT) as pool:  # no --force needed
        assert len(pool.devices) == 1
