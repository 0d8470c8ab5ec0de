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

from aiokafka.errors import ClusterAuthorizationFailedError, GroupAuthorizationFailedError, KafkaError, TopicAuthorizationFailedError

from kafka_pipeline import __version__, commands
from kafka_pipeline.errors import UserError, WorkerFailed


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not the usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def command_modules(name: str | None = None) -> list[ModuleType]:
    """Every command module, or only the one for command `name` when it has its own module
    (`retry-scheduler` -> commands/retry_scheduler.py): running one command imports only what it needs."""
    available = {m.name for m in pkgutil.iter_modules(commands.__path__)}
    chosen = sorted(available)
    if name is not None and name.replace("-", "_") in available:
        chosen = [name.replace("-", "_")]
    found = [importlib.import_module(f"{commands.__name__}.{module}") for module in chosen]
    return sorted((m for m in found if hasattr(m, "NAME")), key=lambda m: m.NAME)


def build_parser(modules: Sequence[ModuleType]) -> argparse.ArgumentParser:
    parser = _Parser(prog="kafka-pipeline", description="ClaimX events enrichment pipeline: Kafka -> ClaimX API -> Delta Lake.",
                     epilog="'kafka-pipeline COMMAND --help' tells more about a command.",
                     formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=26, width=88))
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in modules:  # one short HELP line per command here; DESCRIPTION in the command's --help
        command = sub.add_parser(module.NAME, help=module.HELP, description=module.DESCRIPTION)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


# what a broker with ACLs answers a principal it does not allow (one line, never a traceback)
AUTHORIZATION_ERRORS = (TopicAuthorizationFailedError, GroupAuthorizationFailedError, ClusterAuthorizationFailedError)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # the first argument names the command: only its module is imported (`--help` and typos get all)
    named = argv[0] if argv and not argv[0].startswith("-") else None
    modules = command_modules(named)
    if named is None or [m.NAME for m in modules] != [named]:
        modules = command_modules()
    args = build_parser(modules).parse_args(argv)
    # aiokafka logs every failed connection attempt; a command reports the outcome in one line.
    # Long-running workers turn its warnings back on in configure_logging.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        return int(args.run(args) or 0)
    except (UserError, FileNotFoundError) as exc:  # the user's to fix: one line, no traceback
        print(f"kafka-pipeline {args.command}: {exc}", file=sys.stderr)
        return 2
    except AUTHORIZATION_ERRORS as exc:  # the broker's ACLs do not allow this principal what the command asked
        what = ", ".join(str(arg) for arg in exc.args if arg) or "-"
        print(f"kafka-pipeline {args.command}: the broker refused the principal ({type(exc).__name__}: {what[:200]}); "
              "its ACLs are listed by `kafka-pipeline acls`", file=sys.stderr)
        return 2
    except KafkaError as exc:  # any other answer of the broker a command could not go on with (a coordinator still loading...)
        print(f"kafka-pipeline {args.command}: the broker answered {type(exc).__name__}: {' '.join(str(exc).split())[:200]}", file=sys.stderr)
        return 2
    except WorkerFailed as exc:  # the worker stopped on a failure of its own; what it finished is committed
        print(f"kafka-pipeline {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
