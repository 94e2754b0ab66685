"""Prometheus durations ("1h30m") as seconds, and rounding to common values."""

from __future__ import annotations

import re

_UNITS = (
    ("y", 365 * 86400),
    ("w", 7 * 86400),
    ("d", 86400),
    ("h", 3600),
    ("m", 60),
    ("s", 1),
)
_DURATION = re.compile(
    r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?"
)
# Values operators recognise, in seconds: recommendations round up to one.
COMMON_STEPS = (
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    10800,
    14400,
    21600,
    28800,
    43200,
    86400,
    172800,
)


def parse_duration(text: str) -> float:
    """Return the seconds of a Prometheus duration, or raise ValueError.

    Accepts the units y, w, d, h, m, s and ms, largest first, such as "1h30m".
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None or not text.strip() or not any(match.groups()):
        raise ValueError(f"not a Prometheus duration: {text[:40]!r}")
    groups = match.groups()
    seconds = sum(
        int(value) * unit
        for value, (_, unit) in zip(groups[:6], _UNITS, strict=True)
        if value
    )
    milliseconds = int(groups[6]) if groups[6] else 0
    return seconds + milliseconds / 1000


def format_duration(seconds: float) -> str:
    """Return the Prometheus duration of `seconds`, such as 5400 -> "1h30m".

    Weeks and years are not used, so 7 days is "7d". Milliseconds are dropped.
    """
    remaining = int(seconds)
    if remaining <= 0:
        return "0s"
    parts = []
    for suffix, unit in _UNITS[2:]:
        count, remaining = divmod(remaining, unit)
        if count:
            parts.append(f"{count}{suffix}")
    return "".join(parts)


def round_up(seconds: float) -> float:
    """Return the smallest common step of at least `seconds`, or whole days."""
    for step in COMMON_STEPS:
        if step >= seconds:
            return float(step)
    days = -(-seconds // 86400)
    return float(days * 86400)


def optional_seconds(text: str) -> float | None:
    """Return the seconds of a duration, or None for an empty or invalid one."""
    if not text:
        return None
    try:
        return parse_duration(text)
    except ValueError:
        return None
