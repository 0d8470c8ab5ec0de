"""`kafka-pipeline --help` lists one short line per command; each command's --help has the detail."""

from __future__ import annotations

import argparse
import re

import pytest

from kafka_pipeline.claimx.handlers import HANDLERS
from kafka_pipeline.cli import build_parser, command_modules, main


def test_top_level_help_has_one_short_line_per_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for module in command_modules():
        assert "\n" not in module.HELP and len(module.HELP) <= 60, module.NAME
        # the summary is whole on one line (after the name, or on the next line for a long name)
        assert re.search(rf"^\s+({re.escape(module.NAME)}\s+)?{re.escape(module.HELP)}$", out, re.M), (module.NAME, out)


@pytest.mark.parametrize("module", command_modules(), ids=lambda m: m.NAME)
def test_command_help_carries_the_description(module: object, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([module.NAME, "--help"])  # type: ignore[attr-defined]
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert " ".join(module.DESCRIPTION.split()) in out  # type: ignore[attr-defined]
    assert len(module.DESCRIPTION) >= len(module.HELP)  # type: ignore[attr-defined]


def _parsers(parser: argparse.ArgumentParser, path: str = "kafka-pipeline") -> list[tuple[str, argparse.ArgumentParser]]:
    """The parser and every subcommand's (and sub-subcommand's) parser below it."""
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _parsers(sub, f"{path} {name}")
    return found


def test_every_flag_of_every_command_has_help() -> None:
    missing = [f"{path} {'/'.join(action.option_strings) or action.dest}"
               for path, parser in _parsers(build_parser(command_modules()))
               for action in parser._actions
               if not isinstance(action, argparse._SubParsersAction) and not (action.help and action.help.strip())]
    assert missing == []


def test_inject_help_lists_the_event_types(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["inject", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert HANDLERS and all(event_type in out for event_type in HANDLERS)
