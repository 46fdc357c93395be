"""The recipe interface: what a recipe depends on, what keys its cache entry, how it builds."""

from __future__ import annotations

import os

from virtkit.images.cache import BuildContext


class Recipe:
    """One buildable guest image. Subclasses set the class attributes and implement two methods."""

    #: Cache and CLI name.
    name: str = ""
    #: One line for ``virtkit images list``.
    summary: str = ""
    #: The main output file inside the cache entry (what ``virtkit images path NAME`` prints).
    artifact: str = ""
    #: Names of recipes whose outputs this one consumes (their keys are part of this one's key).
    deps: tuple[str, ...] = ()

    def inputs(self) -> dict:
        """Everything the output depends on (versions, hashes). Raises MissingToolError if unbuildable."""
        raise NotImplementedError

    def build(self, ctx: BuildContext) -> None:
        """Build into ``ctx.out`` (scratch space in ``ctx.work``, dependency entries in ``ctx.deps``)."""
        raise NotImplementedError


def make_jobs() -> int:
    """Parallel make jobs: ``$VIRTKIT_JOBS`` or 2 (build machines are shared; be polite)."""
    try:
        return max(1, int(os.environ.get("VIRTKIT_JOBS", "2")))
    except ValueError:
        return 2
