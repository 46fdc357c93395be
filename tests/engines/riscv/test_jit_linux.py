"""Linux on the board with the JIT translating nearly everything: results match the host's.

``VIRTKIT_JIT=2`` makes every block entered twice a translation candidate, so most of the guest's
hot code (the kernel, busybox's md5sum and dd, the shell's arithmetic) runs as native code.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from tests.helpers import run_guest_exec

pytestmark = pytest.mark.slow


def test_guest_computes_the_same_md5_as_the_host_with_the_jit(guest_images):
    """md5sum of the guest's busybox binary (read from the initramfs) equals the host's md5 of that file."""
    from virtkit.images import image_path

    busybox = image_path("busybox")
    want = hashlib.md5(busybox.read_bytes()).hexdigest()
    zeros = hashlib.md5(bytes(2000 * 1024)).hexdigest()
    env = dict(os.environ, VIRTKIT_JIT="2")
    p = run_guest_exec(guest_images, "md5sum /bin/busybox; dd if=/dev/zero bs=1k count=2000 2>/dev/null | md5sum; "
                       "echo $((123456789*987654321%1000007))", "--stats", "--json", env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    cut = p.stdout.rfind("\n{")  # the command's output, then --json's summary
    text = p.stdout[:cut]
    out = json.loads(p.stdout[cut + 1:])
    assert f"{want}  /bin/busybox" in text, text
    assert f"{zeros}  -" in text, text
    assert str(123456789 * 987654321 % 1000007) in text
    stats = out["stats"]
    assert stats["jit_instructions"] > stats["instructions"] // 10, stats["jit"]
