"""`kafka-pipeline maintain`: compact, checkpoint and vacuum the Delta tables."""

from __future__ import annotations

import argparse
import sys

from kafka_pipeline.claimx.schemas import TABLES
from kafka_pipeline.config import load_settings
from kafka_pipeline.delta.maintenance import DEFAULT_RETENTION_HOURS, MaintenanceReport, maintain
from kafka_pipeline.delta.table_writer import clock_table_uri, table_uri
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
                        help="rewrite the data sorted by the merge key (Z-order) instead of a plain compaction")
    parser.add_argument("--skip-compact", action="store_true", help="no compaction")
    parser.add_argument("--skip-checkpoint", action="store_true", help="no checkpoint")
    parser.add_argument("--skip-vacuum", action="store_true", help="no vacuum")
    parser.add_argument("--tables-root", metavar="URI", help="folder or URI holding the tables (default: DELTA_TABLES_ROOT / config)")


def run(args: argparse.Namespace) -> int:
    if args.retention_hours < 0:
        raise UsageError(f"--retention-hours must be 0 or more, got {args.retention_hours}")
    settings = load_settings()
    root = args.tables_root or settings.delta.tables_root
    failures = 0
    for name in dict.fromkeys(args.table or list(TABLES)):
        keys = TABLES[name].merge_keys if args.sort_by_key else ()
        for label, uri in ((name, table_uri(root, name)), (f"{name} (merge clocks)", clock_table_uri(root, name))):
            try:
                report = maintain(
                    uri,
                    compact=not args.skip_compact,
                    sort_by=keys,
                    checkpoint=not args.skip_checkpoint,
                    vacuum=not args.skip_vacuum,
                    retention_hours=args.retention_hours,
                    dry_run=not args.apply,
                    storage_options=settings.delta.storage_options,
                )
            except Exception as exc:  # noqa: BLE001 - report per table and go on with the others
                failures += 1
                print(f"{label}: failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
                      file=sys.stderr)
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
