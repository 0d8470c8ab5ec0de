"""`kafka-pipeline replay`: send JSON-lines event files to the events topic."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from kafka_pipeline.claimx.replay import replay
from kafka_pipeline.commands.arguments import positive_float, positive_int
from kafka_pipeline.config import load_settings
from kafka_pipeline.errors import UsageError

NAME = "replay"
HELP = "Send JSON-lines ClaimX event files to the events topic, keyed by project_id (works against any Kafka)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="JSON-lines files, one event per line")
    parser.add_argument("--rate", type=positive_float, help="events per second (default: as fast as possible)")
    parser.add_argument("--limit", type=positive_int, help="send at most this many events")
    parser.add_argument("--dry-run", action="store_true", help="read and count, send nothing")
    parser.add_argument("--topic", help="target topic (default: the configured events topic)")
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS / config)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    for path in args.files:
        if not path.is_file():
            raise UsageError(f"no such file: {path}")
    settings = load_settings()
    kafka = settings.kafka
    if args.bootstrap_servers:
        kafka = kafka.model_copy(update={"bootstrap_servers": args.bootstrap_servers})
    summary = asyncio.run(
        replay(kafka, args.files, topic=args.topic, rate=args.rate, limit=args.limit, dry_run=args.dry_run,
               progress=not args.no_progress and sys.stderr.isatty())
    )
    verb = "would send" if args.dry_run else "sent"
    print(f"{verb} {summary.sent} events to {args.topic or kafka.events_topic} "
          f"({summary.without_key} without a project_id key) in {summary.seconds:.1f}s, {summary.rate:.0f} events/s")
    return 0
