"""`kafka-pipeline maintain`: compact, checkpoint and vacuum the Delta tables."""

from __future__ import annotations

import argparse
import sys

from kafka_pipeline.claimx.schemas import TABLES
from kafka_pipeline.commands.arguments import add_storage_arguments, apply_storage_arguments
from kafka_pipeline.config import load_settings
from kafka_pipeline.delta.storage import check_commit_safety, storage_error, table_root
from kafka_pipeline.embedded.stack_file import use_running_stack
from kafka_pipeline.errors import UsageError
from kafka_pipeline.maintenance.operations import DEFAULT_RETENTION_HOURS, MaintenanceReport, maintain
from kafka_pipeline.ops.text import size_text

NAME = "maintain"
HELP = "Compact, checkpoint and vacuum the Delta tables."
DESCRIPTION = (
    "Compact small files (or --sort-by-key: rewrite sorted by the merge key), write a checkpoint and vacuum "
    "files older than --retention-hours, for each table and its merge-clock table. Without --apply nothing "
    "is changed: it prints the plan per table (files a compaction would rewrite, the checkpoint version, the "
    "files vacuum would delete)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", action="append", choices=sorted(TABLES), metavar="NAME",
                        help="only this table (repeatable; default: all)")
    parser.add_argument("--retention-hours", type=int, default=DEFAULT_RETENTION_HOURS, metavar="H",
                        help=f"vacuum keeps unreferenced files younger than this (default {DEFAULT_RETENTION_HOURS})")
    parser.add_argument("--apply", "--no-dry-run", dest="apply", action="store_true",
                        help="really compact, checkpoint and vacuum (default: print the plan, change nothing)")
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
    use_running_stack(settings, bootstrap_flag=True, tables_flag=args.tables_root)
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
            print(f"{label}: not created yet" if report is None else _line(label, report, vacuum=not args.skip_vacuum))
    if not args.apply:
        print("dry run: nothing changed; add --apply to do it")
    return 1 if failures else 0


def _line(label: str, report: MaintenanceReport, *, vacuum: bool) -> str:
    if report.vacuum_dry_run:
        return _plan_line(label, report, vacuum=vacuum)
    parts = []
    if report.compacted is not None:
        parts.append(f"compacted {report.compacted.get('numFilesRemoved', 0)} files into {report.compacted.get('numFilesAdded', 0)}")
    if report.checkpoint_version is not None:
        parts.append(f"checkpoint at version {report.checkpoint_version}")
    if vacuum:
        parts.append(f"vacuum deleted {len(report.vacuumed)} files")
    return f"{label}: " + (", ".join(parts) or "nothing asked")


def _plan_line(label: str, report: MaintenanceReport, *, vacuum: bool) -> str:
    parts = []
    plan = report.compaction_plan
    if plan is not None and plan.sort_by:
        parts.append(f"would rewrite {plan.files} files ({size_text(plan.size_bytes)}) sorted by {', '.join(plan.sort_by)}")
    elif plan is not None:
        parts.append(f"would compact {plan.files} files below the target size ({size_text(plan.size_bytes)})" if plan.files > 1
                     else "nothing to compact")
    if report.checkpoint_plan_version is not None:
        parts.append(f"would checkpoint at version {report.checkpoint_plan_version}")
    if vacuum:
        parts.append(f"vacuum would delete {len(report.vacuumed)} files")
    return f"{label} (plan): " + (", ".join(parts) or "nothing asked")
