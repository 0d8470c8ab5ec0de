"""`kafka-pipeline maintain`: compact, checkpoint and vacuum the Delta tables."""

from __future__ import annotations

import argparse
import sys

from kafka_pipeline.claimx.schemas import TABLES
from kafka_pipeline.commands.arguments import add_storage_arguments, apply_storage_arguments
from kafka_pipeline.config import load_settings
from kafka_pipeline.delta.maintenance import DEFAULT_RETENTION_HOURS, MaintenanceReport, maintain
from kafka_pipeline.delta.storage import check_commit_safety, storage_error, table_root
from kafka_pipeline.errors import UsageError

NAME = "maintain"
HELP = "Compact, checkpoint and vacuum the Delta tables."
DESCRIPTION = (
    "Compact small files (or --sort-by-key: rewrite sorted by the merge key), write a checkpoint and vacuum "
    "files older than --retention-hours, for each table and its merge-clock table. Vacuum is a dry run "
    "(lists what it would delete) unless --apply / --no-dry-run."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", action="append", choices=sorted(TABLES), metavar="NAME",
                        help="only this table (repeatable; default: all)")
    parser.add_argument("--retention-hours", type=int, default=DEFAULT_RETENTION_HOURS, metavar="H",
                        help=f"vacuum keeps unreferenced files younger than this (default {DEFAULT_RETENTION_HOURS})")
    parser.add_argument("--apply", "--no-dry-run", dest="apply", action="store_true",
                        help="really delete the files vacuum finds (default: dry run)")
    parser.add_argument("--sort-by-key", action="store_true",
                        help="rewrite the data sorted by the merge key (claimx_events: by event_time) instead of a plain compaction")
    parser.add_argument("--skip-compact", action="store_true", help="no compaction")
    parser.add_argument("--skip-checkpoint", action="store_true", help="no checkpoint")
    parser.add_argument("--skip-vacuum", action="store_true", help="no vacuum")
    add_storage_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.retention_hours < 0:
        raise UsageError(f"--retention-hours must be 0 or more, got {args.retention_hours}")
    settings = apply_storage_arguments(load_settings(), args)
    # compaction and checkpoints are commits too: the same refusal as the writer's
    check_commit_safety(settings.delta.storage_options, single_writer_acknowledged=settings.delta.single_writer_acknowledged)
    root = table_root(settings.delta)
    failures = 0
    for name in dict.fromkeys(args.table or list(TABLES)):
        spec = TABLES[name]
        # the event log is laid out by time (its MERGE prunes by event_time): sorting it by its hashed key would undo that
        layout = ("event_time",) if spec.fixed_event_time else spec.merge_keys
        keys = layout if args.sort_by_key else ()
        for label, uri in ((name, root.table_uri(name)), (f"{name} (merge clocks)", root.clock_table_uri(name))):
            try:
                report = maintain(
                    uri,
                    compact=not args.skip_compact,
                    sort_by=keys,
                    checkpoint=not args.skip_checkpoint,
                    vacuum=not args.skip_vacuum,
                    retention_hours=args.retention_hours,
                    dry_run=not args.apply,
                    storage_options=root.storage_options,
                )
            except Exception as exc:  # noqa: BLE001 - report per table and go on with the others
                failures += 1
                plain = storage_error(exc, root.display())
                reason = str(plain) if plain else f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                print(f"{label}: failed: {reason}", file=sys.stderr)
                continue
            print(f"{label}: not created yet" if report is None else _line(label, report))
    return 1 if failures else 0


def _line(label: str, report: MaintenanceReport) -> str:
    parts = []
    if report.compacted is not None:
        parts.append(f"compacted {report.compacted.get('numFilesRemoved', 0)} files into {report.compacted.get('numFilesAdded', 0)}")
    if report.checkpoint_version is not None:
        parts.append(f"checkpoint at version {report.checkpoint_version}")
    verb = "would delete" if report.vacuum_dry_run else "deleted"
    parts.append(f"vacuum {verb} {len(report.vacuumed)} files")
    return f"{label}: " + ", ".join(parts)
