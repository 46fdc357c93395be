"""Sizes as people type them, parsed in exactly one place for every command and config file.

``parse_size("1.5G")`` is 1610612736. Units are binary (K = 1024, as QEMU and qemu-img count);
``KiB``/``KB``/``k`` spellings are accepted. A bare number means ``default_unit``: bytes for disk
images (qemu-img), MiB for guest memory (QEMU's ``-m 256``). ``parse_size_change("+4M")`` reads the
relative form of ``resize``. :func:`format_size` prints sizes the same way everywhere (progress bars
and tables included).
"""

from __future__ import annotations

import re

from virtkit.errors import ConfigError

UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50, "E": 1 << 60}
_SIZE = re.compile(r"^\s*([+-]?)\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGTPEB]?)(?:I?B)?\s*$", re.IGNORECASE)
MAX_SIZE = (1 << 63) - 1


def _parse(text: str | int, default_unit: str, what: str) -> tuple[str, int]:
    if isinstance(text, bool):
        raise ConfigError(f"bad {what} {text!r}: expected a size such as 512M, 1.5G or 2T")
    if isinstance(text, int):
        sign, number, unit = ("-" if text < 0 else ""), str(abs(text)), ""
    else:
        m = _SIZE.match(str(text))
        if not m:
            raise ConfigError(f"bad {what} {text!r}: expected a size such as 512M, 1.5G or 2T "
                              "(K, M, G, T, P suffixes, binary units)")
        sign, number, unit = m.group(1), m.group(2), m.group(3).upper()
    mult = UNITS[unit] if unit else UNITS[default_unit.upper()]
    if "." in number:
        whole, _, frac = number.partition(".")
        num, den = int(whole or "0") * 10 ** len(frac) + int(frac or "0"), 10 ** len(frac)
        value, rest = divmod(num * mult, den)
        if rest:
            raise ConfigError(f"bad {what} {text!r}: not a whole number of bytes")
    else:
        value = int(number) * mult
    if value > MAX_SIZE:
        raise ConfigError(f"bad {what} {text!r}: too large")
    return sign, value


def parse_size(text: str | int, *, default_unit: str = "B", what: str = "size",
               minimum: int | None = None, maximum: int | None = None, multiple: int = 1) -> int:
    """Bytes for ``512M``, ``1.5G``, ``2T``, ``4096`` (a bare number is ``default_unit``: "B" or "M").

    ``minimum``/``maximum``/``multiple`` give one clear error naming the real bounds.
    """
    sign, value = _parse(text, default_unit, what)
    if sign:
        raise ConfigError(f"bad {what} {text!r}: a size cannot be relative or negative here")
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        if maximum is None:
            raise ConfigError(f"bad {what} {text!r}: must be at least {format_size(minimum or 0)}")
        lo = format_size(minimum) if minimum is not None else "0"
        raise ConfigError(f"bad {what} {text!r}: must be between {lo} and {format_size(maximum)}")
    if multiple > 1 and value % multiple:
        raise ConfigError(f"bad {what} {text!r}: must be a multiple of {format_size(multiple)}")
    return value


def parse_size_change(text: str | int, *, default_unit: str = "B", what: str = "size") -> tuple[int, bool]:
    """``+4M`` -> (4 MiB, True) (grow by), ``-1G`` -> (-1 GiB, True), ``10G`` -> (10 GiB, False) (absolute)."""
    sign, value = _parse(text, default_unit, what)
    if sign == "-":
        return -value, True
    return value, sign == "+"


def format_size(n: int, exact: bool = False) -> str:
    """``1.5G``, ``512M``, ``4K``, ``1000B``: the unit where the value is at least 1; ``exact`` only uses a unit
    that divides ``n`` (so the text parses back to the same number: configs and TOML)."""
    n = int(n)
    if exact:
        for unit in ("E", "P", "T", "G", "M", "K"):
            if n and n % UNITS[unit] == 0:
                return f"{n // UNITS[unit]}{unit}"
        return str(n)
    for unit in ("E", "P", "T", "G", "M", "K"):
        if abs(n) >= UNITS[unit]:
            v = n / UNITS[unit]
            return f"{v:.0f}{unit}" if v == int(v) else f"{v:.3g}{unit}"
    return f"{n}B"


def parse_duration(text: str | float | int, *, what: str = "duration") -> float:
    """Seconds from ``30``, ``2.5``, ``500ms``, ``30s``, ``5m``, ``1h``; 0 means off where the caller says so."""
    if isinstance(text, bool):
        raise ConfigError(f"bad {what} {text!r}: expected seconds such as 30, 2.5s or 5m")
    if isinstance(text, int | float):
        v = float(text)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*", str(text))
        if not m:
            raise ConfigError(f"bad {what} {text!r}: expected seconds such as 30, 2.5s or 5m")
        v = float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    if v < 0 or v != v or v == float("inf"):
        raise ConfigError(f"bad {what} {text!r}: must be a finite number of seconds, 0 or more")
    return v
