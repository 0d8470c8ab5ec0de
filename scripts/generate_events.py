#!/usr/bin/env python
"""Write a realistic ClaimX event stream as JSON lines (see kafka_pipeline.simulator.events).

    python scripts/generate_events.py --events 300 --projects 20 --seed 7 --out events.jsonl
    python scripts/generate_events.py --events 10000 --projects 500 --malformed 25 --out -   # stdout

Ids follow the simulator's id scheme, so every media, task and video id in the stream exists on
`kafka-pipeline simulate-api` (start it with the same --seed for matching field values).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from kafka_pipeline.simulator.events import generate_events, write_events
from kafka_pipeline.simulator.ids import FIRST_PROJECT_ID


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not the usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="generate_events.py", description="Write a realistic ClaimX event stream as JSON lines.")
    parser.add_argument("--events", type=int, required=True, help="number of valid events (at least --projects)")
    parser.add_argument("--projects", type=int, required=True, help="number of distinct projects")
    parser.add_argument("--seed", default="7", help="seed: same arguments, same stream (default: 7)")
    parser.add_argument("--out", required=True, help="output file, '-' for stdout")
    parser.add_argument("--malformed", type=int, default=0, help="malformed lines to mix in, beside --events (default: 0)")
    parser.add_argument("--first-project-id", type=int, default=FIRST_PROJECT_ID, help=f"first project id (default: {FIRST_PROJECT_ID})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.first_project_id < 1:
        parser.error(f"--first-project-id must be positive, got {args.first_project_id}")
    try:
        lines = generate_events(args.events, args.projects, args.seed, args.malformed, first_project_id=args.first_project_id)
    except ValueError as exc:
        parser.error(str(exc))
    if args.out == "-":
        for line in lines:
            sys.stdout.write(line + "\n")
        return 0
    out = Path(args.out)
    if not out.parent.is_dir():
        parser.error(f"--out: directory {out.parent} does not exist")
    count = write_events(out, lines)
    print(f"wrote {count} lines ({args.events} events, {args.malformed} malformed) to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
