"""Shared test helpers: skip with a reason when a tool, /dev/kvm or root is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

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


@pytest.fixture(scope="session")
def guest_images():
    """The default guest (OpenSBI fw_jump, kernel Image, initramfs) as a virtkit.images.Guest.

    Built from Debian packages on first use (minutes; cached in ~/.cache/virtkit/images), so tests
    using it must be marked slow. Skips with the reason when a needed Debian package is missing.
    """
    from virtkit.images import MissingToolError, default_guest

    try:
        return default_guest(progress=False)
    except MissingToolError as err:
        pytest.skip(f"cannot build guest images: {err}")


#: Time allowed to a test that uses guest_images: the first one builds the kernel and busybox
#: (tens of minutes on a loaded 2-core machine); pytest-timeout counts fixture setup.
GUEST_IMAGES_TIMEOUT = 7200


def pytest_collection_modifyitems(config, items):
    """Give tests that use the guest_images fixture room for the one-time image build."""
    for item in items:
        if "guest_images" in getattr(item, "fixturenames", ()) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(GUEST_IMAGES_TIMEOUT))


#: ``virtkit run --timeout`` for guest boots in tests: a hang guard on a loaded machine, not a performance claim.
BOOT_TIMEOUT = "3000"


def run_guest_exec(guest, command: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Boot ``guest`` (a virtkit.images.Guest) with ``virtkit run --exec command``; assert no traceback."""
    p = subprocess.run([sys.executable, "-m", "virtkit.cli", "run", "--kernel", str(guest.kernel), "--initrd",
                        str(guest.initrd), "--bios", str(guest.firmware), "--timeout", BOOT_TIMEOUT, *extra,
                        "--exec", command], capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env)
    assert "Traceback" not in p.stderr, p.stderr
    return p
