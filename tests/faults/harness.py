"""Drive the whole pipeline (EmbeddedStack: the session's broker, a simulator, three worker
processes) through one run of a generated stream, optionally with API faults and SIGKILLs, and
collect what it left.

`run_pipeline` is the one entry point: it starts a fresh stack on the given broker (topics and
consumer groups of its own, its own simulator and tables folder), replays the stream, kills and restarts workers on a schedule, runs an optional
`before_drain` step (look at the stack mid-run, then repair what the run broke), waits until the
pipeline drained, stops the workers gracefully and returns a `PipelineRun` with the tables, the
dead letters, the simulator's request counts and how often each worker was started.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from kafka_pipeline.claimx.events import parse_event
from kafka_pipeline.claimx.handlers import handler_for
from kafka_pipeline.claimx.schemas import TABLES
from kafka_pipeline.config import KafkaSettings, Settings, load_settings
from kafka_pipeline.dead_letters.envelope import DeadLetter
from kafka_pipeline.embedded.stack import WORKER_COMMANDS, DrainStatus, EmbeddedStack
from kafka_pipeline.errors import PermanentError
from kafka_pipeline.offsets.topic_offsets import high_watermarks
from kafka_pipeline.ops.dlq import DlqSnapshot, read_dlq
from kafka_pipeline.ops.replay import replay
from kafka_pipeline.ops.replay_sources import FileSource
from kafka_pipeline.simulator.events import MALFORMED_KINDS, generate_events, write_events
from kafka_pipeline.workers.writer.entity_writer import read_table
from tests.fixtures.broker import unique_topics

# Columns that record when the writer wrote a row, not what the stream said: the only ones
# allowed to differ between two runs of the same stream.
WALL_CLOCK_COLUMNS = ("created_at", "updated_at")

# The same stream and simulator data in every run.
SIMULATOR_SEED = 7
# Realistic but quick answers in every run (the fault run adds its faults on top).
BASE_SIMULATOR_OPTIONS: dict[str, object] = {"seed": SIMULATOR_SEED, "latency_ms": 2.0, "jitter_ms": 8.0}

RETRY_DELAYS_S = (1, 2, 4, 8, 16)
API_RETRIES = 2  # in-process retries of one API call: 3 attempts in all


def worker_env(**overrides: str) -> dict[str, str]:
    """Settings for every worker process of a test run (KP_<SECTION>__<FIELD> names).

    - Session timeout 6 s (the brokers' minimum): tansu holds a group join for about half of
      it, and on either broker a SIGKILLed member is only evicted when it expires, so restarts
      cost seconds, not half a minute.
    - Client timeout 1 s (the simulator's timeout fault hangs 2 s), short in-process backoff,
      delayed retries after 1, 2, 4, 8, 16 s.
    - Small, frequent writer flushes so a writer kill lands between Delta commits.
    - Project cache TTL of a microsecond: every event that ensures its project emits the
      project's rows (a hit, which emits nothing, would need two asyncio steps within 1 us).
      Whether an event hits the cache depends on timing, restarts and retries; with hits the
      `event_time`/`trace_id` of `claimx_projects` and `claimx_contacts` would depend on them
      too, and two runs of one stream could not be compared column for column. The rows the
      cache would have saved are merged idempotently, so the tables' content is the same.
      (Background refresh needs a hit as well, so it never runs and never writes "now".)
    """
    env = {
        "KP_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "KP_API__TIMEOUT_S": "1",
        "KP_API__RETRIES": str(API_RETRIES),
        "KP_API__BACKOFF_BASE_S": "0.1",
        "KP_API__BACKOFF_MAX_S": "2",
        "KP_RETRY__DELAYS_S": json.dumps(list(RETRY_DELAYS_S)),
        "KP_WRITER__MAX_LATENCY_S": "0.5",
        "KP_WRITER__MAX_ROWS": "500",
        "KP_ENRICH__STATS_INTERVAL_S": "1",
        "KP_WRITER__STATS_INTERVAL_S": "1",
        "KP_CACHE__TTL_S": "0.000001",
        "KP_CACHE__REFRESH_AFTER_S": "0.0000005",
        "KP_CACHE__TTL_JITTER_S": "0",
        "KP_WORKER__SHUTDOWN_GRACE_S": "15",
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",  # PipelineRun.log_records reads the workers' own accounts
    }
    env.update(overrides)
    return env


# --- the stream ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Malformed:
    line: str
    kind: str  # one of MALFORMED_KINDS


@dataclass
class Stream:
    """A generated stream and what the pipeline must make of each line."""

    lines: list[str]  # in replay order, valid and malformed mixed
    malformed: list[Malformed]
    known_trace_ids: set[str]  # valid events a handler exists for: one claimx_events row each
    unknown: int  # valid events of types no handler knows: skipped

    @property
    def valid(self) -> int:
        return len(self.lines) - len(self.malformed)


def make_stream(n: int, projects: int, seed: int, malformed: int) -> Stream:
    mixed = generate_events(n, projects, seed, malformed=malformed)
    valid = generate_events(n, projects, seed)
    bad: list[Malformed] = []
    j = 0
    for line in mixed:  # the valid lines are a subsequence of the mixed ones, in order
        if j < len(valid) and line == valid[j]:
            j += 1
        else:
            bad.append(Malformed(line, MALFORMED_KINDS[len(bad) % len(MALFORMED_KINDS)]))
    assert j == len(valid) and len(bad) == malformed, "generate_events no longer mixes malformed lines into the valid ones"
    known: set[str] = set()
    unknown = 0
    for line in valid:
        event = parse_event(line)
        if handler_for(event.event_type) is None:
            unknown += 1
        else:
            known.add(event.trace_id)
    assert len(known) + unknown == len(valid), "two valid events share a trace_id"
    for item in bad:
        try:
            parse_event(item.line)
        except PermanentError:
            continue
        raise AssertionError(f"a malformed line parses: {item.line}")
    return Stream(mixed, bad, known, unknown)


# --- kills ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kill:
    at_s: float  # seconds after the replay started
    worker: str


def kill_schedule(rng: random.Random, workers: Sequence[str], per_worker: int, start_s: float, end_s: float) -> list[Kill]:
    """`per_worker` SIGKILLs of each worker at random moments in [start_s, end_s]: one in each of
    `per_worker` equal slots, so a restarted worker has time to rejoin before its next kill."""
    slot = (end_s - start_s) / per_worker
    kills = [
        Kill(round(rng.uniform(start_s + k * slot, start_s + (k + 0.8) * slot), 2), worker)
        for worker in workers
        for k in range(per_worker)
    ]
    return sorted(kills, key=lambda kill: kill.at_s)


# --- one run ---------------------------------------------------------------------------------------


@dataclass
class PipelineRun:
    name: str
    stream: Stream
    tables_root: str
    log_dir: Path
    dlq: DlqSnapshot
    simulator_stats: dict[str, Any]
    starts: dict[str, int]
    kills_done: list[tuple[float, str]]  # (seconds after replay start, worker) as they happened
    exit_codes: dict[str, int | None]
    kafka: KafkaSettings  # the run's own topic names
    topic_messages: dict[str, int]  # messages on each topic at the end (events includes forwarded retries)
    seconds: float
    drained: DrainStatus | None = None  # every group's lag once the run drained (all zero)
    _tables: dict[str, pa.Table] = field(default_factory=dict, repr=False)

    def table(self, name: str) -> pa.Table:
        """The table sorted by merge key, without the wall-clock columns."""
        if name not in self._tables:
            full = read_table(self.tables_root, name)
            self._tables[name] = full.drop_columns([c for c in WALL_CLOCK_COLUMNS if c in full.column_names])
        return self._tables[name]

    def dead_letters(self) -> list[DeadLetter]:
        return [entry.letter for entry in self.dlq.entries if entry.letter is not None]

    def dead_letters_by_origin(self) -> dict[tuple[str, int, int], list[DeadLetter]]:
        """Dead letters grouped by the original message (topic, partition, offset of its first
        failure): a worker killed after dead-lettering a message but before committing its
        offset dead-letters it again, which is at-least-once, not a second message."""
        grouped: dict[tuple[str, int, int], list[DeadLetter]] = {}
        for letter in self.dead_letters():
            grouped.setdefault((letter.original_topic, letter.partition, letter.offset), []).append(letter)
        return grouped

    def status_counts(self) -> Counter[str]:
        return Counter({str(k): int(v) for k, v in self.simulator_stats.get("status", {}).items()})

    def log_records(self, name: str, event: str) -> list[dict[str, Any]]:
        """The JSON log records of worker `name` (every incarnation) whose event is `event`."""
        records = []
        path = self.log_dir / f"{name}.log"
        for line in path.read_text(errors="replace").splitlines() if path.exists() else ():
            if line.startswith("{"):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a SIGKILL
                if record.get("event") == event:
                    records.append(record)
        return records

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return f"(no {path})"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def stack_settings(tables_root: Path, partitions: int, bootstrap_servers: str) -> Settings:
    """Topics and group ids unique to one run: runs share the session's broker."""
    settings = load_settings()
    settings.delta = settings.delta.model_copy(update={"tables_root": str(tables_root)})
    settings.kafka = unique_topics(bootstrap_servers, partitions)
    suffix = settings.kafka.events_topic.rsplit(".", 1)[-1]
    settings.enrich = settings.enrich.model_copy(update={"group_id": f"{settings.enrich.group_id}.{suffix}"})
    settings.writer = settings.writer.model_copy(update={"group_id": f"{settings.writer.group_id}.{suffix}"})
    settings.retry = settings.retry.model_copy(update={"group_id": f"{settings.retry.group_id}.{suffix}"})
    return settings


async def run_pipeline(
    name: str,
    stream: Stream,
    workdir: Path,
    *,
    bootstrap_servers: str,
    env: Mapping[str, str],
    worker_envs: Mapping[str, Mapping[str, str]] | None = None,
    simulator_faults: Mapping[str, object] | None = None,
    kills: Iterable[Kill] = (),
    replay_rate: float | None = None,
    before_drain: Callable[[EmbeddedStack], Awaitable[None]] | None = None,
    during_replay: Callable[[Settings], Awaitable[None]] | None = None,
    drain_timeout_s: float = 180.0,
    partitions: int = 6,
) -> PipelineRun:
    """One full run of `stream` on a fresh stack on the broker at `bootstrap_servers`; see the
    module docstring.

    `env` goes to every worker, `worker_envs[command]` on top for one worker. `simulator_faults`
    are `SimulatorProcess` fault options (on top of BASE_SIMULATOR_OPTIONS). `kills` SIGKILL a
    worker and start it again at once, timed from the start of the replay, which sends
    `replay_rate` lines per second (None: as fast as the broker takes them). `before_drain(stack)`
    runs once the stream is replayed and the kills are done, before the wait for the drain.
    `during_replay(settings)` runs alongside the replay (to mix other messages into the stream).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    log_dir = workdir / "logs"
    log_dir.mkdir(exist_ok=True)
    events_file = workdir / "events.jsonl"
    write_events(events_file, stream.lines)
    settings = stack_settings(workdir / "delta", partitions, bootstrap_servers)
    stack = EmbeddedStack(
        settings, log_dir=log_dir, simulator_options={**BASE_SIMULATOR_OPTIONS, **(simulator_faults or {})},
        bootstrap_servers=bootstrap_servers,
    )
    started = time.monotonic()
    kills_done: list[tuple[float, str]] = []
    exit_codes: dict[str, int | None] = {}
    try:
        stack.start_services()
        await stack.create_topics()
        for command in WORKER_COMMANDS:
            stack.start_worker(command, env={**env, **(worker_envs or {}).get(command, {})})
        replay_started = time.monotonic()

        async def chaos() -> None:
            for kill in sorted(kills, key=lambda k: k.at_s):
                await asyncio.sleep(max(0.0, replay_started + kill.at_s - time.monotonic()))
                stack.workers[kill.worker].restart()  # SIGKILL, then a fresh process
                kills_done.append((round(time.monotonic() - replay_started, 2), kill.worker))

        async def alongside() -> None:
            if during_replay is not None:
                await during_replay(settings)

        summary, _, _ = await asyncio.gather(
            replay(settings.kafka, FileSource([events_file]), rate=replay_rate, progress=False), chaos(), alongside()
        )
        assert summary.total_sent == len(stream.lines)
        if before_drain is not None:
            await before_drain(stack)
        drained = await stack.wait_until_drained(timeout_s=drain_timeout_s)
        for worker_name, worker in stack.workers.items():  # SIGTERM: drain, commit, exit
            exit_codes[worker_name] = worker.stop(settings.worker.shutdown_grace_s)
        dlq = await read_dlq(settings.kafka, settings.kafka.dlq_topic)
        kafka = settings.kafka
        topic_messages = {
            topic: sum((await high_watermarks(kafka, topic)).values())
            for topic in (kafka.events_topic, kafka.entity_rows_topic, kafka.retry_topic, kafka.dlq_topic)
        }
        assert stack.simulator is not None
        simulator_stats = stack.simulator.stats()
        starts = {worker_name: worker.starts for worker_name, worker in stack.workers.items()}
    finally:
        stack.stop()
    return PipelineRun(
        name=name,
        stream=stream,
        tables_root=settings.delta.tables_root,
        log_dir=log_dir,
        dlq=dlq,
        simulator_stats=simulator_stats,
        starts=starts,
        kills_done=kills_done,
        exit_codes=exit_codes,
        kafka=settings.kafka,
        topic_messages=topic_messages,
        seconds=time.monotonic() - started,
        drained=drained,
    )


# --- comparing tables ----------------------------------------------------------------------------


def table_differences(name: str, expected: pa.Table, actual: pa.Table, limit: int = 5) -> str:
    """Empty when equal; else a short description of how `actual` differs (by merge key)."""
    if expected.schema != actual.schema:
        return f"{name}: schema differs:\nexpected {expected.schema}\nactual   {actual.schema}"
    if expected.equals(actual):
        return ""
    keys = TABLES[name].merge_keys
    want = {tuple(row[k] for k in keys): row for row in expected.to_pylist()}
    got = {tuple(row[k] for k in keys): row for row in actual.to_pylist()}
    lines = [f"{name}: {expected.num_rows} rows expected, {actual.num_rows} found"]
    missing = [key for key in want if key not in got]
    extra = [key for key in got if key not in want]
    if missing:
        lines.append(f"  {len(missing)} keys missing, e.g. {missing[:limit]}")
    if extra:
        lines.append(f"  {len(extra)} unexpected keys, e.g. {extra[:limit]}")
    differing = [key for key in want if key in got and want[key] != got[key]]
    if differing:
        lines.append(f"  {len(differing)} rows differ, e.g.:")
        for key in differing[:limit]:
            columns = [c for c in want[key] if want[key][c] != got[key][c]]
            detail = ", ".join(f"{c}: {want[key][c]!r} != {got[key][c]!r}" for c in columns)
            lines.append(f"    {key}: {detail}")
    if len(lines) == 1:
        lines.append("  same keys and values, different row order or duplicate keys")
    return "\n".join(lines)


def reconciliation(run: PipelineRun) -> dict[str, int]:
    """The outcome counts of a run, counted from the outside (tables, DLQ, the stream)."""
    events = run.table("claimx_events")
    return {
        "consumed": len(run.stream.lines),
        "succeeded": len(set(events.column("trace_id").to_pylist())),
        "skipped": run.stream.unknown,
        "dead_lettered": len(run.dead_letters_by_origin()),
    }
