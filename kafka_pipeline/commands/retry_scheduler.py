"""`kafka-pipeline retry-scheduler`: send retry messages back to their target topic when they are due."""

from __future__ import annotations

import argparse
import asyncio

from kafka_pipeline.cli import UsageError
from kafka_pipeline.common.config import load_settings
from kafka_pipeline.common.logging import configure_logging
from kafka_pipeline.common.signals import run_until_signalled
from kafka_pipeline.common.retry_scheduler import RetryScheduler

NAME = "retry-scheduler"
HELP = (
    "Consume the retry topic and send each message back to its retry-target-topic no earlier than its "
    "retry-due-at header; retry headers are kept so the worker knows the attempt. Bad headers go to the DLQ. "
    "SIGTERM/SIGINT: commit what was sent and exit 0."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS / config)")
    parser.add_argument("--topic", help="retry topic to consume (default: KAFKA_RETRY_TOPIC / config)")
    parser.add_argument("--http-port", type=int,
                        help="ops HTTP port for /metrics and /health (default: KP_WORKER__HTTP_PORT; 0 = off)")
    parser.add_argument("--max-waiting", type=int, default=10_000, metavar="N",
                        help="messages held in memory per retry partition before it is paused (default: 10000)")
    parser.add_argument("--stats-interval", type=float, default=30.0, metavar="SECONDS",
                        help="seconds between stats log lines (default: 30)")


def run(args: argparse.Namespace) -> int:
    if args.max_waiting < 1:
        raise UsageError(f"--max-waiting must be at least 1, got {args.max_waiting}")
    if args.stats_interval <= 0:
        raise UsageError(f"--stats-interval must be > 0, got {args.stats_interval}")
    if args.http_port is not None and not 0 <= args.http_port <= 65535:
        raise UsageError(f"--http-port must be 0..65535, got {args.http_port}")
    settings = load_settings()
    if args.bootstrap_servers:
        settings.kafka.bootstrap_servers = args.bootstrap_servers
    if args.topic:
        settings.kafka.retry_topic = args.topic
    if args.http_port is not None:
        settings.worker.http_port = args.http_port
    configure_logging(settings.worker.name, log_format=settings.worker.log_format, level=settings.worker.log_level)
    scheduler = RetryScheduler(settings, max_waiting_per_partition=args.max_waiting, stats_interval_s=args.stats_interval)
    asyncio.run(run_until_signalled(lambda: scheduler))
    return 0
