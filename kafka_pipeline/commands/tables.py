"""`kafka-pipeline tables`: what the Delta tables hold."""

from __future__ import annotations

import argparse
import json
from typing import Any

from kafka_pipeline.claimx.schemas import TABLES
from kafka_pipeline.config import load_settings
from kafka_pipeline.delta.maintenance import TableDescription, describe
from kafka_pipeline.delta.table_writer import clock_table_uri, table_uri
from kafka_pipeline.errors import UsageError

NAME = "tables"
HELP = "Describe the Delta tables (version, rows, last commit)."
DESCRIPTION = "Show each Delta table: version, row count, files, size, last commit (time, operation) and a few sample rows."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", choices=sorted(TABLES), metavar="NAME",
                        help=f"only this table (one of: {', '.join(sorted(TABLES))})")
    parser.add_argument("--samples", type=int, default=3, metavar="N", help="sample rows to show per table (default 3; 0 = none)")
    parser.add_argument("--tables-root", metavar="URI", help="folder or URI holding the tables (default: DELTA_TABLES_ROOT / config)")


def run(args: argparse.Namespace) -> int:
    if args.samples < 0:
        raise UsageError(f"--samples must be 0 or more, got {args.samples}")
    settings = load_settings()
    root = args.tables_root or settings.delta.tables_root
    options = settings.delta.storage_options
    for name in [args.table] if args.table else list(TABLES):
        info = describe(table_uri(root, name), samples=args.samples, storage_options=options)
        if info is None:
            print(f"{name}: not created yet ({table_uri(root, name)})")
            continue
        print(_summary(name, info))
        clocks = describe(clock_table_uri(root, name), storage_options=options)
        if clocks is not None:
            print(f"  merge clocks: version {clocks.version}, {clocks.rows} rows, {clocks.files} files")
        for row in info.samples:
            print("  " + json.dumps(_compact(row), default=str, ensure_ascii=False))
    return 0


def _summary(name: str, info: TableDescription) -> str:
    when = info.last_commit_at.isoformat(timespec="seconds") if info.last_commit_at else "-"
    return (
        f"{name}: version {info.version}, {info.rows} rows, {info.files} files, {_size(info.size_bytes)}, "
        f"last commit {when} ({info.last_operation or '-'})"
    )


def _size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return f"{size} B"


def _compact(row: dict[str, Any]) -> dict[str, Any]:
    """A sample row without its null columns (entity rows are wide and sparse)."""
    return {key: value for key, value in row.items() if value is not None}
