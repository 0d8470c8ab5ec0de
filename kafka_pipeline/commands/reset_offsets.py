"""`kafka-pipeline reset-offsets`: move a stopped consumer group's committed offsets on a topic."""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime

from kafka_pipeline.commands.arguments import (
    duration,
    int_list,
    non_negative_int,
    point_in_time,
)
from kafka_pipeline.config import Settings, load_settings
from kafka_pipeline.embedded.stack_file import use_running_stack
from kafka_pipeline.errors import UsageError
from kafka_pipeline.ops.dlq import PURGE_GROUP_PREFIX
from kafka_pipeline.ops.reset_offsets import (
    ResetTarget,
    active_members,
    apply_reset,
    plan_reset,
    refusal,
)

NAME = "reset-offsets"
HELP = "Move a stopped consumer group's committed offsets."
DESCRIPTION = (
    "Move a consumer group's committed offsets on a topic (earliest, latest, an offset, a time, a shift); "
    "--dry-run prints the plan; refused while the group has members."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--group", required=True, help="the consumer group")
    parser.add_argument("--topic", help="the topic (default: the one the pipeline's group of that name reads)")
    parser.add_argument("--partitions", type=int_list, metavar="P,P", help="only these partitions (default: all)")
    to = parser.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true", help="the first offset still on the broker")
    to.add_argument("--to-latest", action="store_true", help="the end of each partition (skip everything there now)")
    to.add_argument("--to-offset", type=non_negative_int, metavar="N", help="this offset in each partition (clamped to what it holds)")
    to.add_argument("--to-datetime", type=point_in_time, metavar="TIME",
                    help="the first record at or after TIME (ISO-8601, naive = UTC); needs a broker that looks up offsets by time")
    to.add_argument("--by-duration", type=duration, metavar="DURATION", help="the first record at or after DURATION ago (e.g. 12h)")
    to.add_argument("--shift-by", type=int, metavar="N", help="move each committed offset by N (negative: re-read)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS / config)")


def target_of(args: argparse.Namespace) -> ResetTarget:
    if args.to_earliest:
        return ResetTarget("earliest")
    if args.to_latest:
        return ResetTarget("latest")
    if args.to_offset is not None:
        return ResetTarget("offset", offset=args.to_offset)
    if args.shift_by is not None:
        return ResetTarget("shift", offset=args.shift_by)
    when = args.to_datetime if args.to_datetime is not None else datetime.now(UTC) - args.by_duration
    return ResetTarget("datetime", when=when)


def topic_of(args: argparse.Namespace, settings: Settings) -> str:
    if args.topic:
        return str(args.topic)
    kafka = settings.kafka
    known = {
        settings.enrich.group_id: kafka.events_topic,
        settings.writer.group_id: kafka.entity_rows_topic,
        settings.retry.group_id: kafka.retry_topic,
        f"{PURGE_GROUP_PREFIX}{kafka.dlq_topic}": kafka.dlq_topic,
    }
    if args.group not in known:
        raise UsageError(f"--topic is needed: {args.group} is not one of the pipeline's groups")
    return known[args.group]


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.bootstrap_servers:
        settings.kafka = settings.kafka.model_copy(update={"bootstrap_servers": args.bootstrap_servers})
    use_running_stack(settings, bootstrap_flag=args.bootstrap_servers, tables_flag=True)
    topic = topic_of(args, settings)
    target = target_of(args)

    async def reset() -> None:
        plan = await plan_reset(settings.kafka, args.group, topic, target, args.partitions)
        print(f"group {args.group}, topic {topic}:")
        for line in plan.lines():
            print(line)
        if args.dry_run:
            members = await active_members(settings.kafka, args.group)
            note = f" (and a reset now would be refused: {refusal(args.group, members)})" if members else ""
            print(f"dry run: nothing changed{note}")
            return
        await apply_reset(settings.kafka, plan)
        print(f"reset {len(plan.partitions)} partition(s) of {topic} for group {args.group}")

    asyncio.run(reset())
    return 0
