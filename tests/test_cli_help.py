"""`kafka-pipeline --help` lists one short line per command; each command's --help has the detail."""

from __future__ import annotations

import re

import pytest

from kafka_pipeline.cli import command_modules, main


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
