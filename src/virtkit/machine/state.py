"""Device and engine state: the ``save()``/``restore()`` contract every part of a machine follows.

A machine's state is the state of its parts. Each device class and the engine carry two class
attributes and two methods, beside the code whose state they describe (Firecracker's "persist"
idea)::

    STATE_KIND = "uart16550"       # what the record describes
    STATE_VERSION = 1              # bumped whenever the record's meaning changes
    def save(self) -> dict: ...    # a record: JSON types only (int, float, bool, str, list, dict, None)
    def restore(self, state: dict) -> None: ...

A record is ``{"kind": KIND, "version": N, ...fields}``. :func:`record` makes one; :func:`fields`
checks one read back (a snapshot file or a migration stream is input like any other: a record of
another kind, of a version this code cannot read, or with a field missing or of the wrong type is
a :class:`StateError` naming the part, the field and what was expected). Caches (TLBs, translated
code, flow caches) are never saved: ``restore`` drops and rebuilds them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from virtkit.errors import VirtkitError


class StateError(VirtkitError):
    """A saved state cannot be read back: wrong kind, unknown version, missing or malformed field."""


@runtime_checkable
class Stateful(Protocol):
    """What every device and engine provides (see the module docstring)."""

    STATE_KIND: str
    STATE_VERSION: int

    def save(self) -> dict:
        """The part's state as a versioned record of JSON types."""

    def restore(self, state: dict) -> None:
        """Put the part in the state ``save`` returned (possibly in another process)."""


def record(part: Stateful, **values: Any) -> dict:
    """A state record of ``part``: its kind and version, then ``values``."""
    return {"kind": part.STATE_KIND, "version": part.STATE_VERSION, **values}


class Fields:
    """Typed access to the fields of a checked record: each getter names the field when it is wrong."""

    def __init__(self, kind: str, state: dict) -> None:
        self.kind = kind
        self.state = state

    def _get(self, key: str, types: tuple[type, ...], what: str) -> Any:
        if key not in self.state:
            raise StateError(f"{self.kind} state: field {key!r} is missing")
        v = self.state[key]
        if not isinstance(v, types) or (bool not in types and isinstance(v, bool)):
            raise StateError(f"{self.kind} state: field {key!r} must be {what}, not {type(v).__name__}")
        return v

    def int(self, key: str, lo: int | None = None, hi: int | None = None) -> int:
        """An integer field, optionally within ``[lo, hi]``."""
        v = self._get(key, (int,), "an integer")
        if lo is not None and v < lo or hi is not None and v > hi:
            raise StateError(f"{self.kind} state: field {key!r} = {v} is outside [{lo}, {hi}]")
        return v

    def opt_int(self, key: str) -> int | None:
        """An integer field that may be null."""
        if self.state.get(key, 0) is None:
            return None
        return self.int(key)

    def bool(self, key: str) -> bool:
        """A boolean field."""
        return self._get(key, (bool,), "true or false")

    def str(self, key: str) -> str:
        """A string field."""
        return self._get(key, (str,), "a string")

    def float(self, key: str) -> float:
        """A number field."""
        return float(self._get(key, (int, float), "a number"))

    def bytes(self, key: str, max_len: int | None = None) -> bytes:
        """A byte string saved as hex."""
        v = self.str(key)
        try:
            b = bytes.fromhex(v)
        except ValueError:
            raise StateError(f"{self.kind} state: field {key!r} is not hex") from None
        if max_len is not None and len(b) > max_len:
            raise StateError(f"{self.kind} state: field {key!r} holds {len(b)} bytes, at most {max_len} fit")
        return b

    def ints(self, key: str, length: int | None = None, lo: int | None = None, hi: int | None = None) -> list[int]:
        """A list of integers (of exactly ``length`` when given), each within ``[lo, hi]``."""
        v = self._get(key, (list,), "a list")
        if length is not None and len(v) != length:
            raise StateError(f"{self.kind} state: field {key!r} has {len(v)} entries, expected {length}")
        for x in v:
            if not isinstance(x, int) or isinstance(x, bool):
                raise StateError(f"{self.kind} state: field {key!r} must hold integers")
            if lo is not None and x < lo or hi is not None and x > hi:
                raise StateError(f"{self.kind} state: a value in {key!r} ({x}) is outside [{lo}, {hi}]")
        return list(v)

    def rows(self, key: str, nrows: int, ncols: int, lo: int | None = None, hi: int | None = None) -> list[list[int]]:
        """A list of ``nrows`` lists of ``ncols`` integers each within ``[lo, hi]``."""
        out = []
        for i, row in enumerate(self.list(key, nrows)):
            out.append(Fields(self.kind, {f"{key}[{i}]": row}).ints(f"{key}[{i}]", ncols, lo, hi))
        return out

    def list(self, key: str, length: int | None = None) -> list:
        """A list field (of exactly ``length`` entries when given)."""
        v = self._get(key, (list,), "a list")
        if length is not None and len(v) != length:
            raise StateError(f"{self.kind} state: field {key!r} has {len(v)} entries, expected {length}")
        return v

    def dict(self, key: str) -> dict:
        """A nested record."""
        return self._get(key, (dict,), "an object")


def fields(part: Stateful, state: object, readable: tuple[int, ...] | None = None) -> Fields:
    """Check that ``state`` is a record of ``part``'s kind in a version this code reads (by default only
    its own); return typed access to its fields."""
    kind = part.STATE_KIND
    if not isinstance(state, dict):
        raise StateError(f"{kind} state must be an object, not {type(state).__name__}")
    got = state.get("kind")
    if got != kind:
        raise StateError(f"state of a {got!r} given to a {kind!r}")
    version = state.get("version")
    ok = readable or (part.STATE_VERSION,)
    if version not in ok or isinstance(version, bool):
        raise StateError(f"{kind} state version {version!r} cannot be read by this virtkit "
                         f"(it reads version{'s' if len(ok) > 1 else ''} {', '.join(map(str, ok))})")
    return Fields(kind, state)
