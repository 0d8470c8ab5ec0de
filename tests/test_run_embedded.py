"""The README's first command: `kafka-pipeline run --until-drained` on the bundled sample."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kafka_pipeline.claimx.events import parse_event
from kafka_pipeline.claimx.handlers import handler_for
from kafka_pipeline.claimx.schemas import TABLES
from kafka_pipeline.commands.run import bundled_sample
from kafka_pipeline.delta.maintenance import table_row_counts


def test_run_until_drained_writes_every_table(tmp_path: Path) -> None:
    tables = tmp_path / "delta"
    result = subprocess.run(
        [sys.executable, "-m", "kafka_pipeline", "run", "--until-drained", "--timeout-s", "240",
         "--tables-root", str(tables), "--log-dir", str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:] + "".join(
        p.read_text()[-2000:] for p in (tmp_path / "logs").glob("*.log"))
    counts = table_row_counts(str(tables), list(TABLES))
    assert set(counts) == set(TABLES) and all(counts.values()), counts
    for name, count in counts.items():  # the printed summary is what the tables hold
        assert any(line.split() == [name, str(count)] for line in result.stdout.splitlines()), (name, result.stdout)

    lines = bundled_sample().read_text().splitlines()
    events = [parse_event(line.encode()) for line in lines]
    handled = {e.trace_id for e in events if handler_for(e.event_type) is not None}
    assert counts["claimx_events"] == len(handled)
    assert counts["claimx_projects"] == len({e.project_id for e in events})
    assert ["dead", "letters", "0"] in [line.split() for line in result.stdout.splitlines()]
