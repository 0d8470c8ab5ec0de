"""The `kafka-pipeline` command: subcommands live in `kafka_pipeline.commands`."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from kafka_pipeline import __version__, commands
from kafka_pipeline.errors import UserError, WorkerFailed


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not the usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def command_modules() -> list[ModuleType]:
    found = [importlib.import_module(f"{commands.__name__}.{m.name}") for m in pkgutil.iter_modules(commands.__path__)]
    return sorted((m for m in found if hasattr(m, "NAME")), key=lambda m: m.NAME)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kafka-pipeline", description="ClaimX events enrichment pipeline: Kafka -> ClaimX API -> Delta Lake.",
                     epilog="'kafka-pipeline COMMAND --help' tells more about a command.",
                     formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=26, width=88))
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in command_modules():  # one short HELP line per command here; DESCRIPTION in the command's --help
        command = sub.add_parser(module.NAME, help=module.HELP, description=module.DESCRIPTION)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # aiokafka logs every failed connection attempt; a command reports the outcome in one line.
    # Long-running workers turn its warnings back on in configure_logging.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        return int(args.run(args) or 0)
    except (UserError, FileNotFoundError) as exc:  # the user's to fix: one line, no traceback
        print(f"kafka-pipeline {args.command}: {exc}", file=sys.stderr)
        return 2
    except WorkerFailed as exc:  # the worker stopped on a failure of its own; what it finished is committed
        print(f"kafka-pipeline {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
