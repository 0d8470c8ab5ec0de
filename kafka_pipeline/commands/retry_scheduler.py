"""`kafka-pipeline retry-scheduler`: send retry messages back to their target topic when they are due."""

from __future__ import annotations

import argparse

from kafka_pipeline.commands.arguments import apply_overrides, port, positive_float, positive_int
from kafka_pipeline.config import load_settings
from kafka_pipeline.lifecycle.signals import run_worker
from kafka_pipeline.workers.retry.scheduler import RetryScheduler

NAME = "retry-scheduler"
HELP = "Run the retry scheduler: due retries back to their topic."
DESCRIPTION = (
    "Consume the retry topic and send each message back to its retry-target-topic no earlier than its "
    "retry-due-at header; retry headers are kept so the worker knows the attempt. Bad headers go to the DLQ. "
    "SIGTERM/SIGINT: commit what was sent and exit 0."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS / config)")
    parser.add_argument("--topic", help="retry topic to consume (default: KAFKA_RETRY_TOPIC / config)")
    parser.add_argument("--http-port", type=port,
                        help="ops HTTP port for /metrics and /health (default: KP_WORKER__HTTP_PORT; 0 = off)")
    parser.add_argument("--max-waiting", type=positive_int, metavar="N",
                        help="messages held in memory per retry partition before it is paused "
                             "(default: KP_RETRY__MAX_WAITING_PER_PARTITION / config, 10000)")
    parser.add_argument("--stats-interval", type=positive_float, metavar="SECONDS",
                        help="seconds between stats log lines (default: KP_RETRY__STATS_INTERVAL_S / config, 30)")


def run(args: argparse.Namespace) -> int:
    settings = apply_overrides(load_settings(), {
        "kafka.bootstrap_servers": args.bootstrap_servers,
        "kafka.retry_topic": args.topic,
        "worker.http_port": args.http_port,
        "retry.max_waiting_per_partition": args.max_waiting,
        "retry.stats_interval_s": args.stats_interval,
    })
    return run_worker(settings, lambda: RetryScheduler(settings))
