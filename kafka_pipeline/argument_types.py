"""argparse types: numbers with bounds, ports, lists, durations and points in time.

Each raises `argparse.ArgumentTypeError` with one line naming what was expected; argparse turns
it into `kafka-pipeline <command>: error: ...` and exit 2. The simulator's own CLI uses them too.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from typing import TypeVar

N = TypeVar("N", int, float)


def _number(text: str, kind: type[N], *, minimum: float, inclusive: bool, what: str) -> N:
    """`text` as `kind`, at least (or above) `minimum`, else the one-line argparse error."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < minimum or (value == minimum and not inclusive):
        bound = f"at least {minimum:g}" if inclusive else f"> {minimum:g}"
        raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, minimum=1, inclusive=True, what="a whole number")


def positive_float(text: str) -> float:
    value = _number(text, float, minimum=0, inclusive=False, what="a number")
    if value != value:  # NaN compares false with everything
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_int(text: str) -> int:
    return _number(text, int, minimum=0, inclusive=True, what="a whole number")


def int_list(text: str) -> list[int]:
    """`0,3,5` -> [0, 3, 5] (partition numbers)."""
    return [non_negative_int(part.strip()) for part in text.split(",") if part.strip()]


def text_list(text: str) -> list[str]:
    """`a,b c` -> ["a", "b", "c"] (ids or names, commas or spaces)."""
    return text.replace(",", " ").split()


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# Durations and points in time are range-checked: Kafka record times start at the epoch (a
# negative lookup time means "latest"/"earliest" to the broker), and a timedelta or a datetime
# past its range raises OverflowError.
MAX_DURATION_S = 50 * 365 * 86_400
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)


def duration(text: str) -> timedelta:
    """`12h`, `90m`, `1d12h`, `30s`, `2w` -> a timedelta of at most 50 years."""
    compact = text.strip().lower()
    parts = _DURATION.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise argparse.ArgumentTypeError(f"expected a duration such as 12h, 90m or 1d12h, got {_shown(text)}")
    seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    if not seconds <= MAX_DURATION_S:
        raise argparse.ArgumentTypeError(f"must be at most 50 years ({MAX_DURATION_S // 86_400}d), got {_shown(text)}")
    return timedelta(seconds=seconds)


def point_in_time(text: str) -> datetime:
    """An ISO-8601 time (naive = UTC) or a duration ago (`12h`: twelve hours before now), UTC-aware,
    between 1970-01-01 and 9999-12-31 in UTC."""
    if _DURATION.match(text.strip().lower()):
        return datetime.now(UTC) - duration(text)
    try:
        value = datetime.fromisoformat(text.strip())
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO time (2026-01-05T14:00:00Z) or a duration ago (12h), got {_shown(text)}") from None
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{_shown(text)} is out of range in UTC") from None
    if value < EARLIEST:
        raise argparse.ArgumentTypeError(f"must be 1970-01-01 or later (Kafka record times start there), got {_shown(text)}")
    return value


def _shown(text: str, limit: int = 60) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, got {value}")
    return value
