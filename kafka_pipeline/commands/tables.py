"""`kafka-pipeline tables`: what the Delta tables hold."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from deltalake.exceptions import DeltaError

from kafka_pipeline.claimx.schemas import TABLES
from kafka_pipeline.commands.arguments import add_storage_arguments, apply_storage_arguments
from kafka_pipeline.config import load_settings
from kafka_pipeline.delta.storage import TableRoot, storage_error, table_root
from kafka_pipeline.embedded.stack_file import use_running_stack
from kafka_pipeline.errors import UsageError
from kafka_pipeline.maintenance.operations import TableDescription, describe
from kafka_pipeline.ops.text import ago_text, size_text

NAME = "tables"
HELP = "Describe the Delta tables (version, rows, last commit)."
DESCRIPTION = ("Show each Delta table: version, row count, files, size, last commit (time, operation) and freshness "
               "(how long ago it was); --samples N adds N sample rows per table.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", choices=sorted(TABLES), metavar="NAME",
                        help=f"only this table (one of: {', '.join(sorted(TABLES))})")
    parser.add_argument("--samples", type=int, default=0, metavar="N", help="also show N sample rows per table (default 0: none)")
    add_storage_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.samples < 0:
        raise UsageError(f"--samples must be 0 or more, got {args.samples}")
    settings = apply_storage_arguments(load_settings(), args)
    use_running_stack(settings, bootstrap_flag=True, tables_flag=args.tables_root)
    root = table_root(settings.delta)
    try:
        _show(root, [args.table] if args.table else list(TABLES), args.samples)
    except (OSError, DeltaError) as exc:
        plain = storage_error(exc, root.display())
        if plain is None:
            raise
        print(f"kafka-pipeline tables: {plain}", file=sys.stderr)
        return 1
    return 0


def _show(root: TableRoot, names: list[str], samples: int) -> None:
    for name in names:
        info = describe(root.table_uri(name), samples=samples, storage_options=root.storage_options)
        if info is None:
            print(f"{name}: not created yet ({root.table_uri(name)})")
            continue
        print(_summary(name, info))
        clocks = describe(root.clock_table_uri(name), storage_options=root.storage_options)
        if clocks is not None:
            print(f"  merge clocks: version {clocks.version}, {clocks.rows} rows, {clocks.files} files")
        for row in info.samples:
            print("  " + json.dumps(_compact(row), default=str, ensure_ascii=False))


def _summary(name: str, info: TableDescription) -> str:
    when = info.last_commit_at.isoformat(timespec="seconds") if info.last_commit_at else "-"
    fresh = f", {ago_text((datetime.now(UTC) - info.last_commit_at).total_seconds())} ago" if info.last_commit_at else ""
    return (
        f"{name}: version {info.version}, {info.rows} rows, {info.files} files, {size_text(info.size_bytes)}, "
        f"last commit {when} ({info.last_operation or '-'}{fresh})"
    )


def _compact(row: dict[str, Any]) -> dict[str, Any]:
    """A sample row without its null columns (entity rows are wide and sparse)."""
    return {key: value for key, value in row.items() if value is not None}
