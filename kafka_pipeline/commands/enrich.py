"""`kafka-pipeline enrich`: the enrichment worker (events -> ClaimX API -> entity rows)."""

from __future__ import annotations

import argparse

from kafka_pipeline.claimx.cache.admin import check_admin_exposure
from kafka_pipeline.commands.arguments import apply_overrides, port, positive_float, positive_int
from kafka_pipeline.config import load_settings
from kafka_pipeline.lifecycle.signals import run_worker

NAME = "enrich"
HELP = "Run the enrichment worker: events -> API -> entity rows."
DESCRIPTION = (
    "Consume ClaimX events, fetch what each needs from the ClaimX API (project verification through the "
    "project cache), produce one entity-rows message per event keyed by project_id; transient API failures "
    "go to the retry topic, malformed messages and permanent failures to the DLQ, unknown event types are "
    "skipped. A 401 pauses consumption (readiness reports auth_failed) until a probe every "
    "KP_API__AUTH_PROBE_INTERVAL_S seconds gets through; the token file (CLAIMX_API_TOKEN_FILE) is re-read "
    "before each probe, so a rotated secret needs no restart. At --max-in-flight events in flight the "
    "partitions are paused, not left. Offsets are committed only when every earlier event of the partition "
    "is done. SIGTERM/SIGINT: stop fetching, give in-flight events KP_WORKER__SHUTDOWN_GRACE_S to finish "
    "(the rest are replayed by the next owner), commit, exit 0."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS / config)")
    parser.add_argument("--topic", help="events topic to consume (default: KAFKA_EVENTS_TOPIC / config)")
    parser.add_argument("--api-url", help="ClaimX API base URL (default: CLAIMX_API_URL / config); the token comes from CLAIMX_API_TOKEN(_FILE)")
    parser.add_argument("--max-in-flight", type=positive_int, metavar="N",
                        help="events processed at once (default: KP_ENRICH__MAX_IN_FLIGHT / config, 256)")
    parser.add_argument("--http-port", type=port,
                        help="ops HTTP port for /metrics and /health (default: KP_WORKER__HTTP_PORT; 0 = off)")
    parser.add_argument("--stats-interval", type=positive_float, metavar="SECONDS",
                        help="seconds between cycle-stats log lines (default: KP_ENRICH__STATS_INTERVAL_S / config)")


def run(args: argparse.Namespace) -> int:
    settings = apply_overrides(load_settings(), {
        "kafka.bootstrap_servers": args.bootstrap_servers,
        "kafka.events_topic": args.topic,
        "api.url": args.api_url,
        "enrich.max_in_flight": args.max_in_flight,
        "worker.http_port": args.http_port,
        "enrich.stats_interval_s": args.stats_interval,
    })
    check_admin_exposure(settings)
    settings.api.resolved_token()  # an unreadable token file is a one-line error now, not a traceback later
    from kafka_pipeline.workers.enrich.worker import EnrichmentWorker  # noqa: PLC0415 - imports the whole domain

    return run_worker(settings, lambda: EnrichmentWorker(settings))
