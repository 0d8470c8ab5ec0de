"""`kafka-pipeline inject`: send one well-formed ClaimX event built from flags."""

from __future__ import annotations

import argparse
import asyncio

from kafka_pipeline.claimx.handlers import HANDLERS
from kafka_pipeline.claimx.handlers.base import REFRESH_PROJECT_HEADER
from kafka_pipeline.commands.arguments import point_in_time
from kafka_pipeline.config import load_settings
from kafka_pipeline.embedded.stack_file import use_running_stack
from kafka_pipeline.errors import UsageError
from kafka_pipeline.kafka.clients import ensure_topics, make_producer
from kafka_pipeline.ops.inject import InvalidEvent, build_event

NAME = "inject"
HELP = "Send one event built from flags."
DESCRIPTION = "Send one ClaimX event built from flags (validated against the event model first) to the events topic."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "event types: " + ", ".join(sorted(HANDLERS))
    parser.add_argument("--type", required=True, dest="event_type", metavar="EVENT_TYPE",
                        help="the event type, one of those listed below (e.g. PROJECT_CREATED)")
    parser.add_argument("--project-id", required=True, help="the ClaimX project id the event belongs to (the message key)")
    parser.add_argument("--media-id", help="PROJECT_FILE_ADDED")
    parser.add_argument("--task-assignment-id", help="CUSTOM_TASK_ASSIGNED / CUSTOM_TASK_COMPLETED")
    parser.add_argument("--video-collaboration-id", help="VIDEO_COLLABORATION_*")
    parser.add_argument("--master-file-name", help="PROJECT_MFN_ADDED")
    parser.add_argument("--event-id", help="the event's id (default: none, the trace id is derived)")
    parser.add_argument("--ingested-at", type=point_in_time, metavar="TIME", help="ISO-8601 or a duration ago (default: now)")
    parser.add_argument("--refresh-project", action="store_true", help="ask the enrichment worker to refetch the project")
    parser.add_argument("--dry-run", action="store_true", help="print the event, send nothing")
    parser.add_argument("--topic", help="target topic (default: the configured events topic)")
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS / config)")


def run(args: argparse.Namespace) -> int:
    try:
        raw, event = build_event(
            args.event_type, args.project_id, ingested_at=args.ingested_at, event_id=args.event_id, media_id=args.media_id,
            task_assignment_id=args.task_assignment_id, video_collaboration_id=args.video_collaboration_id,
            master_file_name=args.master_file_name,
        )
    except InvalidEvent as exc:
        raise UsageError(f"invalid event: {exc}") from None
    if args.dry_run:
        print(raw.decode())
        print(f"dry run: trace_id {event.trace_id}, nothing sent")
        return 0
    settings = load_settings()
    use_running_stack(settings, bootstrap_flag=args.bootstrap_servers, tables_flag=True)
    kafka = settings.kafka
    if args.bootstrap_servers:
        kafka = kafka.model_copy(update={"bootstrap_servers": args.bootstrap_servers})
    topic = args.topic or kafka.events_topic
    headers = [(REFRESH_PROJECT_HEADER, b"1")] if args.refresh_project else None

    async def send() -> tuple[int, int]:
        await ensure_topics(kafka, [topic])
        producer = make_producer(kafka)
        await producer.start()
        try:
            meta = await producer.send_and_wait(topic, raw, key=event.project_id.encode(), headers=headers)
        finally:
            await producer.stop()
        return meta.partition, meta.offset

    partition, offset = asyncio.run(send())
    print(raw.decode())
    print(f"sent {event.event_type} for project {event.project_id} (trace_id {event.trace_id}) to {topic} partition {partition} offset {offset}")
    return 0
