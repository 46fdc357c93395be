"""How every list of virtkitd's API answers: a page of items with the total (``?limit=&offset=``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class Page(BaseModel):
    """A page of a list."""

    items: list[Any]
    total: int
    limit: int
    offset: int


def paged(rows: list[Any], limit: int, offset: int) -> Page:
    """The page of ``rows`` a list call asked for (every list answers this way)."""
    return Page(items=rows[offset:offset + limit], total=len(rows), limit=limit, offset=offset)
