"""Fixtures and collection hooks; helper functions live in ``tests/helpers`` (imported, never from a test)."""

from __future__ import annotations

import pytest

from tests.helpers import GUEST_IMAGES_TIMEOUT


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


def pytest_collection_modifyitems(config, items):
    """Give tests that use the guest_images fixture room for the one-time image build."""
    for item in items:
        if "guest_images" in getattr(item, "fixturenames", ()) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(GUEST_IMAGES_TIMEOUT))
