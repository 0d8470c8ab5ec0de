"""Argument types and settings overrides shared by the subcommands (no NAME: not a command)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from kafka_pipeline.argument_types import (  # noqa: F401 - the commands import their types from here
    duration,
    int_list,
    non_negative_int,
    point_in_time,
    port,
    positive_float,
    positive_int,
    text_list,
)
from kafka_pipeline.config import Settings
from kafka_pipeline.errors import ConfigError


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
