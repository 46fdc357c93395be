"""What container tests need here: root (no rootless mode yet) and a static busybox (Debian's busybox-static)
for the images they build."""

from __future__ import annotations

import os
import shutil
import subprocess


def containers_missing() -> str | None:
    """Why containers cannot be run by the tests here (None when they can)."""
    if os.geteuid() != 0:
        return "containers need root here (no rootless mode yet)"
    bb = shutil.which("busybox")
    if bb is None or shutil.which("file") and "static" not in subprocess.run(
            ["file", "-L", bb], capture_output=True, text=True).stdout:
        return "needs a static busybox (Debian's busybox-static)"
    return None


def needs_containers() -> list:
    """The marks of a test module that runs containers."""
    import pytest

    return [pytest.mark.skipif(containers_missing() is not None, reason=str(containers_missing()))]
