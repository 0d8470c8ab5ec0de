"""`kafka-pipeline replay`: send events to the events topic from files, a topic range or the
tables' event log, filtered by project and event type."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from kafka_pipeline.commands.arguments import (
    int_list,
    non_negative_int,
    point_in_time,
    positive_float,
    positive_int,
    text_list,
)
from kafka_pipeline.config import Settings, load_settings
from kafka_pipeline.embedded.stack_file import use_running_stack
from kafka_pipeline.errors import UsageError
from kafka_pipeline.ops.replay import replay
from kafka_pipeline.ops.replay_sources import (
    EventFilter,
    FileSource,
    Source,
    TableSource,
    TopicRange,
    TopicSource,
    read_project_ids,
)

NAME = "replay"
HELP = "Send events again: files, a topic range, the event log."
DESCRIPTION = (
    "Send ClaimX events to the events topic, keyed by project_id: from JSON-lines files, a topic range "
    "(--from-topic) or the tables' event log (--from-table), filtered by project and event type."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", type=Path, metavar="FILE", help="JSON-lines files, one event per line")
    source = parser.add_argument_group("other sources (instead of files)")
    source.add_argument("--from-topic", metavar="TOPIC", help="read a range of this topic (without joining any consumer group)")
    source.add_argument("--partitions", type=int_list, metavar="P,P", help="--from-topic: only these partitions (default: all)")
    source.add_argument("--from-offset", type=non_negative_int, help="--from-topic: first offset of each partition read")
    source.add_argument("--to-offset", type=non_negative_int, help="--from-topic: stop before this offset in each partition")
    source.add_argument("--from-table", action="store_true",
                        help="rebuild the events from the claimx_events table under the tables root (same trace ids)")
    source.add_argument("--tables-root", help="--from-table: the tables root (default: DELTA_TABLES_ROOT / config)")
    chosen = parser.add_argument_group("filters")
    chosen.add_argument("--since", type=point_in_time, metavar="TIME",
                        help="from this time: ISO-8601 (naive = UTC) or a duration ago such as 12h (topic: record time; table: ingested_at)")
    chosen.add_argument("--until", type=point_in_time, metavar="TIME", help="before this time (same forms as --since)")
    chosen.add_argument("--project-id", type=text_list, action="extend", dest="project_ids", metavar="ID",
                        help="only these projects (repeatable, or comma-separated)")
    chosen.add_argument("--project-ids-file", type=Path, metavar="FILE", help="only the projects listed in FILE (one or more per line)")
    chosen.add_argument("--event-type", type=text_list, action="extend", dest="event_types", metavar="TYPE",
                        help="only these event types (repeatable, or comma-separated)")
    sending = parser.add_argument_group("sending")
    sending.add_argument("--refresh-projects", action="store_true",
                         help="ask the enrichment worker to refetch each event's project instead of trusting its cache")
    sending.add_argument("--rate", type=positive_float, help="events per second (default: as fast as possible)")
    sending.add_argument("--limit", type=positive_int, help="send at most this many (matching) events")
    sending.add_argument("--dry-run", action="store_true", help="read and match, send nothing")
    sending.add_argument("--topic", help="target topic (default: the configured events topic)")
    sending.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS / config)")
    sending.add_argument("--no-progress", action="store_true", help="no progress bar")


def selection_of(args: argparse.Namespace) -> EventFilter:
    project_ids = list(args.project_ids or [])
    if args.project_ids_file is not None:
        if not args.project_ids_file.is_file():
            raise UsageError(f"no such file: {args.project_ids_file}")
        from_file = list(read_project_ids(args.project_ids_file))
        if not from_file:
            raise UsageError(f"no project ids in {args.project_ids_file}")
        project_ids += from_file
    return EventFilter(
        project_ids=frozenset(project_ids) if project_ids else None,
        event_types=frozenset(t.upper() for t in args.event_types) if args.event_types else None,
    )


def source_of(args: argparse.Namespace, settings: Settings, selection: EventFilter) -> Source:
    chosen = [name for name, given in (("FILE", bool(args.files)), ("--from-topic", bool(args.from_topic)),
                                       ("--from-table", args.from_table)) if given]
    if len(chosen) != 1:
        raise UsageError("give exactly one source: FILE..., --from-topic TOPIC or --from-table"
                         + (f" (got {' and '.join(chosen)})" if chosen else ""))
    topic_only = [flag for flag, value in (("--partitions", args.partitions), ("--from-offset", args.from_offset),
                                           ("--to-offset", args.to_offset)) if value is not None]
    if topic_only and not args.from_topic:
        raise UsageError(f"{topic_only[0]} needs --from-topic")
    if args.tables_root and not args.from_table:
        raise UsageError("--tables-root needs --from-table")
    if args.since is not None and args.until is not None and args.since >= args.until:
        raise UsageError("--since must be before --until")
    if args.files:
        if args.since is not None or args.until is not None:
            raise UsageError("--since/--until need --from-topic or --from-table")
        for path in args.files:
            if not path.is_file():
                raise UsageError(f"no such file: {path}")
        return FileSource(list(args.files))
    if args.from_topic:
        if args.from_offset is not None and args.since is not None:
            raise UsageError("give --from-offset or --since, not both")
        if args.to_offset is not None and args.until is not None:
            raise UsageError("give --to-offset or --until, not both")
        if args.from_offset is not None and args.to_offset is not None and args.from_offset > args.to_offset:
            raise UsageError("--from-offset must not be after --to-offset")
        spec = TopicRange(args.from_topic, tuple(args.partitions) if args.partitions else None,
                          args.from_offset, args.to_offset, args.since, args.until)
        return TopicSource(settings.kafka, spec)
    delta = settings.delta
    if args.tables_root:
        delta = delta.model_copy(update={"tables_root": args.tables_root})
    return TableSource(delta, selection, since=args.since, until=args.until)


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.bootstrap_servers:
        settings.kafka = settings.kafka.model_copy(update={"bootstrap_servers": args.bootstrap_servers})
    use_running_stack(settings, bootstrap_flag=args.bootstrap_servers, tables_flag=args.tables_root)
    selection = selection_of(args)
    source = source_of(args, settings, selection)
    target = args.topic or settings.kafka.events_topic
    summary = asyncio.run(
        replay(settings.kafka, source, selection=selection, topic=target, rate=args.rate, limit=args.limit,
               dry_run=args.dry_run, refresh_projects=args.refresh_projects,
               progress=not args.no_progress and sys.stderr.isatty())
    )
    for line in summary.table():
        print(line)
    matched = sum(summary.matched.values())
    if args.dry_run:
        print(f"dry run: would send {matched} events from {source.description} to {target}")
    else:
        refresh = ", asking for project refetch" if args.refresh_projects else ""
        print(f"sent {summary.total_sent} events from {source.description} to {target}{refresh} "
              f"({summary.without_key} without a project_id key) in {summary.seconds:.1f}s, {summary.rate:.0f} events/s")
    return 0
