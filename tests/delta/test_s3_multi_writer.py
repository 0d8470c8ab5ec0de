"""Several writers, exactly once, on S3: two and three `kafka-pipeline write` processes in one
consumer group on the same tables (partitions split between them), SIGKILLed and restarted at
random moments. The tables must equal those of one clean writer, every table's log must have
every version exactly once, and the commit conflicts the writers hit are counted in
`claimx_writer_commit_conflicts` (printed: they depend on timing).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from kafka_pipeline.claimx.schemas import TABLES
from kafka_pipeline.config import KafkaSettings
from kafka_pipeline.delta.storage import TableRoot
from tests.fixtures.ports import free_port
from tests.fixtures.s3 import S3Server
from tests.fixtures.s3_tables import contents, log_keys
from tests.fixtures.writer import (
    _start_writer,
    _wait_for_log,
    _writer_env,
    build_stream,
    encoded,
    produce,
    reference,
    run_until_committed,
    table_contents,
    wait_committed,
    writer_settings,
)

KILLS = 2
KILL_WINDOW_S = (0.5, 6.0)  # after every writer has its partitions
_CONFLICTS = re.compile(r'^claimx_writer_commit_conflicts_total\{table="[^"]+"\} ([0-9.e+]+)$', re.M)


@dataclass
class _Writer:
    name: str
    env: dict[str, str]
    log: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    conflicts_seen: list[float] = field(default_factory=list)  # per incarnation, scraped before it ends

    async def start(self, *, wait_joined: bool = True) -> None:
        self.port = free_port()
        start = len(self.log.read_text()) if self.log.exists() else 0
        self.process = _start_writer({**self.env, "KP_WORKER__HTTP_PORT": str(self.port), "WORKER_NAME": self.name}, self.log)
        if wait_joined:
            await _wait_for_log(self.log, "partitions assigned", start, self.process, timeout_s=90)

    async def scrape_conflicts(self) -> None:
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                text = (await http.get(f"http://127.0.0.1:{self.port}/metrics")).text
            self.conflicts_seen.append(sum(float(n) for n in _CONFLICTS.findall(text)))
        except httpx.HTTPError:
            self.conflicts_seen.append(0.0)  # mid-start: nothing counted yet

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def wait_exit(self, timeout_s: float) -> int | None:
        """The exit code after SIGTERM, or None (then killed) when it did not stop in time."""
        assert self.process is not None
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None


@pytest.mark.slow
@pytest.mark.parametrize("writers", [2, 3])
async def test_writers_killed_at_random_on_s3_equal_one_clean_writer(
    writers: int, kafka_settings: KafkaSettings, s3_server: S3Server, s3_root: TableRoot, tmp_path: Path
) -> None:
    stream = build_stream(seed=40 + writers, events=40)
    group = f"multi-{uuid.uuid4().hex[:8]}"
    env = _writer_env(kafka_settings, s3_root.uri, group, KP_DELTA__STORAGE_OPTIONS=json.dumps(dict(s3_root.storage_options)),
                      KP_WRITER__MAX_ROWS="40", KP_WRITER__MAX_LATENCY_S="0.3")
    procs = [_Writer(f"writer-{i}", env, tmp_path / f"writer-{i}.log") for i in range(writers)]
    rng = random.Random(20261201 + writers)
    try:
        await asyncio.gather(*(w.start() for w in procs))
        # every member holds partitions before the stream arrives: they flush at the same moments
        ends = await produce(kafka_settings, encoded(stream))
        started = time.monotonic()
        kills = sorted(rng.uniform(*KILL_WINDOW_S) for _ in range(KILLS))
        done: list[tuple[float, str]] = []
        for at in kills:
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            victim = rng.choice(procs)
            await victim.scrape_conflicts()
            victim.kill()
            done.append((round(time.monotonic() - started, 1), victim.name))
            await victim.start(wait_joined=False)  # a fresh process; the next kill may come before it joined
        await wait_committed(kafka_settings, group, ends, timeout_s=240)
        for w in procs:
            await w.scrape_conflicts()
    finally:
        # SIGTERM to every member at once, as a deployment stops: each flushes, commits, leaves
        running = [w for w in procs if w.process is not None and w.process.poll() is None]
        for w in running:
            assert w.process is not None
            w.process.send_signal(signal.SIGTERM)
        codes = [w.wait_exit(90) for w in running]
    assert codes == [0] * writers, "\n".join(w.log.read_text()[-3000:] for w in procs)
    assert len(done) == KILLS

    clean = str(tmp_path / "clean")
    await run_until_committed(writer_settings(kafka_settings, clean, f"clean-{uuid.uuid4().hex[:8]}", max_rows=200), ends)
    assert contents(s3_root) == table_contents(clean) == reference(stream)
    for name in TABLES:  # every version of every table's log is there once: none lost, none overwritten
        for uri in (s3_root.table_uri(name), s3_root.clock_table_uri(name)):
            versions = log_keys(s3_server, s3_root, uri)
            assert versions == list(range(len(versions))), (uri, versions)
    conflicts = {w.name: w.conflicts_seen for w in procs}
    print(f"{writers} writers: kills {done}; commit conflicts retried per incarnation {conflicts}")
