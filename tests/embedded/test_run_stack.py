"""`kafka-pipeline run`, then the other commands beside it, as a new user types them: no flag, no
variable. They find the stack in data/stack.json, say so in one line, and `status` shows the three
workers ready with their metrics. Ctrl-C ends `run` with a stop line and removes the file."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from kafka_pipeline.claimx.events import parse_event
from kafka_pipeline.claimx.handlers import handler_for
from kafka_pipeline.commands.run import bundled_sample
from kafka_pipeline.config import load_settings
from kafka_pipeline.embedded.stack_file import read_stack_file, write_stack_file
from tests.fixtures.waiting import wait_until

# what would point a command elsewhere than the stack file
CONFIGURING = ("KAFKA_BOOTSTRAP_SERVERS", "KP_KAFKA__BOOTSTRAP_SERVERS", "DELTA_TABLES_ROOT", "KP_DELTA__TABLES_ROOT", "KP_ENV", "KP_STACK_FILE")


def test_commands_beside_run_use_its_stack_and_status_shows_the_workers(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in CONFIGURING}
    out = tmp_path / "run.out"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kafka_pipeline", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)

    with out.open("w") as stdout:
        run = subprocess.Popen([sys.executable, "-m", "kafka_pipeline", "run", "--log-dir", "logs"], cwd=tmp_path, env=env,
                               stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True)  # a terminal's process group
    try:
        wait_until(lambda: "running; Ctrl-C stops everything" in out.read_text() or run.poll() is not None, "run to start")
        printed = out.read_text()
        assert run.poll() is None, printed
        assert "workers     ready: enrich, write, retry-scheduler" in printed, printed
        stack = read_stack_file(tmp_path / "data" / "stack.json")
        assert stack is not None and stack.pid == run.pid and set(stack.ops_urls) == {"enrich", "write", "retry-scheduler"}
        assert f"KAFKA_BOOTSTRAP_SERVERS={stack.bootstrap_servers} (tansu)" in printed

        lines = [parse_event(line.encode()) for line in bundled_sample().read_text().splitlines()]
        handled = sum(1 for e in lines if handler_for(e.event_type) is not None)
        assert handled < len(lines)  # the sample has events of a type no handler knows

        def settled() -> dict[str, Any] | None:
            done = cli("status", "--json")
            report = json.loads(done.stdout)
            workers = {w["name"]: w for w in report["workers"]}
            events = workers.get("enrich", {}).get("metrics", {}).get("events")
            written = {t["table"]: t["rows"] for t in report["tables"]}.get("claimx_events")
            # the writer counts its rows after the flush's last table commit: a scrape between the two sees the rows
            # in the table and no count yet
            counted = workers.get("write", {}).get("metrics", {}).get("rows written", 0) > 0
            settled = (events, written, done.returncode, counted) == (len(lines), handled, 0, True)
            return report | {"stderr": done.stderr} if settled else None

        report = wait_until(settled, "status to show every sample event processed and no problem")
        assert report["stderr"].strip() == (f"using the stack of 'kafka-pipeline run' (pid {run.pid}, data/stack.json): "
                                            f"broker {stack.bootstrap_servers} (tansu), tables {tmp_path / 'data' / 'delta'}")
        workers = {w["name"]: w for w in report["workers"]}
        assert set(workers) == {"enrich", "write", "retry-scheduler"} and all(w["ready"] for w in workers.values()), workers
        assert "retries waiting" in workers["retry-scheduler"]["metrics"]
        host = socket.gethostname()
        members = {g["group"]: g["members"] for g in report["groups"]}
        assert any(m.startswith(f"enrich-{host}-") for m in members["claimx-enrich"]), members  # client_id: name-host-pid
        shown = cli("status")
        assert "enrich" in shown.stdout and "ready      events 300" in shown.stdout and "no problems" in shown.stdout, shown.stdout

        tables = cli("tables")
        assert tables.returncode == 0 and "claimx_projects: version" in tables.stdout and " ago)" in tables.stdout, tables
        assert '"project_id"' not in tables.stdout  # no sample rows unless --samples N
        assert tables.stderr.startswith("using the stack of 'kafka-pipeline run'") and "broker" not in tables.stderr

        empty = cli("dlq", "inspect")
        assert empty.returncode == 0 and empty.stdout == "", empty
        assert empty.stderr.splitlines()[-1] == "no dead letters on claimx.dlq since its purge point"

        sent = cli("inject", "--type", "PROJECT_CREATED", "--project-id", "990001")
        assert sent.returncode == 0 and "sent PROJECT_CREATED for project 990001" in sent.stdout, sent
        wait_until(lambda: {w["name"]: w for w in json.loads(cli("status", "--json").stdout)["workers"]}["enrich"]["metrics"].get("events")
                   == len(lines) + 1, "the injected event to be processed")

        # the log an operator reads: skips counted per reason and type in the cycle line, not one line each
        enrich_log = tmp_path / "logs" / "enrich.log"
        skipped = Counter(e.event_type for e in lines if handler_for(e.event_type) is None)

        def skipped_in_cycle_lines() -> Counter[str]:
            found: Counter[str] = Counter()
            for why in re.findall(r"Cycle \d+: .*?skipped=\d+: (.*?)\) \|", enrich_log.read_text()):
                found.update({kind: int(n) for kind, n in re.findall(r"unknown type (\S+) (\d+)", why)})
            return found

        wait_until(lambda: skipped_in_cycle_lines() == skipped, f"cycle lines counting every skipped event by type: {skipped}")
        assert "skipped event of unknown type" not in enrich_log.read_text()
        # status and the commands above asked tansu for no producer id: no red ERROR line in its log
        # (but a broken pipe: a command that stops while tansu still answers its long-poll fetch)
        errors = [line for line in (tmp_path / "logs" / "tansu.log").read_text().splitlines() if "ERROR" in line and "BrokenPipe" not in line]
        assert errors == [], errors
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGINT)  # Ctrl-C: the terminal signals its whole foreground process group
        code = run.wait(timeout=120)
    printed = out.read_text()
    last = printed.rstrip().splitlines()[-1]
    # only `run` got the Ctrl-C: it stopped the workers first (they drained and committed), then the broker
    assert "exited with errors" not in printed and "exited with code" not in printed, printed[-3000:]
    assert code == 0 and last == f"stopped (Ctrl-C): workers, simulator and broker; tables kept in {tmp_path / 'data' / 'delta'}", last
    assert not (tmp_path / "data" / "stack.json").exists()
    after = cli("status")
    assert after.returncode == 2 and "using the stack" not in after.stderr  # the stack is gone: the configured broker again


def test_a_stack_file_left_by_a_run_that_is_gone_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "stack.json"
    settings = load_settings()
    write_stack_file(settings, {"enrich": "http://127.0.0.1:1"}, path)
    assert read_stack_file(path) is not None  # this process is alive
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    data = json.loads(path.read_text()) | {"pid": int(gone.stdout)}
    path.write_text(json.dumps(data))
    assert read_stack_file(path) is None
    path.write_text("{not json")
    assert read_stack_file(path) is None
