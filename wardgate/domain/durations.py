"""Durations as operators write them: ``250ms``, ``5s``, ``1m``, ``2h``, ``1d``."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# At most 9 digits each side of the point: no overflow, and exact to the nanosecond.
_RE = re.compile(r"^\s*(\d{1,9}(?:\.\d{1,9})?)\s*(ms|s|m|h|d)\s*$")
NAMED_PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}


def parse_duration(text: str) -> float:
    """Return seconds for ``text``; raise ``ValueError`` with a readable reason."""
    if not isinstance(text, str):
        raise ValueError(f"a duration is a string such as '250ms', '5s' or '1m', not {text!r}")
    m = _RE.match(text)
    if not m:
        raise ValueError(f"'{text}' is not a duration; write it like '250ms', '5s', '1m', '2h'")
    return float(m.group(1)) * _UNITS[m.group(2)]


MAX_PERIOD = 366 * 86400  # a year: longer windows are a quota, not a rate


def parse_period(text: str) -> float:
    """A rate-limit period: ``second|minute|hour|day`` or a duration such as ``30s``, a whole
    number of seconds from 1s to 366d."""
    if isinstance(text, str) and text.strip().lower() in NAMED_PERIODS:
        return NAMED_PERIODS[text.strip().lower()]
    seconds = parse_duration(text)
    if seconds < 1 or seconds != int(seconds):
        raise ValueError(f"a period must be a whole number of seconds, at least 1s: '{text}'")
    if seconds > MAX_PERIOD:
        raise ValueError(f"a period is at most 366d: '{text}'")
    return seconds


def format_duration(seconds: float) -> str:
    """Protobuf's JSON form, exact to the nanosecond: ``1.5s``, ``0.00001s``."""
    nanos = round(seconds * 1_000_000_000)
    whole, frac = divmod(nanos, 1_000_000_000)
    return f"{whole}.{frac:09d}".rstrip("0") + "s" if frac else f"{whole}s"
