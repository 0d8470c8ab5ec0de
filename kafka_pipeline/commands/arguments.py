"""Argument types and settings overrides shared by the subcommands (no NAME: not a command)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import ValidationError

from kafka_pipeline.config import Settings
from kafka_pipeline.errors import ConfigError

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


def duration(text: str) -> timedelta:
    """`12h`, `90m`, `1d12h`, `30s`, `2w` -> a timedelta."""
    compact = text.strip().lower()
    parts = _DURATION.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise argparse.ArgumentTypeError(f"expected a duration such as 12h, 90m or 1d12h, got {text!r}")
    return timedelta(seconds=sum(float(n) * _UNIT_S[u] for n, u in parts))


def point_in_time(text: str) -> datetime:
    """An ISO-8601 time (naive = UTC) or a duration ago (`12h`: twelve hours before now), UTC-aware."""
    try:
        return datetime.now(UTC) - duration(text)
    except argparse.ArgumentTypeError:
        pass
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO time (2026-01-05T14:00:00Z) or a duration ago (12h), got {text!r}") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, got {value}")
    return value


def apply_overrides(settings: Settings, overrides: Mapping[str, Any]) -> Settings:
    """Set each `section.field` whose command-line value was given (not None or empty);
    the settings validate the value, and a bad one is a one-line ConfigError naming it."""
    for path, value in overrides.items():
        if value is None or value == "":
            continue
        section, field = path.split(".")
        try:
            setattr(getattr(settings, section), field, value)
        except ValidationError as exc:
            raise ConfigError(f"config error: {path}: {exc.errors()[0]['msg']} (got {value!r})") from None
    return settings
