"""`kafka-pipeline dlq list | inspect | replay | purge`: look at and act on the dead-letter topic."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from kafka_pipeline.config import KafkaSettings, load_settings
from kafka_pipeline.embedded.stack_file import use_running_stack
from kafka_pipeline.errors import UsageError
from kafka_pipeline.ops import dlq as dlq_ops
from kafka_pipeline.ops.text import printable

NAME = "dlq"
HELP = "List, inspect, replay or purge dead letters."
DESCRIPTION = "Summarise, inspect, replay or purge the dead-letter topic (reads it from its purge point to its end)."

REPLAY_HELP = (
    "Send dead letters' original key, value and headers (retry headers removed, so the attempt count starts "
    "again) back to their original topic. After the sends are acknowledged a replay marker per dead letter is "
    "written to the DLQ topic; later replays skip marked ones, so a second 'replay --all' sends nothing twice. "
    "A crash between the sends and the markers can replay those once more."
)
PURGE_HELP = (
    "Remove every dead letter now on the DLQ topic from list/inspect/replay. Kafka cannot delete single records "
    "(and tansu has no DeleteRecords), so this commits the current end offsets as the consumer group "
    "'kafka-pipeline-dlq-purged.<topic>', where every dlq command starts reading; retention frees the disk. "
    "Requires --yes."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS / config)")
    common.add_argument("--topic", help="DLQ topic (default: KAFKA_DLQ_TOPIC / config)")
    parser.epilog = "Each action takes --bootstrap-servers and --topic; 'kafka-pipeline dlq ACTION --help' for its options."
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    listing = actions.add_parser("list", parents=[common], help="count dead letters by original topic, category, error type",
                                 description="Count the dead letters not replayed yet by original topic, error category "
                                             "and error type, with totals.")
    listing.add_argument("--json", action="store_true", help="print the summary as one JSON object")

    inspect = actions.add_parser("inspect", parents=[common], help="print dead letters as JSON lines (value decoded)",
                                 description="Print dead-letter envelopes as JSON lines, oldest first, with the "
                                             "original key and value decoded (JSON, else text, else base64).")
    inspect.add_argument("--limit", type=int, metavar="N", help="print at most N")
    inspect.add_argument("--trace-id", metavar="ID", help="only the dead letters of this trace id")

    replay = actions.add_parser("replay", parents=[common], help="send dead letters back to their original topic, once",
                                description=REPLAY_HELP)
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--trace-ids", nargs="+", metavar="ID", help="replay the dead letters of these trace ids")
    which.add_argument("--all", action="store_true", help="replay every dead letter not replayed yet")
    replay.add_argument("--include-replayed", action="store_true", help="also send the ones replayed before")
    replay.add_argument("--dry-run", action="store_true", help="count what would be replayed, send nothing")
    replay.add_argument("--json", action="store_true", help="print the outcome as one JSON object")

    purge = actions.add_parser("purge", parents=[common], help="remove the dead letters (needs --yes)", description=PURGE_HELP)
    purge.add_argument("--yes", action="store_true", help="really purge")


def run(args: argparse.Namespace) -> int:
    if args.action == "purge" and not args.yes:
        raise UsageError("purge removes every dead letter on the DLQ topic; add --yes to do it")
    if args.action == "inspect" and args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}")
    settings = load_settings()
    use_running_stack(settings, bootstrap_flag=args.bootstrap_servers, tables_flag=True)
    kafka: KafkaSettings = settings.kafka
    if args.bootstrap_servers:
        kafka = kafka.model_copy(update={"bootstrap_servers": args.bootstrap_servers})
    topic = args.topic or kafka.dlq_topic
    return asyncio.run(ACTIONS[args.action](kafka, topic, args))


async def _list(kafka: KafkaSettings, topic: str, args: argparse.Namespace) -> int:
    summary = dlq_ops.summarize(await dlq_ops.read_dlq(kafka, topic))
    print(json.dumps(summary.to_json()) if args.json else dlq_ops.format_summary(summary))
    return 0


async def _inspect(kafka: KafkaSettings, topic: str, args: argparse.Namespace) -> int:
    snapshot = await dlq_ops.read_dlq(kafka, topic)
    lines = dlq_ops.inspect_entries(snapshot, trace_id=args.trace_id, limit=args.limit)
    for line in lines:
        print(printable(json.dumps(line, ensure_ascii=False)))
    if not lines:  # on stderr: stdout stays JSON lines only, for jq and friends
        which = f" with trace id {printable(args.trace_id)}" if args.trace_id else ""
        print(f"no dead letters{which} on {printable(topic)} since its purge point", file=sys.stderr)
    return 0


async def _replay(kafka: KafkaSettings, topic: str, args: argparse.Namespace) -> int:
    result = await dlq_ops.replay(kafka, topic, trace_ids=args.trace_ids, replay_all=args.all,
                                  include_replayed=args.include_replayed, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({
            "replayed": result.total, "by_topic": dict(result.replayed), "already_replayed": result.already_replayed,
            "missing_topic": dict(result.missing_topic), "refused": dict(result.refused),
            "unmatched_trace_ids": result.unmatched_trace_ids,
            "dry_run": result.dry_run,
        }))
        return 0
    verb = "would replay" if result.dry_run else "replayed"
    where = ", ".join(f"{n} to {printable(t)}" for t, n in sorted(result.replayed.items()))
    print(f"{verb} {result.total} dead letters" + (f" ({where})" if where else ""))
    if result.already_replayed:
        print(f"skipped {result.already_replayed} replayed before (--include-replayed sends them again)")
    for missing, count in sorted(result.missing_topic.items()):
        print(f"skipped {count}: original topic {printable(missing)} does not exist")
    for reason, count in sorted(result.refused.items()):
        print(f"refused {count}: {reason}")
    if result.unmatched_trace_ids:
        print(f"no dead letter for trace id(s): {printable(' '.join(result.unmatched_trace_ids))}")
    return 0


async def _purge(kafka: KafkaSettings, topic: str, args: argparse.Namespace) -> int:
    result = await dlq_ops.purge(kafka, topic)
    if not result.exists:
        print(f"DLQ topic {topic} does not exist: nothing to purge")
        return 0
    offsets = " ".join(f"{p}:{o}" for p, o in sorted(result.up_to.items()))
    print(f"purged {result.purged} records from {topic} (reads now start at partition:offset {offsets})")
    return 0


ACTIONS = {"list": _list, "inspect": _inspect, "replay": _replay, "purge": _purge}
