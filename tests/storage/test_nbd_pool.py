"""The NBD server exporting a pool volume (``POOL/VOLUME`` through ``open_disk``) to real clients."""

from __future__ import annotations

import random
import subprocess

from tests.helpers import require_tool
from virtkit.cli import main
from virtkit.storage import open_disk
from virtkit.storage.nbd import NbdExport, NbdServer


def test_nbdcopy_through_a_mirrored_pool_volume(tmp_path, monkeypatch):
    require_tool("nbdcopy")
    monkeypatch.setenv("VIRTKIT_POOLS_DIR", str(tmp_path / "pools"))
    devs = []
    for i in range(2):
        dev = tmp_path / f"d{i}.img"
        with open(dev, "wb") as f:
            f.truncate(64 << 20)
        devs.append(str(dev))
    assert main(["pool", "create", "tank", *devs]) == 0
    assert main(["volume", "create", "tank/vm", "--size", "16M", "--layout", "mirror"]) == 0
    vol = open_disk("tank/vm")
    data = random.Random(4).randbytes(16 << 20)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    out = tmp_path / "out.bin"
    try:
        with NbdServer([NbdExport("vm", vol)]) as srv:
            _, port = srv.listen_tcp("127.0.0.1", 0)
            srv.start()
            url = f"nbd://127.0.0.1:{port}/vm"
            for cmd in (["nbdcopy", "--flush", str(src), url], ["nbdcopy", url, str(out)]):
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                assert p.returncode == 0, p.stderr
    finally:
        vol.close()
    assert out.read_bytes() == data
