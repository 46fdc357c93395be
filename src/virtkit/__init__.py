"""virtkit: every kind of virtualization from the OS lecture, as small, readable, measured Python."""

__version__ = "0.1.0"
