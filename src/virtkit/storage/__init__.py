"""Storage virtualization: block backends (raw, qcow2), pools and volumes, the NBD server, qemu-img's verbs."""

from __future__ import annotations

from virtkit.storage.backend import BlockBackend, BlockError, RawFile


def open_disk(spec: str, read_only: bool = False, fmt: str | None = None, owner: str | None = None,
              force_share: bool = False) -> BlockBackend:
    """Open a disk by spec: ``POOL/VOLUME``, a qcow2 image or a raw file/device.

    ``fmt`` is the format the user gave (``raw``/``qcow2``); None probes, and probing only recognises qcow2: a
    file in another known image format (VMDK, VDI, qcow2 version 2...) is refused with the conversion that
    would help (:mod:`virtkit.storage.formats`). ``force_share`` (read-only) looks at an image another process
    holds, like ``qemu-img -U``. ``owner`` names the VM (reserved for messages).
    """
    from virtkit.storage.formats import probe, refusal
    from virtkit.storage.qcow2 import Qcow2

    if not spec:
        raise BlockError("empty disk spec")
    if fmt not in (None, "raw", "qcow2"):
        raise BlockError(f"disk {spec!r}: format {fmt!r} is not raw or qcow2")
    from virtkit.storage.pool import is_volume_spec, open_volume_spec

    if is_volume_spec(spec):  # POOL/VOLUME of an existing pool (and no file of that name)
        return open_volume_spec(spec, read_only=read_only, force_share=force_share)
    if fmt is None:
        p = probe(spec)
        if not p.supported:
            raise BlockError(refusal(spec, p))
        fmt = p.name
    if fmt == "qcow2":
        return Qcow2(spec, read_only=read_only, force_share=force_share)
    return RawFile(spec, read_only=read_only, force_share=force_share)


__all__ = ["BlockBackend", "BlockError", "RawFile", "open_disk"]
