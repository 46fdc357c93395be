"""Helpers shared by the tests (imported as ``tests.helpers``; tests never import each other).

``require_*`` skip a test with a reason when what it needs is missing; ``run_guest_exec`` boots the
default guest with ``virtkit run --exec``; ``virtkit(*args)`` runs the CLI in a subprocess.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest


def require_tool(*names: str) -> None:
    """Skip the calling test unless every named program is on PATH."""
    for name in names:
        if shutil.which(name) is None:
            pytest.skip(f"needs {name} (Debian package; `make test` installs it)")


def require_root() -> None:
    """Skip the calling test unless running as root."""
    if os.geteuid() != 0:
        pytest.skip("needs root")


def require_kvm() -> None:
    """Skip the calling test unless /dev/kvm can be opened."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("needs /dev/kvm")


#: Time allowed to a test that uses guest_images: the first one builds the kernel and busybox
#: (tens of minutes on a loaded 2-core machine); pytest-timeout counts fixture setup.
GUEST_IMAGES_TIMEOUT = 7200

#: ``virtkit run --timeout`` for guest boots in tests: a hang guard on a loaded machine, not a performance claim.
BOOT_TIMEOUT = "3000"


def virtkit(*args: str, input: str | bytes | None = None, env: dict | None = None, timeout: float = 600,
            check_traceback: bool = True) -> subprocess.CompletedProcess:
    """Run ``virtkit ARGS...`` in a subprocess (text output); assert it printed no traceback."""
    text = not isinstance(input, bytes)
    p = subprocess.run([sys.executable, "-m", "virtkit.cli", *args], capture_output=True, text=text, input=input,
                       stdin=None if input is not None else subprocess.DEVNULL, env=env, timeout=timeout)
    if check_traceback:
        err = p.stderr if text else p.stderr.decode(errors="replace")
        assert "Traceback" not in err, err
    return p


def run_guest_exec(guest, command: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Boot ``guest`` (a virtkit.images.Guest) with ``virtkit run --exec command``; assert no traceback."""
    p = subprocess.run([sys.executable, "-m", "virtkit.cli", "run", "--kernel", str(guest.kernel), "--initrd",
                        str(guest.initrd), "--bios", str(guest.firmware), "--timeout", BOOT_TIMEOUT, *extra,
                        "--exec", command], capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env)
    assert "Traceback" not in p.stderr, p.stderr
    return p


@contextlib.contextmanager
def private_switches(monkeypatch, prefix: str = "vkn") -> Iterator[str]:
    """A private switch directory (``VIRTKIT_NET_DIR``, short: Unix socket paths are limited to 108 bytes);
    afterwards every switch started in it is stopped and the directory removed."""
    from virtkit.network import control

    d = tempfile.mkdtemp(prefix=prefix)
    monkeypatch.setenv("VIRTKIT_NET_DIR", d)
    try:
        yield d
    finally:
        for row in control.list_switches():
            if row["running"]:
                control.stop(row["name"])
        shutil.rmtree(d, ignore_errors=True)
