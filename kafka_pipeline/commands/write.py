"""`kafka-pipeline write`: the entity writer (entity rows -> Delta tables, exactly once)."""

from __future__ import annotations

import argparse
import asyncio

from kafka_pipeline.commands.arguments import (
    add_storage_arguments,
    apply_overrides,
    apply_storage_arguments,
    positive_float,
    positive_int,
)
from kafka_pipeline.config import Settings, load_settings
from kafka_pipeline.lifecycle.signals import run_worker

NAME = "write"
HELP = "Run the entity writer: entity rows -> Delta tables."
DESCRIPTION = (
    "Merge the entity-rows topic into the eight Delta tables: batches of up to --max-rows rows or "
    "--max-latency-s seconds, one MERGE per table per batch by the newest-non-null merge rule, per-partition "
    "progress recorded in every Delta commit (with the identity of the log it was read from) so crashes and "
    "replays never write twice; Kafka offsets are committed after the tables. Rows that do not fit the table "
    "contract send their message to the DLQ. A partition whose stored progress came from another log (a topic "
    "recreated, a new cluster) is refused and the writer exits 1, unless --adopt-new-log. "
    "SIGTERM/SIGINT: stop reading, flush, commit, exit 0."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-rows", type=positive_int, metavar="N",
                        help="flush when this many rows are pending (default: KP_WRITER__MAX_ROWS / config, 20000)")
    parser.add_argument("--max-latency-s", type=positive_float, metavar="SECONDS",
                        help="flush when the oldest pending message is this old (default: KP_WRITER__MAX_LATENCY_S / config, 2)")
    parser.add_argument("--adopt-new-log", action="store_true",
                        help="a partition whose stored progress came from another log (topic recreated, new cluster) is adopted: "
                             "recorded as new and written from its first record (default: refused, exit 1)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check every partition's stored progress against the log the broker serves, print the plan, write nothing")
    add_storage_arguments(parser)


def settings_from(args: argparse.Namespace) -> Settings:
    settings = apply_overrides(load_settings(), {
        "writer.max_rows": args.max_rows,
        "writer.max_latency_s": args.max_latency_s,
        "writer.adopt_new_log": True if args.adopt_new_log else None,
    })
    return apply_storage_arguments(settings, args)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    from kafka_pipeline.workers.writer.entity_writer import EntityWriter  # noqa: PLC0415 - imports deltalake

    if args.dry_run:
        return asyncio.run(_print_plan(settings))
    return run_worker(settings, lambda: EntityWriter(settings))


async def _print_plan(settings: Settings) -> int:
    """Per partition: resumed, new, or refused (and what --adopt-new-log would do)."""
    from kafka_pipeline.kafka.clients import ensure_topics, first_contact, make_consumer  # noqa: PLC0415
    from kafka_pipeline.offsets.topic_offsets import topic_partitions  # noqa: PLC0415
    from kafka_pipeline.workers.writer.entity_writer import table_writers  # noqa: PLC0415
    from kafka_pipeline.workers.writer.log_progress import LogProgress  # noqa: PLC0415

    kafka, topic = settings.kafka, settings.kafka.entity_rows_topic
    await ensure_topics(kafka, [topic])
    consumer = make_consumer(kafka, group_id=None)
    with first_contact(kafka):
        await consumer.start()
    try:
        partitions = await topic_partitions(consumer, topic)
    finally:
        await consumer.stop()
    progress = LogProgress(kafka, settings.writer.group_id, topic, table_writers(settings))
    verdicts = await progress.check(partitions)
    adopt = settings.writer.adopt_new_log
    print(f"dry run: group {settings.writer.group_id}, tables {settings.delta.tables_root}, "
          f"broker serves {topic} on {progress.identity}")
    for verdict in verdicts:
        where = f"  {topic}[{verdict.partition}] offsets {verdict.log.start}..{verdict.log.end}: "
        if verdict.stored_offset is None:
            print(where + "no stored progress: written from its first record")
        elif verdict.trusted:
            print(where + f"tables hold offset {verdict.stored_offset} of this log: resumed")
        else:
            stored_log = await asyncio.get_running_loop().run_in_executor(None, progress.stored_log, verdict)
            action = "would be ADOPTED (written from its first record)" if adopt else "REFUSED (the writer exits 1)"
            print(where + action + "; " + progress.mismatch(verdict, stored_log))
    refused = sum(1 for v in verdicts if not v.trusted)
    print(f"{refused} of {len(verdicts)} partitions from another log" + (": run without --dry-run to adopt them" if refused and adopt else ""))
    return 0
