"""Argument types and settings overrides shared by the subcommands (no NAME: not a command)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from kafka_pipeline.config import Settings
from kafka_pipeline.errors import ConfigError


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


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
