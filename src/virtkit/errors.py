"""User-facing errors: each carries a one-line message that names the problem.

Front ends (CLI, REST API) print ``str(err)`` and exit non-zero; they never show a traceback
for a :class:`VirtkitError`.
"""


class VirtkitError(Exception):
    """Base class for every error a user can cause (bad flag, bad image, bad packet...)."""


class ConfigError(VirtkitError):
    """A malformed option, configuration file or argument."""


class ImageError(VirtkitError):
    """A missing, corrupt or unusable kernel, firmware, initrd or disk image."""


class GuestMemoryError(VirtkitError):
    """A guest-physical access outside guest RAM (the guest is hostile: never trust its addresses)."""
