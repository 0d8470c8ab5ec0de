"""Argument types and settings overrides shared by the subcommands (no NAME: not a command)."""

from __future__ import annotations

import argparse
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


def storage_option(text: str) -> tuple[str, str]:
    """`KEY=VALUE`, one delta-rs storage option (e.g. AWS_ENDPOINT_URL=http://127.0.0.1:9000)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text.split('=')[0]!r}")
    return key.strip(), value


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    """`--tables-root URI` and repeatable `--storage-option KEY=VALUE` (on top of the settings')."""
    parser.add_argument("--tables-root", metavar="URI",
                        help="folder or URI holding the Delta tables, e.g. s3://bucket/prefix (default: DELTA_TABLES_ROOT / config)")
    parser.add_argument("--storage-option", dest="storage_options", type=storage_option, action="append", default=[],
                        metavar="KEY=VALUE", help="a deltalake storage option, repeatable (on top of KP_DELTA__STORAGE_OPTIONS)")


def apply_storage_arguments(settings: Settings, args: argparse.Namespace) -> Settings:
    """The settings with `--tables-root` and `--storage-option` applied."""
    if args.tables_root:
        settings.delta.tables_root = args.tables_root
    if args.storage_options:
        settings.delta.storage_options = {**settings.delta.storage_options, **dict(args.storage_options)}
    return settings
