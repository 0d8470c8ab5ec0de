"""`kafka-pipeline acls`: the broker ACLs each worker needs, printed or applied."""

from __future__ import annotations

import argparse
import asyncio

from kafka_pipeline.commands.arguments import apply_overrides
from kafka_pipeline.config import load_settings
from kafka_pipeline.errors import UsageError
from kafka_pipeline.kafka.clients import ensure_topics
from kafka_pipeline.ops.acls import Role, acl_lines, apply_acls, parse_principal, pipeline_acls

NAME = "acls"
HELP = "Print or apply the broker ACLs each worker needs."
DESCRIPTION = (
    "The ACLs that let each worker read and write exactly its own topics and consumer group, and nothing "
    "else (README, Failure handling). Without --apply, prints them as kafka-acls.sh commands; with --apply, "
    "creates them on the broker as the configured principal, which must be allowed to alter ACLs (a super "
    "user). Topic and group names come from the settings. Principals default to User:kafka-pipeline-enrich, "
    "-writer, -retry-scheduler, -operator and User:claimx-source (the producer of the events topic)."
)


def _principal(text: str) -> tuple[Role, str]:
    try:
        return parse_principal(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--principal", type=_principal, action="append", default=[], metavar="ROLE=User:NAME",
                        help="the principal of a role: enrich, writer, retry-scheduler, operator, source (repeatable)")
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS / config)")
    parser.add_argument("--command-config", metavar="FILE", help="printed as kafka-acls.sh --command-config FILE")
    parser.add_argument("--apply", action="store_true", help="create the ACLs on the broker instead of printing them")
    parser.add_argument("--create-topics", action="store_true",
                        help="with --apply: first create the pipeline's four topics that are missing (the workers may not: "
                             "their ACLs allow no Create)")


def run(args: argparse.Namespace) -> int:
    settings = apply_overrides(load_settings(), {"kafka.bootstrap_servers": args.bootstrap_servers})
    acls = pipeline_acls(settings, dict(args.principal))
    if args.create_topics and not args.apply:
        raise UsageError("--create-topics goes with --apply")
    if args.apply:
        if args.create_topics:
            kafka = settings.kafka
            asyncio.run(ensure_topics(kafka, [kafka.events_topic, kafka.entity_rows_topic, kafka.retry_topic, kafka.dlq_topic]))
        created = asyncio.run(apply_acls(settings, acls))
        print(f"created {created} ACLs on {settings.kafka.bootstrap_servers}")
    else:
        print("\n".join(acl_lines(acls, bootstrap_servers=settings.kafka.bootstrap_servers, command_config=args.command_config)))
    return 0
