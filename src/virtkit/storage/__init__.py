"""Storage virtualization: block backends (raw, qcow2), pools and volumes, the NBD server."""

from __future__ import annotations

from virtkit.storage.backend import BlockBackend, BlockError, RawFile


def open_disk(spec: str, read_only: bool = False, fmt: str | None = None, owner: str | None = None) -> BlockBackend:
    """Open a disk by spec: a qcow2 image (detected by its magic) or a raw file/device.

    Small on purpose: other spec kinds (``pool/volume``) are added here as dispatch cases. ``fmt`` is the
    format the user gave (None probes); ``owner`` names the VM for lock messages.
    """
    from virtkit.storage.qcow2 import Qcow2, probe_format

    if not spec:
        raise BlockError("empty disk spec")
    from virtkit.storage.pool import is_volume_spec, open_volume_spec

    if is_volume_spec(spec):  # POOL/VOLUME of an existing pool (and no file of that name)
        return open_volume_spec(spec, read_only=read_only)
    if fmt == "qcow2" or fmt is None and probe_format(spec) == "qcow2":
        return Qcow2(spec, read_only=read_only)
    return RawFile(spec, read_only=read_only)


__all__ = ["BlockBackend", "BlockError", "RawFile", "open_disk"]
