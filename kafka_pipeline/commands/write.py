"""`kafka-pipeline write`: the entity writer (entity rows -> Delta tables, exactly once)."""

from __future__ import annotations

import argparse

from kafka_pipeline.commands.arguments import apply_overrides, positive_float, positive_int
from kafka_pipeline.config import Settings, load_settings
from kafka_pipeline.runtime.signals import run_worker

NAME = "write"
HELP = "Run the entity writer: entity rows -> Delta tables."
DESCRIPTION = (
    "Merge the entity-rows topic into the eight Delta tables: batches of up to --max-rows rows or "
    "--max-latency-s seconds, one MERGE per table per batch by the newest-non-null merge rule, per-partition "
    "progress recorded in every Delta commit so crashes and replays never write twice; Kafka offsets are "
    "committed after the tables. Rows that do not fit the table contract send their message to the DLQ. "
    "SIGTERM/SIGINT: stop reading, flush, commit, exit 0."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-rows", type=positive_int, metavar="N",
                        help="flush when this many rows are pending (default: KP_WRITER__MAX_ROWS / config, 20000)")
    parser.add_argument("--max-latency-s", type=positive_float, metavar="SECONDS",
                        help="flush when the oldest pending message is this old (default: KP_WRITER__MAX_LATENCY_S / config, 2)")
    parser.add_argument("--tables-root", metavar="URI",
                        help="folder or URI holding the Delta tables (default: DELTA_TABLES_ROOT / config)")


def settings_from(args: argparse.Namespace) -> Settings:
    return apply_overrides(load_settings(), {
        "writer.max_rows": args.max_rows,
        "writer.max_latency_s": args.max_latency_s,
        "delta.tables_root": args.tables_root,
    })


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    from kafka_pipeline.writer.entity_writer import EntityWriter  # noqa: PLC0415 - imports deltalake

    return run_worker(settings, lambda: EntityWriter(settings))
