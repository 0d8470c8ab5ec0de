"""A rejected API token through the whole pipeline: the enrichment worker pauses, never
dead-letters, and resumes once the operator fixes the token file, without a restart.

One run (EmbeddedStack: the session's broker, the simulator, the three workers as child processes) of 1,000
events over 40 projects plus 30 malformed lines. The enrichment worker starts with
CLAIMX_API_TOKEN_FILE naming a file that holds a wrong token. While it is rejected: the
simulator answers 401s, /health/ready is 503 with `auth_failed`, the events' lag stays above 0
and the 401s stay far below the number of events (the worker held its first events and paused
instead of burning through the stream), growing only by the credential probes (one per
KP_API__AUTH_PROBE_INTERVAL_S = 1 s). Then the file gets the right token. After the drain,
`claimx_events` holds every valid event once, the DLQ holds the malformed lines and nothing else
(no `auth` letters), the outcomes reconcile, and every worker stops with exit code 0.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from kafka_pipeline.embedded.stack import EmbeddedStack
from kafka_pipeline.simulator.app import make_token
from tests.faults.harness import make_stream, reconciliation, run_pipeline, worker_env
from tests.fixtures.broker import RunningBroker
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.slow

EVENTS, PROJECTS, STREAM_SEED, MALFORMED = 1000, 40, 23, 30
MAX_IN_FLIGHT = 32
PROBE_INTERVAL_S = 1.0
PAUSE_OBSERVED_S = 3.0


@pytest.mark.timeout(120)
def test_a_rejected_token_pauses_the_pipeline_until_the_token_file_is_fixed(tmp_path: Path, broker: RunningBroker) -> None:
    stream = make_stream(EVENTS, PROJECTS, STREAM_SEED, MALFORMED)
    token_file = tmp_path / "claimx-token"
    token_file.write_text(make_token("claimx", "an-expired-password"))
    port = free_port()
    seen: dict[str, Any] = {}

    async def observe_the_pause_then_fix_the_token(stack: EmbeddedStack) -> None:
        assert stack.simulator is not None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as ops:
            deadline = time.monotonic() + 30
            while True:
                try:
                    ready = await ops.get("/health/ready")
                except httpx.TransportError:
                    ready = None  # the ops port is not up yet
                if ready is not None and ready.status_code == 503 and ready.json()["checks"]["claimx_api"]["auth_failed"]:
                    break
                assert time.monotonic() < deadline, "the worker never reported auth_failed"
                await asyncio.sleep(0.2)
            seen["first"] = ((await stack.drain_status()).events_lag, stack.simulator.stats()["status"].get("401", 0))
            await asyncio.sleep(PAUSE_OBSERVED_S)
            seen["later"] = ((await stack.drain_status()).events_lag, stack.simulator.stats()["status"].get("401", 0))
            ready = await ops.get("/health/ready")
            seen["ready"] = (ready.status_code, ready.json())
        token_file.write_text(stack.simulator.token)  # the operator rotates the secret

    run = asyncio.run(
        run_pipeline(
            "auth-pause",
            stream,
            tmp_path / "run",
            bootstrap_servers=broker.bootstrap_servers,
            env=worker_env(KP_API__AUTH_PROBE_INTERVAL_S=str(PROBE_INTERVAL_S)),
            worker_envs={
                "enrich": {
                    "CLAIMX_API_TOKEN": "",  # no token in the environment: the file is read (and re-read)
                    "CLAIMX_API_TOKEN_FILE": str(token_file),
                    "KP_ENRICH__MAX_IN_FLIGHT": str(MAX_IN_FLIGHT),
                    "KP_WORKER__HTTP_PORT": str(port),
                }
            },
            before_drain=observe_the_pause_then_fix_the_token,
            drain_timeout_s=60,
        )
    )
    print(f"\nauth-pause run: {run.seconds:.0f}s, seen {seen}, statuses {dict(run.status_counts())}, logs in {run.log_dir}")

    # While rejected: unready with auth_failed, the consumer paused, the stream waiting.
    status, readiness = seen["ready"]
    assert status == 503 and readiness["checks"]["claimx_api"]["auth_failed"] is True, readiness
    assert readiness["checks"]["consumer"]["paused_partitions"] == readiness["checks"]["consumer"]["assigned_partitions"] > 0, readiness
    (lag_first, unauthorized_first), (lag_later, unauthorized_later) = seen["first"], seen["later"]
    assert lag_first > 0 and lag_later > 0, seen
    assert unauthorized_later < len(stream.lines) / 10, seen  # paused, not burning through the stream
    assert unauthorized_later - unauthorized_first <= PAUSE_OBSERVED_S / PROBE_INTERVAL_S + 2, seen  # only the probes

    # Once the token file was fixed: everything arrived, nothing valid in the DLQ, clean stops.
    assert run.exit_codes == {"enrich": 0, "write": 0, "retry-scheduler": 0}, run.exit_codes
    assert run.starts["enrich"] == 1  # resumed without a restart
    assert set(run.table("claimx_events").column("trace_id").to_pylist()) == stream.known_trace_ids
    assert not [letter for letter in run.dead_letters() if letter.error_category == "auth"]
    assert {letter.value.data if letter.value else None for letter in run.dead_letters()} <= {m.line for m in stream.malformed}
    assert reconciliation(run) == {
        "consumed": len(stream.lines),
        "succeeded": len(stream.known_trace_ids),
        "skipped": stream.unknown,
        "dead_lettered": len(stream.malformed),
    }
    resumed = run.log_records("enrich", "ClaimX API accepts our credentials again: held events re-run, consumption resumes")
    assert resumed, run.log_tail("enrich")
