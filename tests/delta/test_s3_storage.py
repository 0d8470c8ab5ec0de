"""Every storage-touching path on `s3://`, against the local S3 server (tests/fixtures/s3.py):
the writer (merges, app transactions, clock tables), `tables`, `maintain`, the cache's warm
start, the embedded `run`; two commits racing for one table version; the unsafe-rename
refusal; credentials rejected; the S3 server going away in the middle of a run.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from kafka_pipeline.claimx.cache.warm import recent_project_ids
from kafka_pipeline.claimx.entity_rows import EntityRowsMessage
from kafka_pipeline.claimx.schemas import PROJECTS, TABLES
from kafka_pipeline.commands.run import bundled_sample
from kafka_pipeline.config import ConfigError, KafkaSettings, Settings, WorkerSettings
from kafka_pipeline.delta.storage import (
    StorageCredentialsRejected,
    TableRoot,
    UnsafeCommitConfig,
    check_commit_safety,
    join_uri,
    scheme_of,
    storage_error,
)
from kafka_pipeline.delta.table_writer import DeltaTableWriter, TableWriteResult, open_table
from kafka_pipeline.maintenance.operations import disk_bytes, table_row_counts
from kafka_pipeline.ops.status import table_statuses
from kafka_pipeline.workers.writer.entity_writer import EntityWriter, read_table
from kafka_pipeline.workers.writer.row_conversion import BatchBuilder
from tests.fixtures.ports import free_port
from tests.fixtures.s3 import S3Server
from tests.fixtures.s3_tables import contents, log_keys
from tests.fixtures.waiting import until
from tests.fixtures.writer import build_stream, committed, encoded, produce, reference, wait_committed, writer_settings

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)




def s3_writer_settings(kafka: KafkaSettings, root: TableRoot, group: str, **writer: Any) -> Settings:
    settings = writer_settings(kafka, root.uri, group, **writer)
    settings.delta.storage_options = dict(root.storage_options)
    settings.maintenance.enabled = False  # `maintain` is what these tests exercise; the loop has its own tests
    return settings


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KP_", "DELTA_", "AWS_"))}
    return subprocess.run([sys.executable, "-m", "kafka_pipeline", *args], cwd=REPO, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def storage_env(root: TableRoot) -> dict[str, str]:
    return {"DELTA_TABLES_ROOT": root.uri, "KP_DELTA__STORAGE_OPTIONS": json.dumps(dict(root.storage_options))}




def commit_transactions(server: S3Server, table_uri: str, version: int) -> dict[str, int]:
    """The app transactions (app id -> offset) in one commit file."""
    bucket, _, prefix = table_uri.removeprefix("s3://").partition("/")
    body = server.client().get_object(Bucket=bucket, Key=f"{prefix}/_delta_log/{version:020d}.json")["Body"].read()  # type: ignore[attr-defined]
    actions = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
    return {a["txn"]["appId"]: a["txn"]["version"] for a in actions if "txn" in a}


# -- the table root -----------------------------------------------------------------------------


def test_table_root_joins_folders_and_uris_alike() -> None:
    assert join_uri("s3://bucket/prefix/", "_clocks", "claimx_projects") == "s3://bucket/prefix/_clocks/claimx_projects"
    assert join_uri("./data/delta", "claimx_media") == "./data/delta/claimx_media"
    assert [scheme_of(u) for u in ("s3://b/p", "abfss://c@a.dfs.core.windows.net/p", "gs://b", "/tmp/x", "file:///tmp/x")] == [
        "s3", "abfss", "gs", "file", "file"]
    root = TableRoot("s3://bucket/p", {"AWS_REGION": "eu-west-1"})
    assert (root.table_uri("claimx_tasks"), root.clock_table_uri("claimx_tasks")) == ("s3://bucket/p/claimx_tasks",
                                                                                      "s3://bucket/p/_clocks/claimx_tasks")
    assert not root.is_local and root.display() == "s3://bucket/p" and TableRoot("rel/dir").display() == os.path.abspath("rel/dir")


def test_the_test_server_makes_one_of_racing_conditional_puts_win(s3_server: S3Server) -> None:
    # What delta-rs relies on for a commit: of PUTs of one new key with If-None-Match: *, one wins.
    client = s3_server.client()
    bucket = s3_server.new_bucket()
    barrier = threading.Barrier(12)
    outcomes: list[str] = []

    def put(i: int) -> None:
        barrier.wait()
        try:
            client.put_object(Bucket=bucket, Key="_delta_log/00000000000000000001.json", Body=str(i).encode(), IfNoneMatch="*")  # type: ignore[attr-defined]
            outcomes.append(f"won {i}")
        except client.exceptions.ClientError as exc:  # type: ignore[attr-defined]
            outcomes.append(exc.response["Error"]["Code"])

    threads = [threading.Thread(target=put, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1 and outcomes.count("PreconditionFailed") == 11, outcomes
    stored = client.get_object(Bucket=bucket, Key="_delta_log/00000000000000000001.json")["Body"].read().decode()  # type: ignore[attr-defined]
    assert winners == [f"won {stored}"]


# -- two commits racing for one version -----------------------------------------------------------


def project_rows(app: str, offset: int, at: datetime, **columns: Any) -> Any:
    msg = EntityRowsMessage(trace_id=f"{app}-{offset}", event_type="TEST", project_id="1", event_time=at,
                            rows={"claimx_projects": [{"project_id": "1", **columns}]})
    builder = BatchBuilder()
    builder.add(msg, app=app, offset=offset)
    return builder.tables()["claimx_projects"]


class _HeldAfterSnapshot(DeltaTableWriter):
    """Stops after taking its snapshots (at the first clock read) until `hold` is set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reached, self.hold = threading.Event(), threading.Event()

    def _stored_clocks(self, table: Any, clocks: Any, keys: Any) -> Any:
        if not self.reached.is_set():
            self.reached.set()
            assert self.hold.wait(60)
        return super()._stored_clocks(table, clocks, keys)


def test_two_commits_of_the_same_version_one_wins_the_other_is_retried(s3_server: S3Server, s3_root: TableRoot) -> None:
    options = s3_root.storage_options
    seeded = DeltaTableWriter(PROJECTS, s3_root.uri, storage_options=options).write(
        project_rows("seed", 0, T0, status="OPEN"), {"seed": 0})
    v = seeded.version  # the same in both tables: created (0), then the seed merge (1)
    assert v == 1
    fast = DeltaTableWriter(PROJECTS, s3_root.uri, storage_options=options, backoff_base_s=0.01)
    slow = _HeldAfterSnapshot(PROJECTS, s3_root.uri, storage_options=options, backoff_base_s=0.01)
    slow_result: list[TableWriteResult] = []
    racing = threading.Thread(target=lambda: slow_result.append(
        slow.write(project_rows("slow", 0, T0 + timedelta(minutes=2), city="Waco"), {"slow": 0})))
    racing.start()
    assert slow.reached.wait(30)
    # `slow` holds snapshots of version v of both tables; `fast` commits version v+1 of both.
    fast_result = fast.write(project_rows("fast", 0, T0 + timedelta(minutes=1), status="CLOSED", city="Austin"), {"fast": 0})
    slow.hold.set()
    racing.join(60)
    assert fast_result.conflicts == 0 and fast_result.version == v + 1
    assert slow_result and slow_result[0].conflicts >= 1 and slow_result[0].version == v + 2  # lost v+1, retried, made v+2

    assert log_keys(s3_server, s3_root, slow.uri) == [0, 1, 2, 3]  # no version lost, none written twice
    assert [commit_transactions(s3_server, slow.uri, n) for n in (1, 2, 3)] == [{"seed": 0}, {"fast": 0}, {"slow": 0}]
    row = read_table(s3_root.uri, "claimx_projects", options).to_pylist()[0]
    assert (row["status"], row["city"]) == ("CLOSED", "Waco")  # both commits' newest values, neither lost
    # Seed and fast rows come whole from one event: no clock row. Slow's has a status older than
    # its event: a clock commit, resolved against the seed, then again after its entity commit
    # lost (its first clock row, which does not know fast's status, is not trusted).
    assert log_keys(s3_server, s3_root, slow.clock_uri) == [0, 1, 2]
    assert [commit_transactions(s3_server, slow.clock_uri, n) for n in (1, 2)] == [{"slow": 0}, {}]  # recorded once
    [clocks] = DeltaTable(slow.clock_uri, storage_options=options).to_pyarrow_table().to_pylist()
    assert (clocks["status"], clocks["city"], clocks["event_time"]) == (T0 + timedelta(minutes=1), None, T0 + timedelta(minutes=2))


def test_simultaneous_commits_through_delta_rs_each_get_their_own_version(s3_server: S3Server, s3_root: TableRoot) -> None:
    # Six handles on version 0 commit at the same moment: delta-rs PUTs `_delta_log/1.json` with
    # If-None-Match: *, the server lets one through and answers 412 to the others, which move on
    # to the next free version (appends do not conflict). Every commit lands, none overwritten.
    uri = s3_root.table_uri("race")
    options = s3_root.options
    write_deltalake(uri, pa.table({"writer": pa.array([-1], pa.int64())}), storage_options=options)
    handles = [DeltaTable(uri, storage_options=options) for _ in range(6)]
    barrier = threading.Barrier(len(handles))

    def commit(i: int) -> None:
        barrier.wait()
        write_deltalake(handles[i], pa.table({"writer": pa.array([i], pa.int64())}), mode="append")

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(len(handles))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    table = DeltaTable(uri, storage_options=options)
    assert sorted(table.to_pyarrow_table()["writer"].to_pylist()) == [-1, 0, 1, 2, 3, 4, 5]
    assert log_keys(s3_server, s3_root, uri) == list(range(7))
    commits = [(path.rsplit("/", 1)[-1], status) for method, path, status in s3_server.requests()
               if method == "PUT" and "/race/_delta_log/" in path]
    refused = [name for name, status in commits if status == 412]
    print(f"conditional commit PUTs: {len(commits)}, refused with 412: {len(refused)}")
    assert refused  # the race really happened at the server
    assert sorted(name for name, status in commits if status == 200) == [f"{v:020d}.json" for v in range(7)]  # one winner each


# -- the writer, tables, maintain, warm start -----------------------------------------------------


async def test_writer_tables_maintain_and_warm_start_on_s3(kafka_settings: KafkaSettings, s3_root: TableRoot) -> None:
    stream = build_stream(seed=11, events=60)
    ends = await produce(kafka_settings, encoded(stream))
    group = f"s3-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    writer = EntityWriter(s3_writer_settings(kafka_settings, s3_root, group, max_rows=80))
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    try:
        await wait_committed(kafka_settings, group, ends, timeout_s=90)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    print(f"writer: {time.monotonic() - started:.1f}s, {writer.flushes} flushes")
    expected = reference(stream)
    assert contents(s3_root) == expected
    for name in ("claimx_projects", "claimx_tasks"):  # clock tables and app transactions live on S3 too
        clocks = open_table(s3_root.clock_table_uri(name), s3_root.storage_options)
        assert clocks is not None and clocks.version() >= 1
    projects = open_table(s3_root.table_uri("claimx_projects"), s3_root.storage_options)
    assert projects is not None
    assert [projects.transaction_version(f"{group}:{kafka_settings.entity_rows_topic}:{p}") for p in sorted(ends)] == [
        end - 1 for _, end in sorted(ends.items())]

    env = storage_env(s3_root)
    started = time.monotonic()
    shown = cli("tables", "--samples", "1", env=env)
    print(f"tables: {time.monotonic() - started:.1f}s")
    assert shown.returncode == 0, shown.stderr
    counts = table_row_counts(s3_root.uri, list(TABLES), s3_root.storage_options)
    assert {name: len(rows) for name, rows in expected.items() if rows} == counts
    for name, rows in counts.items():
        assert re.search(rf"^{name}: version \d+, {rows} rows, \d+ files", shown.stdout, re.M), shown.stdout
    assert "merge clocks: version" in shown.stdout

    files_before = len(projects.file_uris())
    status_settings = s3_writer_settings(kafka_settings, s3_root, group)
    bytes_before = next(t for t in table_statuses(status_settings) if t.table == "claimx_projects")
    assert bytes_before.disk_bytes is not None and bytes_before.live_bytes is not None
    assert bytes_before.disk_bytes > bytes_before.live_bytes > 0  # the merges' replaced files and the log are stored too
    started = time.monotonic()
    maintained = cli("maintain", "--table", "claimx_projects", "--sort-by-key", "--apply", "--retention-hours", "0", env=env)
    print(f"maintain: {time.monotonic() - started:.1f}s")
    assert maintained.returncode == 0, maintained.stderr
    assert re.search(r"^claimx_projects: compacted \d+ files into 1, checkpoint at version \d+, vacuum deleted [1-9]\d* files",
                     maintained.stdout, re.M), maintained.stdout
    assert "claimx_projects (merge clocks): compacted" in maintained.stdout
    projects.update_incremental()
    assert len(projects.file_uris()) == 1 <= files_before  # the merges may already keep one live file
    assert contents(s3_root) == expected  # compaction and vacuum changed no row
    bytes_after = next(t for t in table_statuses(status_settings) if t.table == "claimx_projects")
    # vacuum gave space back: outside the logs only the live files are left (the total may still
    # grow: the two checkpoints the maintenance wrote can outweigh the few files a short run replaced)
    uris = [s3_root.table_uri("claimx_projects"), s3_root.clock_table_uri("claimx_projects")]
    data_after = sum(disk_bytes(uri, s3_root.storage_options) - disk_bytes(join_uri(uri, "_delta_log"), s3_root.storage_options)
                     for uri in uris)
    assert bytes_after.live_bytes is not None and data_after == bytes_after.live_bytes

    # warm start of the project cache from the projects table on S3
    now = max(r["event_time"] for r in expected["claimx_projects"]) + timedelta(hours=1)
    ages = await asyncio.to_thread(recent_project_ids, s3_root.uri, dict(s3_root.storage_options), 10 * 24 * 3600, now=now)
    assert set(ages) == {r["project_id"] for r in expected["claimx_projects"]} and all(age >= 0 for age in ages.values())
    assert recent_project_ids(join_uri(s3_root.uri, "nothing-here"), dict(s3_root.storage_options), 3600) == {}


def test_run_embedded_with_tables_on_s3(s3_server: S3Server, s3_root: TableRoot, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(bundled_sample().read_text().splitlines()[:60]) + "\n")
    options = [arg for key, value in s3_root.storage_options.items() for arg in ("--storage-option", f"{key}={value}")]
    result = cli("run", "--until-drained", "--timeout-s", "180", "--events", str(events), "--tables-root", s3_root.uri,
                 *options, "--log-dir", str(tmp_path / "logs"), timeout=240)
    assert result.returncode == 0, result.stderr[-3000:] + "".join(p.read_text()[-2000:] for p in (tmp_path / "logs").glob("*.log"))
    assert f"DELTA_TABLES_ROOT={s3_root.uri}" in result.stdout
    counts = table_row_counts(s3_root.uri, list(TABLES), s3_root.storage_options)
    assert counts.get("claimx_events") and counts.get("claimx_projects"), counts
    for name, count in counts.items():
        assert any(line.split() == [name, str(count)] for line in result.stdout.splitlines()), (name, result.stdout)


# -- safe configuration only ------------------------------------------------------------------------


def test_unsafe_rename_is_refused_in_one_line_unless_single_writer_is_acknowledged(s3_root: TableRoot) -> None:
    env = storage_env(s3_root)
    by_env = cli("write", env={**env, "AWS_S3_ALLOW_UNSAFE_RENAME": "true", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    by_option = cli("maintain", "--storage-option", "aws_s3_allow_unsafe_rename=TRUE", env=env)
    for done, where in ((by_env, "environment variable AWS_S3_ALLOW_UNSAFE_RENAME=true"),
                        (by_option, "storage option aws_s3_allow_unsafe_rename=TRUE")):
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().count("\n") == 0 and where in done.stderr and "single_writer_acknowledged" in done.stderr
        assert s3_root.storage_options["AWS_SECRET_ACCESS_KEY"] not in done.stderr
    with pytest.raises(UnsafeCommitConfig):
        check_commit_safety({"AWS_S3_ALLOW_UNSAFE_RENAME": "1"}, single_writer_acknowledged=False, environ={})
    assert isinstance(UnsafeCommitConfig("x"), ConfigError)
    check_commit_safety({"AWS_S3_ALLOW_UNSAFE_RENAME": "true"}, single_writer_acknowledged=True, environ={})
    check_commit_safety({"AWS_S3_ALLOW_UNSAFE_RENAME": "false"}, single_writer_acknowledged=False, environ={})
    acknowledged = cli("maintain", "--table", "claimx_media", "--storage-option", "AWS_S3_ALLOW_UNSAFE_RENAME=true",
                       env={**env, "KP_DELTA__SINGLE_WRITER_ACKNOWLEDGED": "true"})
    assert acknowledged.returncode == 0 and "claimx_media: not created yet" in acknowledged.stdout, acknowledged.stderr


# -- storage faults -----------------------------------------------------------------------------------


async def test_rejected_credentials_one_clear_line_not_ready_no_tight_loop(
    kafka_settings: KafkaSettings, s3_root: TableRoot, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = build_stream(seed=12, events=20)
    ends = await produce(kafka_settings, encoded(stream))
    group = f"badkey-{uuid.uuid4().hex[:8]}"
    port = free_port()
    bad = TableRoot(s3_root.uri, {**s3_root.storage_options, "AWS_ACCESS_KEY_ID": "not-a-key"})
    settings = s3_writer_settings(kafka_settings, bad, group, worker=WorkerSettings(name="writer-badkey", http_port=port))
    writer = EntityWriter(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    try:
        # the tables cannot be read: the partitions' stored progress cannot be checked, so
        # nothing is consumed; the check is tried again after a growing backoff
        await until(lambda: writer._verify_failures >= 1, timeout_s=30, task=task)
        first_failure = time.monotonic()
        # no tight loop: three more checks take at least the equal-jitter backoff between them
        # (0.25 + 0.5 + 1.0 s at the default flush_retry_base_s of 0.5)
        await until(lambda: writer._verify_failures >= 4, "three more progress checks", timeout_s=30, task=task)
        between = time.monotonic() - first_failure
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            ready = await http.get("/health/ready")
        assert set((await committed(kafka_settings, group, ends)).values()) == {-1}  # nothing committed
        assert writer.messages_consumed == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)  # nothing was taken, nothing is left unwritten
    progress = ready.json()["checks"]["progress"]
    error = progress["error"]
    assert ready.status_code == 503 and not progress["ready"] and progress["unchecked_partitions"]
    assert error.startswith("StorageCredentialsRejected: storage rejected the credentials for s3://") and "InvalidAccessKeyId" in error
    assert "\n" not in error and "not-a-key" not in error
    assert between >= 1.75, f"4 checks within {between:.2f} s: backoff expected"
    logged = capsys.readouterr()
    waiting = [line for line in (logged.out + logged.err).splitlines() if "stored progress not checked yet" in line]
    assert waiting and all("StorageCredentialsRejected: storage rejected the credentials" in line for line in waiting)
    assert "Traceback" not in logged.out + logged.err


def test_storage_errors_become_one_line() -> None:
    denied = OSError("Kernel error -> The operation lacked the necessary privileges\n \x1b[31m↳\x1b[0m 403 Forbidden\n"
                     "<Error><Code>SignatureDoesNotMatch</Code><Message>bad sig</Message></Error>")
    down = OSError("Generic S3 error\n ↳ Error performing GET http://h/b/k after 10 retries\n ↳ HTTP error\n ↳ client error (Connect)")
    assert str(storage_error(denied, "s3://b/t")) == "storage rejected the credentials for s3://b/t (SignatureDoesNotMatch: bad sig)"
    assert isinstance(storage_error(denied, "x"), StorageCredentialsRejected)
    assert str(storage_error(down, "s3://b/t")) == "storage unreachable at s3://b/t (cannot connect)"
    wrapped = RuntimeError("Generic DeltaTable error: Parquet error: Object Store error: Generic S3 error: Error performing GET "
                           "http://h/b/f.parquet after 10 retries - HTTP error - error sending request - client error (Connect)")
    assert str(storage_error(wrapped, "s3://b/t")) == "storage unreachable at s3://b/t (cannot connect)"
    assert storage_error(ValueError("schema differs"), "x") is None


async def test_s3_outage_mid_run_retries_keeps_offsets_not_ready_then_recovers(
    kafka_settings: KafkaSettings, s3_server: S3Server, s3_root: TableRoot
) -> None:
    stream = build_stream(seed=13, events=60)
    half = len(stream) // 2
    first_ends = await produce(kafka_settings, encoded(stream[:half]))
    group = f"outage-{uuid.uuid4().hex[:8]}"
    port = free_port()
    settings = s3_writer_settings(kafka_settings, s3_root, group, max_rows=40,
                                  worker=WorkerSettings(name="writer-outage", http_port=port))
    writer = EntityWriter(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    observed: dict[str, Any] = {}
    try:
        await wait_committed(kafka_settings, group, first_ends, timeout_s=60)
        before = await committed(kafka_settings, group, first_ends)
        s3_server.offline()
        outage_started = time.monotonic()
        more = await produce(kafka_settings, encoded(stream[half:]))
        ends = {p: max(first_ends.get(p, 0), more.get(p, 0)) for p in {*first_ends, *more}}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            await until(lambda: writer._retry.failures >= 2, timeout_s=30, task=task)
            ready = await http.get("/health/ready")
            await asyncio.sleep(max(0.0, 6 - (time.monotonic() - outage_started)))
            observed["failures_during_outage"] = writer._retry.failures
            observed["committed_during_outage"] = await committed(kafka_settings, group, ends)
            observed["error"] = writer._retry.error
            s3_server.online()
            back = time.monotonic()
            await wait_committed(kafka_settings, group, ends, timeout_s=90)
            observed["recovered_after_s"] = round(time.monotonic() - back, 1)
            ready_after = await http.get("/health/ready")
    finally:
        s3_server.online()  # also when the test failed during the outage
        stop.set()
        await asyncio.wait_for(task, 60)
    print(f"outage observed: {observed}")
    assert ready.status_code == 503 and ready.json()["checks"]["flush"]["ready"] is False
    assert observed["committed_during_outage"] == {p: before.get(p, -1) for p in ends}  # offsets held back
    assert observed["error"].startswith("StorageUnavailable: storage unreachable at s3://")
    assert 2 <= observed["failures_during_outage"] <= 6  # retried with backoff, not in a loop
    assert ready_after.status_code == 200
    assert contents(s3_root) == reference(stream)  # nothing lost, nothing twice
