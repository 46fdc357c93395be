"""A pool volume served over NBD (`virtkit nbd serve POOL/VOL`) and written by QEMU's own client:
the data lands in the volume (mirror: on both devices) and survives the server's shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.helpers import require_tool
from virtkit.storage.pool import Pool

EXTENT = 64 << 10


def test_qemu_io_writes_a_mirror_volume_through_nbd(tmp_path):
    require_tool("qemu-io")
    pytest.importorskip("virtkit.commands.nbd", reason="the NBD server is not in this checkout")
    env = dict(os.environ, VIRTKIT_POOLS_DIR=str(tmp_path / "pools"))
    devs = []
    for i in range(2):
        p = tmp_path / f"d{i}.img"
        with open(p, "wb") as f:
            f.truncate(8 << 20)
        devs.append(str(p))
    with Pool.create(tmp_path / "pools" / "tank", devs, extent_size=EXTENT) as pool:
        pool.create_volume("vm0", 1 << 20, "mirror", thin=True)
    sock = tmp_path / "nbd.sock"
    server = subprocess.Popen(
        [sys.executable, "-m", "virtkit.cli", "nbd", "serve", "tank/vm0", "--socket", str(sock), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        line = server.stdout.readline()
        assert line, server.stderr.read()
        assert json.loads(line)["exports"] == [""]
        url = f"nbd+unix:///?socket={sock}"
        out = subprocess.run(
            ["qemu-io", "-f", "raw", url, "-c", "write -P 0xab 4096 65536", "-c", "flush",
             "-c", "read -P 0xab 4096 65536", "-c", "read -P 0 0 4096"],
            capture_output=True, text=True, timeout=120,
        )
        assert out.returncode == 0 and "Pattern verification failed" not in out.stdout, out.stdout + out.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    with Pool.open("tank", root=tmp_path / "pools") as pool:
        vol = pool.open_volume("vm0")
        assert vol.read(4096, 65536) == b"\xab" * 65536 and vol.read(0, 4096) == bytes(4096)
        assert pool.status()["used"] == 2 * 2 * EXTENT  # two thin chunks, two copies each
        vol.close()
