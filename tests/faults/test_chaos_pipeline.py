"""Failures are routine: the whole pipeline under API faults, worker crashes and malformed input.

Two runs of one generated stream (2,000 events over 60 projects plus 200 malformed lines), each
on its own EmbeddedStack (the session's broker with topics of the run's own, ClaimX API
simulator, enrichment worker, entity writer and retry scheduler as child processes, Delta tables
in a temp folder):

- the *baseline*: no faults, no kills;
- the *chaos* run: the simulator fails about a quarter of the requests (500/503, 429 with
  Retry-After, requests that hang past the client's 1 s timeout) and slows some down, while the
  enrichment worker and the entity writer are each SIGKILLed and restarted three times at
  seeded random moments.

After both drained: the chaos run's tables equal the baseline's (every table, row and column
but the wall-clock `created_at`/`updated_at`); every malformed line, and nothing else, is in
the DLQ as a permanent failure naming its problem; the outcomes reconcile, counted from the
outside; and the faults and kills really happened.

Why no valid event should reach the DLQ. Per HTTP attempt the simulator fails with probability
p = 0.02 (hang) + 0.98 * 0.02 (429) + 0.98 * 0.98 * 0.20 (5xx) ~= 0.232. A call is attempted
3 times in process (KP_API__RETRIES=2), so it fails with p^3 ~= 0.0124; an event makes at most
two calls that can fail independently (its project and its own data), so one pass of an event
fails with q <= 1 - (1 - p^3)^2 ~= 0.025 and goes to `claimx.retry`. With 5 delayed retries
(1, 2, 4, 8, 16 s) an event is dead-lettered only after 6 failed passes: q^6 ~= 2.3e-10, or
about 5e-7 for the whole stream of 2,000 events. The circuit breaker (20 consecutive failures,
p^20 ~= 2e-13) does not open either. So any valid event in the DLQ is a bug, while about 2-3 %
of the events (dozens) do take the retry topic, which the run checks.

The stream is replayed at 60 lines/s (about 37 s) so the kills, at random moments between 4 and
34 s, land while events are in flight.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterator

import pytest

from kafka_pipeline.claimx.events import parse_event
from kafka_pipeline.claimx.schemas import TABLES
from kafka_pipeline.dead_letters.envelope import EncodedBytes
from kafka_pipeline.errors import PermanentError
from tests.faults.harness import (
    PipelineRun,
    Stream,
    kill_schedule,
    make_stream,
    reconciliation,
    run_pipeline,
    table_differences,
    worker_env,
)
from tests.fixtures.broker import RunningBroker

pytestmark = pytest.mark.slow

EVENTS, PROJECTS, STREAM_SEED, MALFORMED = 2000, 60, 11, 200
CHAOS_SEED = 20260301  # the kill moments
FAULTS: dict[str, object] = {
    "error_rate": 0.20,
    "rate_limit_rate": 0.02,
    "retry_after_s": 1,
    "timeout_rate": 0.02,
    "timeout_s": 2.0,
    "slow_rate": 0.05,
    "slow_ms": 400.0,
}
KILLED_WORKERS = ("enrich", "write")
KILLS_PER_WORKER = 3
REPLAY_RATE = 60.0  # lines per second
KILL_WINDOW_S = (4.0, 34.0)
DRAIN_TIMEOUT_S = 180.0
# What a malformed line's dead letter must name, per kind of damage.
REASON_NAMES = {
    "not_json": "JSON",
    "missing_project_id": "project_id",
    "missing_event_type": "event_type",
    "bad_ingested_at": "ingested_at",
    "file_added_without_media_id": "media_id",
}
# Two pipeline runs share this module; the first test to use a run pays for it.
RUN_TIMEOUT_S = 420


@pytest.fixture(scope="module")
def stream() -> Stream:
    return make_stream(EVENTS, PROJECTS, STREAM_SEED, MALFORMED)


@pytest.fixture(scope="module")
def baseline(stream: Stream, broker: RunningBroker, tmp_path_factory: pytest.TempPathFactory) -> PipelineRun:
    run = asyncio.run(
        run_pipeline("baseline", stream, tmp_path_factory.mktemp("baseline"), bootstrap_servers=broker.bootstrap_servers, env=worker_env())
    )
    print(f"\nbaseline run: {run.seconds:.0f}s, {run.simulator_stats.get('total')} API requests, logs in {run.log_dir}")
    return run


@pytest.fixture(scope="module")
def chaos(stream: Stream, broker: RunningBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineRun]:
    kills = kill_schedule(random.Random(CHAOS_SEED), KILLED_WORKERS, KILLS_PER_WORKER, *KILL_WINDOW_S)
    run = asyncio.run(
        run_pipeline(
            "chaos",
            stream,
            tmp_path_factory.mktemp("chaos"),
            bootstrap_servers=broker.bootstrap_servers,
            env=worker_env(),
            simulator_faults=FAULTS,
            kills=kills,
            replay_rate=REPLAY_RATE,
            drain_timeout_s=DRAIN_TIMEOUT_S,
        )
    )
    print(
        f"\nchaos run: {run.seconds:.0f}s, simulator statuses {dict(sorted(run.status_counts().items()))}, "
        f"kills {run.kills_done}, starts {run.starts}, topic messages {run.topic_messages}, logs in {run.log_dir}"
    )
    yield run


@pytest.mark.timeout(RUN_TIMEOUT_S)
def test_baseline_is_complete(baseline: PipelineRun, stream: Stream) -> None:
    """The fault-free run is a meaningful reference: every table has rows, every event is accounted for."""
    for name in TABLES:
        assert baseline.table(name).num_rows > 0, f"{name} is empty after the fault-free run"
    assert set(baseline.table("claimx_events").column("trace_id").to_pylist()) == stream.known_trace_ids
    assert len(baseline.dead_letters_by_origin()) == len(stream.malformed)
    assert baseline.exit_codes == {"enrich": 0, "write": 0, "retry-scheduler": 0}


@pytest.mark.timeout(RUN_TIMEOUT_S)
def test_faults_and_kills_really_happened(chaos: PipelineRun) -> None:
    statuses = chaos.status_counts()
    assert statuses["500"] + statuses["503"] > 100, statuses
    assert statuses["429"] > 5, statuses
    assert statuses["504"] > 5, statuses  # a timeout fault: the client gave up after 1 s
    assert [worker for _, worker in chaos.kills_done].count("enrich") == KILLS_PER_WORKER
    assert [worker for _, worker in chaos.kills_done].count("write") == KILLS_PER_WORKER
    assert chaos.starts == {"enrich": 1 + KILLS_PER_WORKER, "write": 1 + KILLS_PER_WORKER, "retry-scheduler": 1}
    # Transient failures that outlived the in-process retries took the delayed-retry path.
    assert chaos.topic_messages[chaos.kafka.retry_topic] > 0, chaos.topic_messages
    # After all that, the last incarnations stop cleanly on SIGTERM.
    assert chaos.exit_codes == {"enrich": 0, "write": 0, "retry-scheduler": 0}, chaos.exit_codes


@pytest.mark.timeout(RUN_TIMEOUT_S)
def test_tables_equal_the_fault_free_run(baseline: PipelineRun, chaos: PipelineRun) -> None:
    differences = [table_differences(name, baseline.table(name), chaos.table(name)) for name in TABLES]
    differences = [d for d in differences if d]
    assert not differences, "\n".join(differences) + f"\nchaos logs: {chaos.log_dir}"


@pytest.mark.timeout(RUN_TIMEOUT_S)
def test_every_malformed_message_is_dead_lettered_with_its_reason(chaos: PipelineRun, stream: Stream) -> None:
    by_origin = chaos.dead_letters_by_origin()
    injected = Counter(m.line for m in stream.malformed)
    kinds: dict[str, set[str]] = {}
    for m in stream.malformed:
        kinds.setdefault(m.line, set()).add(m.kind)
    found: Counter[str] = Counter()
    for origin, letters in by_origin.items():
        values = {letter.value.data if letter.value is not None else None for letter in letters}
        assert len(values) == 1, f"dead letters of {origin} hold different messages: {values}"
        value = values.pop()
        assert value in injected, f"a message that is not one of the malformed lines was dead-lettered: {letters[0]}"
        found[value] += 1
        for letter in letters:
            assert letter.original_topic == chaos.kafka.events_topic
            assert letter.error_category == "permanent", letter
            assert letter.error_type == "MalformedEvent", letter
            assert letter.attempts == 1, letter
            assert any(REASON_NAMES[kind] in letter.error_message for kind in kinds[value]), (
                f"reason {letter.error_message!r} does not name the problem ({kinds[value]}) of {value!r}"
            )
    assert found == injected, f"malformed lines missing from the DLQ: {injected - found}; extra: {found - injected}"


@pytest.mark.timeout(RUN_TIMEOUT_S)
def test_outcomes_reconcile(chaos: PipelineRun, stream: Stream) -> None:
    """consumed = succeeded + skipped + dead-lettered, each message counted once at its final outcome."""
    counts = reconciliation(chaos)
    assert counts == {
        "consumed": len(stream.lines),
        "succeeded": len(stream.known_trace_ids),
        "skipped": stream.unknown,
        "dead_lettered": len(stream.malformed),
    }, counts
    assert counts["consumed"] == counts["succeeded"] + counts["skipped"] + counts["dead_lettered"]
    # Succeeded means exactly the valid events of known types, each once.
    trace_ids = chaos.table("claimx_events").column("trace_id").to_pylist()
    assert len(trace_ids) == len(set(trace_ids))
    assert set(trace_ids) == stream.known_trace_ids
    # No valid event in the DLQ, whatever its category (transient ones never exhaust the retries).
    valid_in_dlq = Counter(
        (letter.error_category, letter.error_type) for letter in chaos.dead_letters() if _parses(letter.value)
    )
    assert not valid_in_dlq, f"valid events dead-lettered (category, error type): {dict(valid_in_dlq)}"
    # The last enrichment worker's own account agrees (earlier ones were SIGKILLed mid-count).
    stopped = chaos.log_records("enrich", "enrichment worker stopped")
    assert stopped, chaos.log_tail("enrich")
    assert stopped[-1]["reconciled"] is True and stopped[-1]["in_flight"] == 0, stopped[-1]


def _parses(value: EncodedBytes | None) -> bool:
    try:
        parse_event(value.raw() if value is not None else None)
    except PermanentError:
        return False
    return True
