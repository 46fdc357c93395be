"""Guest images built from Debian packages, cached under ``~/.cache/virtkit/images/<recipe>-<key>``.

Recipes: ``kernel`` (Linux 6.1 RV64 ``Image``), ``busybox`` (static RV64), ``initramfs`` (busybox +
``/init``). The firmware is Debian's OpenSBI ``fw_jump.bin`` (package ``opensbi``), not built.

Public API (what ``virtkit run``, the tests and the benchmarks call)::

    from virtkit.images import default_guest, exec_append, parse_exit_status
    guest = default_guest(progress=True)      # builds what is missing, then returns paths
    guest.kernel, guest.initrd, guest.firmware  # pathlib.Path each
    append = "console=ttyS0 " + exec_append("uname -m")   # run one command, then power off
    # the guest prints "virtkit-exit-status: N"; parse_exit_status(console_text) -> N

Kernel command line contract of ``/init``: ``virtkit.exec=<base64 command>`` runs it with
``sh -c`` and powers off after ``virtkit-exit-status: N``; ``virtkit.bench=init`` prints
``virtkit-init-reached`` and powers off; otherwise an interactive shell on the console
(prompt ``virtkit:/# ``), power off when it exits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from virtkit.errors import ImageError
from virtkit.images.busybox import BusyboxRecipe
from virtkit.images.cache import (
    MissingToolError,
    Reporter,
    RichReporter,
    build_entry,
    dir_size,
    entry_dir,
    hash_inputs,
    images_dir,
    is_built,
    read_meta,
)
from virtkit.images.ext4 import make_ext4, read_ext4_file
from virtkit.images.initramfs import INIT_REACHED, InitramfsRecipe, InitramfsX86Recipe, exec_append, parse_exit_status
from virtkit.images.kernel import KernelRecipe, KernelX86Recipe
from virtkit.images.qemu import firmware_default
from virtkit.images.recipe import Recipe

__all__ = [
    "Guest", "ImageInfo", "MissingToolError", "RECIPES", "INIT_REACHED", "build", "default_guest", "exec_append",
    "firmware_path", "image_path", "list_images", "make_ext4", "parse_exit_status", "read_ext4_file", "recipe_key",
]

RECIPES: dict[str, Recipe] = {r.name: r for r in (KernelRecipe(), BusyboxRecipe(), InitramfsRecipe(),
                                                   KernelX86Recipe(), InitramfsX86Recipe())}
#: The recipes making up the default guest, in build order.
DEFAULT_GUEST = ("kernel", "initramfs")


@dataclass(frozen=True)
class Guest:
    """A bootable guest: firmware (OpenSBI fw_jump), kernel ``Image`` and initramfs, all existing files."""

    kernel: Path
    initrd: Path
    firmware: Path


@dataclass(frozen=True)
class ImageInfo:
    """One row of ``virtkit images list``."""

    name: str
    key: str
    built: bool
    path: Path
    size: int
    summary: str
    error: str = ""


def _recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ImageError(f"unknown image {name!r} (known: {', '.join(RECIPES)}, firmware)")
    return RECIPES[name]


def recipe_key(name: str) -> str:
    """The cache key of a recipe: a hash of its inputs and of its dependencies' keys."""
    recipe = _recipe(name)
    inputs = recipe.inputs()
    inputs["deps"] = {dep: recipe_key(dep) for dep in recipe.deps}
    return hash_inputs(inputs)


def _order(names: list[str]) -> list[str]:
    out: list[str] = []

    def visit(n: str) -> None:
        for dep in _recipe(n).deps:
            visit(dep)
        if n not in out:
            out.append(n)

    for n in names:
        visit(n)
    return out


def build(names: list[str] | None = None, progress: bool = True, force: bool = False) -> dict[str, Path]:
    """Build the named recipes (all when None) and their dependencies; return {name: artifact path}.

    Cached entries are reused; ``force`` rebuilds the named ones (not their dependencies).
    """
    names = list(names) if names else list(RECIPES)
    for n in names:
        _recipe(n)
    reporter: Reporter = RichReporter() if progress else Reporter()
    result: dict[str, Path] = {}
    entries: dict[str, Path] = {}
    try:
        for name in _order(names):
            recipe = RECIPES[name]
            inputs = recipe.inputs()
            inputs["deps"] = {dep: recipe_key(dep) for dep in recipe.deps}
            key = hash_inputs(inputs)
            cached = is_built(name, key) and not (force and name in names)
            if not cached:
                reporter.step(name, "building")
            entry = build_entry(name, key, inputs, recipe.build, reporter,
                                deps={d: entries[d] for d in recipe.deps}, force=force and name in names)
            entries[name] = entry
            result[name] = entry / recipe.artifact
            meta = read_meta(name, key) or {}
            how = "cached" if cached else f"built in {meta.get('build_seconds', '?')} s"
            reporter.done(name, f"{how}: {result[name]}")
    finally:
        if isinstance(reporter, RichReporter):
            reporter.close()
    return result


def image_path(name: str) -> Path:
    """The artifact of a built image (``firmware`` gives OpenSBI's fw_jump.bin); ImageError if not built."""
    if name == "firmware":
        return firmware_path()
    key = recipe_key(name)
    if not is_built(name, key):
        raise ImageError(f"image {name!r} is not built (key {key}): run `virtkit images build {name}`")
    return entry_dir(name, key) / RECIPES[name].artifact


def firmware_path() -> Path:
    """Debian's OpenSBI fw_jump.bin (generic platform); MissingToolError naming package ``opensbi``."""
    fw = firmware_default()
    if not fw.is_file():
        raise MissingToolError(f"firmware: {fw} not found: install Debian package opensbi (apt-get install opensbi)")
    return fw


def default_guest(progress: bool = True) -> Guest:
    """The default guest (kernel + initramfs + OpenSBI), building missing images first (minutes, once)."""
    firmware = firmware_path()
    paths = build(list(DEFAULT_GUEST), progress=progress)
    return Guest(kernel=paths["kernel"], initrd=paths["initramfs"], firmware=firmware)


def list_images() -> list[ImageInfo]:
    """Every recipe with its current key and whether that key is built; unbuildable ones carry the error."""
    rows = []
    for name, recipe in RECIPES.items():
        try:
            key = recipe_key(name)
        except ImageError as err:
            rows.append(ImageInfo(name, "-", False, images_dir(), 0, recipe.summary, str(err)))
            continue
        built = is_built(name, key)
        entry = entry_dir(name, key)
        rows.append(ImageInfo(name, key, built, entry / recipe.artifact, dir_size(entry) if built else 0,
                              recipe.summary))
    fw = firmware_default()
    rows.append(ImageInfo("firmware", "opensbi", fw.is_file(), fw, fw.stat().st_size if fw.is_file() else 0,
                          "OpenSBI fw_jump.bin (Debian package opensbi)"))
    return rows
