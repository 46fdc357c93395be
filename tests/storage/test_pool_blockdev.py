"""Pools on real block devices (loop devices): labels, extents, zeroing and I/O work the same."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.helpers import require_root, require_tool
from virtkit.storage.pool import Pool


@pytest.fixture
def loops(tmp_path):
    require_root()
    require_tool("losetup")
    devs = []
    try:
        for i in range(3):
            img = tmp_path / f"loop{i}.img"
            with open(img, "wb") as f:
                f.truncate(16 << 20)
            p = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True)
            if p.returncode != 0:
                pytest.skip(f"cannot attach a loop device: {p.stderr.strip()}")
            devs.append(p.stdout.strip())
        yield devs
    finally:
        for d in devs:
            subprocess.run(["losetup", "-d", d], capture_output=True)


def test_parity_pool_on_loop_devices(tmp_path, loops):
    with Pool.create(tmp_path / "p", loops, extent_size="1M") as pool:
        assert all(d.pe_count == 15 for d in pool.devices.values())
        pool.create_volume("r", "8M", "parity", stripe="64K")
        pool.create_volume("t", "1G", thin=True)
        r = pool.open_volume("r")
        data = os.urandom(8 << 20)
        r.write(0, data)
        r.discard(0, 2 << 20)  # whole chunk of a thick volume: zeroed on the block devices
        t = pool.open_volume("t")
        t.write(5 << 20, b"thin")
        r.close()
        t.close()
    with Pool.open(tmp_path / "p") as pool:
        r = pool.open_volume("r")
        assert r.read(0, 8 << 20) == bytes(2 << 20) + data[2 << 20 :]
        pool.fail_device(loops[1])
        assert r.read(0, 8 << 20) == bytes(2 << 20) + data[2 << 20 :]
        r.close()
        t = pool.open_volume("t")
        assert t.read(5 << 20, 4) == b"thin"
        t.close()
