"""`kafka-pipeline status`: groups, lag, dead letters, retries, tables and workers at a glance."""

from __future__ import annotations

import argparse
import asyncio
import json

from kafka_pipeline.commands.arguments import apply_overrides
from kafka_pipeline.config import load_settings
from kafka_pipeline.embedded.stack_file import use_running_stack
from kafka_pipeline.ops.status import collect, format_status

NAME = "status"
HELP = "Show lag, dead letters, retries, tables and readiness."
DESCRIPTION = (
    "One view to look at first. Per consumer group (enrich, writer, retry scheduler): members, and per partition "
    "the committed offset, end offset and lag. The dead letters since the DLQ's purge point by error category; "
    "the retry backlog and when the next retry is due; per Delta table its version, last commit, freshness and "
    "row count (from the log's numRecords statistics: no data file is read); with --ops-url, each worker's "
    "/health/ready and a few of its metrics. Beside a running 'kafka-pipeline run' (its data/stack.json) "
    "and with nothing else configured, it looks at that stack and its three workers. Reads only: joins no group, commits nothing. "
    "Exit status 0 when all is well, 1 when a "
    "problem is listed (a group with lag and no member, dead letters, overdue retries, a worker not ready), "
    "2 when the broker is unreachable or an argument is wrong."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS / config)")
    parser.add_argument("--tables-root", help="Delta tables folder or URI (default: DELTA_TABLES_ROOT / config)")
    parser.add_argument("--ops-url", action="append", default=[], metavar="URL",
                        help="a worker's ops base URL, e.g. http://enrich:9100 (repeat for each worker; "
                             "default: the workers of a running 'kafka-pipeline run')")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")


def run(args: argparse.Namespace) -> int:
    settings = apply_overrides(load_settings(), {
        "kafka.bootstrap_servers": args.bootstrap_servers,
        "delta.tables_root": args.tables_root,
    })
    stack = use_running_stack(settings, bootstrap_flag=args.bootstrap_servers, tables_flag=args.tables_root)
    same_broker = stack is not None and stack.bootstrap_servers == settings.kafka.bootstrap_servers
    ops_urls = args.ops_url or (stack.ops_urls if stack is not None and same_broker else {})
    status = asyncio.run(collect(settings, ops_urls))
    print(json.dumps(status.to_json()) if args.json else format_status(status))
    return 1 if status.problems else 0
