"""The enrichment worker through the real broker (tansu) and the real ClaimX API simulator.

Expected values are read from the simulator's raw JSON over HTTP, never recomputed with the
pipeline's transforms. Narrow unit tests of the worker's parts (media batching, single flight,
route_failure, cycle stats) come first; they use an httpx MockTransport.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import signal
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from kafka_pipeline.claimx.api.client import ClaimXApiClient
from kafka_pipeline.claimx.cache.project_cache import ProjectCache, Verification
from kafka_pipeline.claimx.entity_rows import EntityRowsMessage
from kafka_pipeline.claimx.events import ClaimXEvent, parse_event
from kafka_pipeline.claimx.handlers import HANDLERS, HandlerContext, MediaBatcher, SingleFlight, handler_for
from kafka_pipeline.config import ApiSettings, CacheSettings, KafkaSettings, Settings
from kafka_pipeline.dead_letters.envelope import DeadLetter
from kafka_pipeline.errors import AuthError, PermanentError, TransientError
from kafka_pipeline.simulator import SimulatorProcess
from kafka_pipeline.simulator.events import EVENT_TYPES, UNKNOWN_EVENT_TYPE, generate_events
from kafka_pipeline.simulator.ids import project_children, project_ids
from kafka_pipeline.workers.enrich.worker import EnrichmentWorker, route_failure
from kafka_pipeline.workers.retry.scheduler import RetryScheduler
from tests.fixtures.enrich import all_committed, committed, produce, running, start_enrich_process, worker_settings
from tests.fixtures.kafka_io import read_topic
from tests.fixtures.ports import free_port
from tests.fixtures.waiting import until

# --- unit tests of the parts -----------------------------------------------------------------


def mock_api(handler: Callable[[httpx.Request], Any], **overrides: Any) -> ClaimXApiClient:
    settings = ApiSettings(url="http://claimx.test", token="dXNlcjpwYXNz", retries=0, max_requests_per_s=10_000, **overrides)
    return ClaimXApiClient(settings, transport=httpx.MockTransport(handler))


async def test_media_events_in_flight_together_cost_one_call() -> None:
    calls: list[list[str]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        ids = request.url.params["mediaIds"].split(",")
        calls.append(ids)
        await asyncio.sleep(0.02)
        return httpx.Response(200, json={"data": [{"mediaID": int(i)} for i in ids if i != "404"]})

    async with mock_api(handler) as api:
        batcher = MediaBatcher(api, window_s=0.005)
        first = await asyncio.gather(*(batcher.fetch("1", str(i)) for i in range(10)))
        assert [item["mediaID"] for item in first] == list(range(10))
        assert len(calls) == 1 and sorted(calls[0], key=int) == [str(i) for i in range(10)]
        # asked while a call is in flight: they ride the next call together
        early = asyncio.ensure_future(batcher.fetch("1", "100"))
        await asyncio.sleep(0.01)  # the call for 100 is now in flight
        late = await asyncio.gather(*(batcher.fetch("1", str(i)) for i in (101, 102, 103)), early)
        assert [item["mediaID"] for item in late] == [101, 102, 103, 100]
        assert calls[1:] == [["100"], ["101", "102", "103"]]
        with pytest.raises(PermanentError) as missing:
            await batcher.fetch("1", "404")
        assert missing.value.error_type == "NotFound"


async def test_a_failed_media_call_fails_every_waiter() -> None:
    async with mock_api(lambda request: httpx.Response(503)) as api:
        batcher = MediaBatcher(api)
        results = await asyncio.gather(*(batcher.fetch("1", str(i)) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, TransientError) for r in results)


async def test_single_flight_shares_one_call_and_keeps_nothing() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    calls = 0

    async def call() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return calls

    assert await asyncio.gather(*(flight.run("k", call) for _ in range(5))) == [1] * 5
    assert await flight.run("k", call) == 2 and flight.shared == 4


async def test_single_flight_never_shares_a_request_already_sent() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    sent: list[float] = []

    async def call() -> int:
        sent.append(time.monotonic())
        number = len(sent)
        await asyncio.sleep(0.05)
        return number

    first = asyncio.ensure_future(flight.run("k", call))
    await asyncio.sleep(0.01)  # the first request is on the wire
    late = await asyncio.gather(flight.run("k", call), flight.run("k", call))
    assert await first == 1 and late == [2, 2]  # the late callers got a request of their own, shared
    assert flight.calls == 2 and flight.shared == 1
    with pytest.raises(ZeroDivisionError):
        await flight.run("x", lambda: asyncio.sleep(0, result=1 / 0))
    assert await flight.run("x", call) == 3  # a failed flight leaves nothing behind


async def test_single_flight_outlives_its_cancelled_callers() -> None:
    """A cancelled waiter leaves the flight to the others; a cancelled flier (the first caller,
    which sends the request itself) hands its waiters on to a flight of their own, which they
    share: nobody else sees a CancelledError, and a failure reaches every caller."""
    flight: SingleFlight[str, int] = SingleFlight()
    sent: list[str] = []
    release = asyncio.Event()

    async def call() -> int:
        sent.append("k")
        await release.wait()
        return len(sent)

    flier = asyncio.ensure_future(flight.run("k", call))
    waiters = [asyncio.ensure_future(flight.run("k", call)) for _ in range(3)]
    await until(lambda: len(sent) == 1, "the first request sent")
    waiters[0].cancel()
    flier.cancel()  # its request is abandoned: the two waiters left send one of their own
    await until(lambda: len(sent) == 2, "the waiters' own request sent")
    release.set()
    assert await asyncio.gather(*waiters[1:]) == [2, 2]
    assert flier.cancelled() and waiters[0].cancelled()
    assert flight.calls == 2 and flight.shared == 2  # counted as they join (the cancelled one too), the handed-on ones once

    error = PermanentError("gone", error_type="NotFound")

    async def failing() -> int:
        await asyncio.sleep(0.01)
        raise error

    results = await asyncio.gather(*(flight.run("x", failing) for _ in range(3)), return_exceptions=True)
    assert results == [error] * 3 and all(result is error for result in results)


def test_every_contract_event_type_has_a_handler() -> None:
    assert set(EVENT_TYPES) <= set(HANDLERS)
    assert handler_for(UNKNOWN_EVENT_TYPE) is None


class RecordingCache:
    """A cache double recording confirm/abandon, answering every verify with `loaded`."""

    def __init__(self) -> None:
        self.confirmed: list[str] = []
        self.abandoned: list[str] = []

    async def verify(self, project_id: str, load, *, refresh: bool = False) -> Verification:
        return Verification("loaded", await load(), holder=self)  # settling it reports here

    def confirm(self, project_id: str) -> None:
        self.confirmed.append(project_id)

    def abandon(self, project_id: str) -> None:
        self.abandoned.append(project_id)


async def test_child_failure_after_a_project_load_abandons_the_project() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/customTasks/"):
            return httpx.Response(404)
        return httpx.Response(200, json={"data": {"project": {"projectId": 5}, "teamMembers": []}})

    async with mock_api(handler) as api:
        cache = RecordingCache()
        ctx = HandlerContext(api=api, cache=cache, media=MediaBatcher(api))
        event = parse_event(b'{"event_type": "CUSTOM_TASK_ASSIGNED", "project_id": 5, "task_assignment_id": 5001, "ingested_at": "2026-01-01T00:00:00Z"}')
        with pytest.raises(PermanentError):
            await handler_for(event.event_type).handle(event, ctx)
        assert cache.abandoned == ["5"]


async def test_the_trace_id_handed_to_a_handler_gives_the_rows_it_derives() -> None:
    """The worker derives an event's trace id once and hands it over: the rows are the ones the
    handler builds when it derives the id itself (an event without event_id, and one with it)."""
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/export/project/5/media"):
            return httpx.Response(200, json={"data": [{"mediaID": 5001, "projectId": 5, "mediaName": "a.jpg"}]})
        return httpx.Response(200, json={"data": {"project": {"projectId": 5}, "teamMembers": []}})

    async with mock_api(handler) as api:
        for line in (b'{"event_type": "PROJECT_FILE_ADDED", "project_id": 5, "media_id": 5001, "ingested_at": "2026-01-01T00:00:00Z"}',
                     b'{"event_id": "e-1", "event_type": "PROJECT_FILE_ADDED", "project_id": 5, "media_id": 5001, "ingested_at": "2026-01-01T00:00:00Z"}'):
            event = parse_event(line)
            derived = await handler_for(event.event_type).handle(event, HandlerContext(api=api, cache=RecordingCache(), media=MediaBatcher(api)))
            handed = await handler_for(event.event_type).handle(event, HandlerContext(api=api, cache=RecordingCache(), media=MediaBatcher(api)),
                                                                trace_id=event.trace_id)
            assert handed.rows == derived.rows and handed.rows["claimx_events"][0]["trace_id"] == event.trace_id


async def test_an_event_cancelled_during_its_fetch_leaves_the_project_load_to_the_others() -> None:
    """The project's verification runs beside the event's own fetch without a task of its own
    (`begin_verify`): a cancelled event drops its part unawaited, with no warning, and the load
    goes on for the next event of the project, which shares it."""
    project_calls: list[str] = []
    release = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/media"):
            await release.wait()
            return httpx.Response(200, json={"data": [{"mediaID": 5001, "projectId": 5}]})
        project_calls.append(request.url.path)
        await asyncio.sleep(0.02)
        return httpx.Response(200, json={"data": {"project": {"projectId": 5}, "teamMembers": []}})

    event = parse_event(b'{"event_type": "PROJECT_FILE_ADDED", "project_id": 5, "media_id": 5001, "ingested_at": "2026-01-01T00:00:00Z"}')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with mock_api(handler) as api:
            ctx = HandlerContext(api=api, cache=ProjectCache(CacheSettings()), media=MediaBatcher(api, window_s=0))
            first = asyncio.ensure_future(handler_for(event.event_type).handle(event, ctx))
            await until(lambda: project_calls, "the project load sent")
            first.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await first
            second = asyncio.ensure_future(handler_for(event.event_type).handle(event, ctx))
            release.set()
            result = await second
        del first
        gc.collect()
    assert project_calls == ["/export/project/5"]  # one load, shared by the event after the cancelled one
    assert result.verification is not None and result.verification.outcome == "coalesced" and "claimx_projects" in result.rows
    assert not [w for w in caught if "never awaited" in str(w.message)]


async def test_project_not_found_wins_over_the_child_error() -> None:
    async with mock_api(lambda request: httpx.Response(404)) as api:
        ctx = HandlerContext(api=api, cache=ProjectCache(CacheSettings()), media=MediaBatcher(api))
        event = parse_event(b'{"event_type": "PROJECT_FILE_ADDED", "project_id": 5, "media_id": 5001, "ingested_at": "2026-01-01T00:00:00Z"}')
        with pytest.raises(PermanentError, match="/export/project/5:"):
            await handler_for(event.event_type).handle(event, ctx)


def test_route_failure_by_category_and_attempt() -> None:
    settings = Settings(kafka=KafkaSettings(dlq_topic="dlq.x", retry_topic="retry.x"), retry={"delays_s": [5, 60]}, worker={"name": "w1"})
    record = _Record(topic="ev", partition=2, offset=41, key=b"5", value=b"{bad", headers=[("h", b"1")], timestamp=1_767_225_600_000)

    permanent = route_failure(record, PermanentError("missing field project_id", error_type="MalformedEvent"), settings=settings, trace_id=None)
    letter = DeadLetter.from_bytes(permanent.value)
    assert (permanent.outcome, permanent.topic, permanent.key) == ("dead_lettered", "dlq.x", b"5")
    assert (letter.original_topic, letter.partition, letter.offset, letter.value.raw()) == ("ev", 2, 41, b"{bad")
    assert (letter.error_category, letter.error_message, letter.worker, letter.attempts) == ("permanent", "missing field project_id", "w1", 1)

    transient = route_failure(record, TransientError("GET /x: 503", error_type="Http503"), settings=settings, trace_id="t-1")
    headers = dict(transient.headers)
    assert (transient.outcome, transient.topic, transient.key, transient.value) == ("retried", "retry.x", b"5", b"{bad")
    assert headers["retry-attempt"] == b"1" and headers["retry-target-topic"] == b"ev" and headers["h"] == b"1"

    last_try = _Record(**{**record.__dict__, "offset": 900, "headers": transient.headers})  # came back for attempt 1 ...
    second = route_failure(last_try, TransientError("503"), settings=settings, trace_id="t-1")
    assert second.outcome == "retried" and dict(second.headers)["retry-attempt"] == b"2"
    exhausted = route_failure(_Record(**{**record.__dict__, "offset": 950, "headers": second.headers}), TransientError("503"), settings=settings, trace_id="t-1")
    letter = DeadLetter.from_bytes(exhausted.value)
    assert exhausted.outcome == "dead_lettered" and (letter.error_category, letter.attempts, letter.trace_id) == ("transient", 3, "t-1")

    circuit_open = route_failure(record, TransientError("GET /x: circuit open", error_type="CircuitOpen"), settings=settings, trace_id="t-3")
    assert circuit_open.outcome == "retried" and circuit_open.topic == "retry.x"  # an open breaker is a transient failure
    assert dict(circuit_open.headers)["retry-error-category"] == b"transient" and b"CircuitOpen" in dict(circuit_open.headers)["retry-error"]

    with pytest.raises(ValueError, match="auth"):  # a 401 holds the event and pauses the worker: never routed
        route_failure(record, AuthError("401"), settings=settings, trace_id="t-2")


class _Record:
    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


# --- integration: real broker, real simulator ------------------------------------------------
















def instant(text: str | None) -> datetime | None:
    """An ISO-8601 text as a UTC instant (naive = UTC), independent of the pipeline's parser."""
    if text is None:
        return None
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


class RawApi:
    """The simulator's answers, fetched over HTTP with a plain client."""

    def __init__(self, sim: SimulatorProcess) -> None:
        self.http = httpx.Client(base_url=sim.url, headers=sim.headers)

    def project(self, pid: str) -> dict[str, Any]:
        return self.http.get(f"/export/project/{pid}").json()["data"]

    def media(self, pid: str, media_id: str) -> dict[str, Any]:
        body = self.http.get(f"/export/project/{pid}/media", params={"mediaIds": media_id}).json()
        items = body["data"] if isinstance(body, dict) else body
        (item,) = [i for i in items if str(i["mediaID"]) == media_id]
        return item

    def task(self, assignment_id: str) -> dict[str, Any]:
        return self.http.get(f"/customTasks/assignment/{assignment_id}", params={"full": "true"}).json()

    def videos(self, pid: str) -> list[dict[str, Any]]:
        return self.http.post("/data", json={"reportType": "VIDEO_COLLABORATION", "projectId": int(pid)}).json()["data"]


def s(value: Any) -> str | None:
    return None if value is None else str(value)


def assert_project_row(row: dict[str, Any], raw: dict[str, Any]) -> None:
    project, customer, address = raw["project"], raw["project"]["customerInformation"], raw["project"]["address"]
    expected = {
        "project_id": str(project["projectId"]),
        "project_number": project["projectNumber"],
        "master_file_name": project["mfn"],
        "secondary_number": project["secondaryNumber"],
        "status": project["status"],
        "type_of_loss": project["typeOfLoss"],
        "cause_of_loss": project["causeOfLoss"],
        "loss_description": project["lossDescription"],
        "year_built": project["yearBuilt"],
        "custom_attribute1": project["customAttribute1"],
        "custom_external_unique_id": project["customExternalUniqueId"],
        "customer_first_name": customer["firstName"],
        "customer_last_name": customer["lastName"],
        "custom_business_name": customer["customBusinessName"],
        "business_line_type": customer["businessLineType"],
        "street1": address["street1"],
        "street2": address["street2"],
        "city": address["city"],
        "state_province": address["stateProvince"],
        "zip_postcode": address["zipPostcode"],
        "county": address["county"],
        "country": address["country"],
        "company_name": raw["companyName"],
    }
    assert {k: row.get(k) for k in expected} == expected
    assert row["square_footage"] == (None if project["squareFootage"] is None else float(project["squareFootage"]))
    emails = customer["emails"]
    marked = [e["emailAddress"] for e in emails if e["primary"]]
    assert row["primary_email"] == (marked[0] if marked else emails[0]["emailAddress"] if emails else None)
    phones = customer["phones"]
    assert row["primary_phone"] == (phones[0]["phoneNumber"] if phones else None)
    for column, field in (("created_date", "createdDate"), ("date_of_loss", "dateOfLoss"), ("date_received", "dateReceived"),
                          ("date_inspected", "dateInspected"), ("appointment_date", "appointmentDate")):
        assert instant(row[column]) == instant(project[field]), column
        assert row[column] is None or row[column].endswith("+00:00")


async def test_every_event_type_end_to_end(kafka_settings: KafkaSettings, api: SimulatorProcess) -> None:
    lines = generate_events(160, 10, seed=11, malformed=5)
    parsed: list[ClaimXEvent] = []
    for line in lines:
        with contextlib.suppress(PermanentError):
            parsed.append(parse_event(line.encode()))
    assert {e.event_type for e in parsed} >= set(EVENT_TYPES) | {UNKNOWN_EVENT_TYPE}
    known = [e for e in parsed if e.event_type in HANDLERS]
    unknown = [e for e in parsed if e.event_type not in HANDLERS]
    settings = worker_settings(kafka_settings, api)
    await produce(settings.kafka, lines)
    worker = EnrichmentWorker(settings)
    async with running(worker) as task:
        await until(lambda: worker.counts.processed >= len(lines), task=task)
    counts = worker.counts
    assert (counts.consumed, counts.succeeded, counts.skipped, counts.dead_lettered) == (len(lines), len(known), len(unknown), 5)
    assert counts.reconciles() and counts.pending == 0

    records = await read_topic(settings.kafka, settings.kafka.entity_rows_topic, len(known))
    messages = [EntityRowsMessage.from_bytes(r.value) for r in records]
    assert sorted(m.trace_id for m in messages) == sorted(e.trace_id for e in known)  # one message per event
    assert all(r.key == m.project_id.encode() for r, m in zip(records, messages, strict=True))
    by_trace = {m.trace_id: m for m in messages}

    # one project's messages come out in the order its events went in
    out_order: dict[str, list[str]] = defaultdict(list)
    for m in messages:
        out_order[m.project_id].append(m.trace_id)
    in_order: dict[str, list[str]] = defaultdict(list)
    for e in known:
        in_order[e.project_id].append(e.trace_id)
    assert out_order == in_order

    # the contract's dead letters: the malformed lines, each with its reason
    dead = [DeadLetter.from_bytes(r.value) for r in await read_topic(settings.kafka, settings.kafka.dlq_topic, 5)]
    assert len(dead) == 5 and {d.error_category for d in dead} == {"permanent"}
    reasons = sorted(d.error_message.split(":")[0] for d in dead)
    assert reasons == sorted(["not JSON", "missing field project_id", "missing field event_type", "ingested_at", "PROJECT_FILE_ADDED requires media_id"])

    # exactly one export call per project
    stats = api.stats()
    assert stats["project"] == 10 and set(stats["project_by_id"].values()) == {1}

    raw = RawApi(api)
    for pid in {e.project_id for e in known}:
        export = raw.project(pid)
        created = next(e for e in known if e.project_id == pid and e.event_type == "PROJECT_CREATED")
        rows = by_trace[created.trace_id].rows
        (project_row,) = rows["claimx_projects"]
        assert_project_row(project_row, export)
        contacts = {(c["contact_email"], c["contact_type"]): c for c in rows["claimx_contacts"]}
        for member in export["teamMembers"]:
            assert contacts[(member["userName"].lower(), "CLAIM_REP")]["is_primary_contact"] == member["primaryContact"]
        if export["project"]["customerInformation"]["emails"]:
            holder = contacts[(project_row["primary_email"].lower(), "POLICYHOLDER")]
            assert holder["is_primary_contact"] is True and holder["first_name"] == export["project"]["customerInformation"]["firstName"]
        else:
            assert not any(t == "POLICYHOLDER" for _, t in contacts)

    for event in known:
        rows = by_trace[event.trace_id].rows
        (audit,) = rows["claimx_events"]
        assert (audit["trace_id"], audit["event_type"], audit["project_id"]) == (event.trace_id, event.event_type, event.project_id)
        assert instant(audit["ingested_at"]) == event.ingested_at and audit["event_date"] == event.ingested_at.date().isoformat()
        assert (audit["media_id"], audit["task_assignment_id"], audit["video_collaboration_id"]) == (
            event.media_id, event.task_assignment_id, event.video_collaboration_id)
        kind = event.event_type
        if kind == "PROJECT_FILE_ADDED":
            (row,) = rows["claimx_media"]
            item = raw.media(event.project_id, event.media_id)
            assert row["media_id"] == event.media_id and row["project_id"] == event.project_id
            assert (row["file_type"], row["file_name"], row["media_description"], row["media_comment"], row["gps_source"]) == (
                item["mediaType"], item["mediaName"], item["mediaDescription"], item["mediaComment"], item["gpsSource"])
            assert (row["latitude"], row["longitude"], row["full_download_link"]) == (item["latitude"], item["longitude"], item["fullDownloadLink"])
            assert row["task_assignment_id"] == s(item["taskAssignmentId"])
            assert instant(row["taken_date"]) == instant(item["takenDate"]) and instant(row["expires_at"]) == instant(item["expiresAt"])
        elif kind.startswith("CUSTOM_TASK_"):
            body = raw.task(event.task_assignment_id)
            (task_row,) = rows["claimx_tasks"]
            assert task_row["assignment_id"] == event.task_assignment_id
            assert (task_row["task_id"], task_row["task_name"], task_row["form_id"], task_row["status"], task_row["mfn"]) == (
                str(body["taskId"]), body["taskName"], str(body["formId"]), body["status"], body["mfn"])
            assert (task_row["assignor_email"], task_row["assignor_id"], task_row["stp_enabled"]) == (
                body["assignor"], str(body["assignorId"]), body["stpEnabled"])
            assert instant(task_row["date_assigned"]) == instant(body["dateAssigned"])
            assert instant(task_row["date_completed"]) == instant(body["dateCompleted"])
            (template,) = rows["claimx_task_templates"]
            custom = body["customTask"]
            assert (template["task_id"], template["name"], template["form_name"], template["is_default"], template["allow_resubmit"]) == (
                str(custom["taskId"]), custom["name"], custom["formName"], custom["default"], custom["allowReSubmit"])
            link = body.get("externalLinkData")
            if link is None:
                assert "claimx_external_links" not in rows
            else:
                (link_row,) = rows["claimx_external_links"]
                assert (link_row["link_id"], link_row["link_code"], link_row["url"], link_row["email"], link_row["phone"]) == (
                    str(link["linkId"]), link["linkCode"], link["url"], link["email"], link["phone"])
                link_contacts = [c for c in rows.get("claimx_contacts", []) if c.get("task_assignment_id") == event.task_assignment_id]
                if link["email"]:
                    (contact,) = link_contacts
                    assert (contact["contact_email"], contact["contact_type"], contact["is_primary_contact"]) == (
                        link["email"].lower(), "POLICYHOLDER", False)
                else:
                    assert link_contacts == []
        elif kind.startswith("VIDEO_COLLABORATION_"):
            items = raw.videos(event.project_id)
            if event.video_collaboration_id:
                (item,) = [i for i in items if str(i["videoCollaborationId"]) == event.video_collaboration_id]
            else:
                item = next(i for i in items if str(i["claimId"]) == event.project_id)
            (row,) = rows["claimx_video_collab"]
            assert (row["video_collaboration_id"], row["project_id"], row["claim_number"], row["policy_number"]) == (
                str(item["videoCollaborationId"]), str(item["claimId"]), item["claimNumber"], item["policyNumber"])
            assert (row["number_of_videos"], row["session_count"], row["total_time_seconds"], row["company_id"], row["guid"]) == (
                item["numberOfVideos"], item["sessionCount"], float(item["totalTimeSeconds"]), str(item["companyId"]), item["guid"])
            full = item["claimRepFullName"] or f"{item['claimRepFirstName']} {item['claimRepLastName']}"
            assert row["claim_rep_full_name"] == full and instant(row["created_date"]) == instant(item["createdDate"])
        elif kind == "PROJECT_MFN_ADDED":
            assert {"project_id": event.project_id, "master_file_name": event.master_file_name} in rows["claimx_projects"]
        elif kind in ("POLICYHOLDER_INVITED", "POLICYHOLDER_JOINED"):
            column = "policyholder_invited_at" if kind.endswith("INVITED") else "policyholder_joined_at"
            (minimal,) = [r for r in rows["claimx_projects"] if column in r]
            assert set(minimal) == {"project_id", column} and instant(minimal[column]) == event.ingested_at
        elif kind == "PROJECT_AUTO_XA_LINKING_UNSUCCESSFUL":
            (minimal,) = [r for r in rows["claimx_projects"] if "xa_autolink_fail" in r]
            assert minimal["xa_autolink_fail"] is True and instant(minimal["xa_autolink_fail_at"]) == event.ingested_at
            assert set(minimal) == {"project_id", "xa_autolink_fail", "xa_autolink_fail_at"}

    # everything was committed: a second worker of the group has nothing to do
    positions = await committed(settings.kafka, settings.enrich.group_id)
    assert sum(positions.values()) == len(lines)


async def test_100_events_over_10_projects_cost_10_export_calls(kafka_settings: KafkaSettings, api: SimulatorProcess) -> None:
    api.set_faults(latency_ms=20)
    lines = generate_events(100, 10, seed=3)
    settings = worker_settings(kafka_settings, api)
    await produce(settings.kafka, lines)
    worker = EnrichmentWorker(settings)
    async with running(worker) as task:
        await until(lambda: worker.counts.processed >= 100, task=task)
    stats = api.stats()
    assert stats["project"] == 10 and sorted(stats["project_by_id"]) == [str(p) for p in project_ids(10)]
    assert set(stats["project_by_id"].values()) == {1}
    assert worker.counts.succeeded + worker.counts.skipped == 100


async def test_50_events_of_one_project_at_once_cost_one_export_call(kafka_settings: KafkaSettings, api: SimulatorProcess) -> None:
    api.set_faults(latency_ms=20)
    pid = project_ids(1, first=5_000_777)[0]
    children = project_children(pid)
    kinds = ["PROJECT_FILE_ADDED", "CUSTOM_TASK_ASSIGNED", "VIDEO_COLLABORATION_INVITE_SENT", "POLICYHOLDER_INVITED", "PROJECT_MFN_ADDED"]
    lines = []
    for i in range(50):  # no PROJECT_CREATED: every one of them needs the project verified
        kind = kinds[i % len(kinds)]
        event: dict[str, Any] = {"event_type": kind, "project_id": pid, "ingested_at": f"2026-02-01T10:00:{i:02d}Z"}
        if kind == "PROJECT_FILE_ADDED":
            event["media_id"] = children.media_ids[i % len(children.media_ids)]
        elif kind == "CUSTOM_TASK_ASSIGNED":
            event["task_assignment_id"] = children.assignment_ids[i % len(children.assignment_ids)]
        elif kind == "PROJECT_MFN_ADDED":
            event["master_file_name"] = f"MFN-{i}"
        lines.append(json.dumps(event))
    settings = worker_settings(kafka_settings, api)
    await produce(settings.kafka, lines)
    worker = EnrichmentWorker(settings)
    async with running(worker) as task:
        await until(lambda: worker.counts.processed >= 50, task=task)
    stats = api.stats()
    assert worker.counts.succeeded == 50
    assert stats["project"] == 1
    assert stats["media"] <= 2  # batched: one mediaIds call (two if the events straddled a fetch)
    assert stats["video"] <= 2
    messages = [EntityRowsMessage.from_bytes(r.value) for r in await read_topic(settings.kafka, settings.kafka.entity_rows_topic, 50)]
    carrying = [m for m in messages if any("project_number" in r for r in m.rows.get("claimx_projects", []))]
    assert carrying  # the events that were not cache hits carry the project's rows
    assert worker.cache.stats().loads_ok == 1


async def test_failures_end_where_the_contract_says_and_the_worker_goes_on(kafka_settings: KafkaSettings, api: SimulatorProcess) -> None:
    missing, healthy = project_ids(2, first=5_000_900)
    api.set_faults(not_found_ids=[missing])

    def event(pid: int, kind: str, n: int, **extra: Any) -> str:
        return json.dumps({"event_type": kind, "project_id": pid, "ingested_at": f"2026-03-01T00:00:{n:02d}Z", **extra})

    lines = [
        event(missing, "PROJECT_CREATED", 0),
        event(missing, "PROJECT_FILE_ADDED", 1, media_id=project_children(missing).media_ids[0]),
        event(missing, "POLICYHOLDER_JOINED", 2),
        "{not json",
        event(healthy, "SOMETHING_ELSE_HAPPENED", 3),
        event(healthy, "PROJECT_CREATED", 4),
        event(healthy, "PROJECT_FILE_ADDED", 5, media_id=project_children(healthy).media_ids[0]),
    ]
    # enough in-process retries to ride out a short burst; a breaker that does not open in this test
    retrying = {"retries": 8, "backoff_base_s": 0.1, "backoff_max_s": 1.0, "breaker_failure_threshold": 1000}
    settings = worker_settings(kafka_settings, api, api=retrying, retry={"delays_s": [0.5, 1.0]})
    await produce(settings.kafka, lines)
    worker = EnrichmentWorker(settings)
    async with running(worker) as task:
        await until(lambda: worker.counts.processed >= len(lines), task=task)
        assert (worker.counts.succeeded, worker.counts.skipped, worker.counts.dead_lettered) == (2, 1, 4)
        dead = [DeadLetter.from_bytes(r.value) for r in await read_topic(settings.kafka, settings.kafka.dlq_topic, 4)]
        assert Counter((d.error_type, d.error_category) for d in dead) == {("NotFound", "permanent"): 3, ("MalformedEvent", "permanent"): 1}
        assert all(d.trace_id for d in dead if d.error_type == "NotFound")
        assert api.stats()["project_by_id"][str(missing)] == 1  # the 404 is remembered as absent

        # a burst of 500s shorter than the in-process retries: the events still succeed
        api.set_faults(error_rate=1.0)
        burst = [event(healthy, "POLICYHOLDER_INVITED", 10 + i) for i in range(3)]
        burst += [event(healthy, "CUSTOM_TASK_ASSIGNED", 20 + i, task_assignment_id=a) for i, a in enumerate(project_children(healthy).assignment_ids)]
        worker.cache.invalidate([str(healthy)])  # so the project must be fetched during the burst
        before = worker.counts.processed
        await produce(settings.kafka, burst)
        await asyncio.sleep(0.15)
        api.reset_faults()
        await until(lambda: worker.counts.processed >= before + len(burst), task=task)
        assert worker.counts.dead_lettered == 4 and worker.counts.succeeded == 2 + len(burst)
        assert api.stats()["status"].get("500", 0) + api.stats()["status"].get("503", 0) > 0

        # 429 with Retry-After: the worker waits it out and the events succeed
        api.set_faults(rate_limit_rate=1.0, retry_after_s=1)
        limited = [event(healthy, "PROJECT_AUTO_XA_LINKING_UNSUCCESSFUL", 40 + i) for i in range(3)]
        worker.cache.invalidate([str(healthy)])
        before, started = worker.counts.processed, time.monotonic()
        await produce(settings.kafka, limited)
        await until(lambda: api.stats()["status"].get("429", 0) > 0)
        api.reset_faults()
        await until(lambda: worker.counts.processed >= before + len(limited), task=task)
        assert time.monotonic() - started >= 1.0  # not before the Retry-After
        assert worker.counts.dead_lettered == 4 and worker.counts.succeeded == 2 + len(burst) + len(limited)

        # 500s for longer than the in-process retries: the event goes to the retry topic, the
        # worker goes on, and the retry scheduler brings it back once it is due: it succeeds then
        api.set_faults(error_rate=1.0)
        worker.cache.invalidate([str(healthy)])
        before = worker.counts.processed
        await produce(settings.kafka, [event(healthy, "POLICYHOLDER_JOINED", 50)])
        await until(lambda: worker.counts.retried == 1, task=task)
        api.reset_faults()
        (retry,) = await read_topic(settings.kafka, settings.kafka.retry_topic, 1)
        assert dict(retry.headers)["retry-attempt"] == b"1" and b"Http50" in dict(retry.headers)["retry-error"]
        assert json.loads(retry.value)["event_type"] == "POLICYHOLDER_JOINED"
        await produce(settings.kafka, [event(healthy, "POLICYHOLDER_JOINED", 51)])
        await until(lambda: worker.counts.processed >= before + 2, task=task)
        scheduler_stop = asyncio.Event()
        scheduler = asyncio.create_task(RetryScheduler(settings).run(scheduler_stop))
        try:
            await until(lambda: worker.counts.processed >= before + 3, task=task)  # the retried event, back after its delay
        finally:
            scheduler_stop.set()
            await scheduler
        assert worker.counts.succeeded == 4 + len(burst) + len(limited)
        assert (worker.counts.retried, worker.counts.dead_lettered) == (1, 4)
    assert worker.counts.reconciles()


async def test_readiness_and_metrics_when_healthy(kafka_settings: KafkaSettings, api: SimulatorProcess) -> None:
    settings = worker_settings(kafka_settings, api, worker={"http_port": free_port()})
    await produce(settings.kafka, generate_events(20, 2, seed=5))
    worker = EnrichmentWorker(settings)
    async with running(worker) as task:
        await until(lambda: worker.counts.processed >= 20, task=task)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.ops_port}") as ops:
            ready = await ops.get("/health/ready")
            metrics = (await ops.get("/metrics")).text
            cache_stats = await ops.get("/cache/stats")
    assert ready.status_code == 200, ready.json()
    assert "claimx_api_latency_seconds_bucket" in metrics and "claimx_project_cache_requests_total" in metrics
    assert cache_stats.status_code == 200 and cache_stats.json()["size"] == 2


async def test_two_workers_share_the_group_and_a_rebalance_loses_nothing(kafka_settings: KafkaSettings, api: SimulatorProcess) -> None:
    api.set_faults(latency_ms=100)
    lines = generate_events(300, 30, seed=9)
    settings = worker_settings(kafka_settings, api)
    await produce(settings.kafka, lines)
    first = EnrichmentWorker(settings.model_copy(update={"worker": settings.worker.model_copy(update={"name": "w1"})}, deep=True))
    second = EnrichmentWorker(settings.model_copy(update={"worker": settings.worker.model_copy(update={"name": "w2"})}, deep=True))
    for worker in (first, second):  # slow enough that the second joins mid-stream
        worker.settings.enrich.max_in_flight = 4
    async with running(first) as task_one:
        await until(lambda: first.counts.processed >= 20, task=task_one)
        async with running(second) as task_two:
            await until(lambda: first.counts.processed + second.counts.processed >= len(lines), task=task_two)
            await until(lambda: first.counts.pending == 0 and second.counts.pending == 0)
            await until(lambda: all_committed(settings.kafka, settings.enrich.group_id, len(lines)), "both workers' commits")
    assert first.counts.reconciles() and second.counts.reconciles()
    assert second.counts.consumed > 0  # the rebalance gave it partitions
    parsed = [parse_event(line.encode()) for line in lines]
    wanted = {e.trace_id for e in parsed if e.event_type in HANDLERS}
    messages = [EntityRowsMessage.from_bytes(r.value) for r in await read_topic(settings.kafka, settings.kafka.entity_rows_topic, len(wanted))]
    assert {m.trace_id for m in messages} == wanted  # every event written (a replayed one may appear twice)
    positions = await committed(settings.kafka, settings.enrich.group_id)
    assert sum(positions.values()) == len(lines)






async def test_sigterm_drains_in_flight_events_and_commits(kafka_settings: KafkaSettings, api: SimulatorProcess) -> None:
    api.set_faults(latency_ms=150)
    lines = generate_events(120, 12, seed=4)
    settings = worker_settings(kafka_settings, api)
    await produce(settings.kafka, lines)
    kafka = settings.kafka
    proc = start_enrich_process(settings, api, KP_ENRICH__MAX_IN_FLIGHT="16", WORKER_NAME="sigterm-test")
    try:
        async def busy() -> bool:  # some events done, more in flight
            assert proc.poll() is None, "the worker exited"
            return len(await read_topic(kafka, kafka.entity_rows_topic, 10, timeout_s=1)) >= 10

        await until(busy, "ten events written", timeout_s=60)
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    summary = [json.loads(line) for line in stderr.splitlines() if '"enrichment worker stopped"' in line]
    assert summary and summary[0]["reconciled"] is True and summary[0]["pending"] == 0
    assert any('"Cycle ' in line for line in stderr.splitlines())
    processed = summary[0]["succeeded"] + summary[0]["skipped"] + summary[0]["retried"] + summary[0]["dead_lettered"]
    assert 0 < processed < len(lines)  # stopped mid-stream
    positions = await committed(kafka, settings.enrich.group_id)
    assert sum(positions.values()) == processed  # everything it finished, nothing it did not
    rows = await read_topic(kafka, kafka.entity_rows_topic, summary[0]["succeeded"])
    assert len(rows) == summary[0]["succeeded"]


async def test_a_stale_project_is_refreshed_in_the_background_and_written(kafka_settings: KafkaSettings, api: SimulatorProcess) -> None:
    settings = worker_settings(kafka_settings, api, cache={"ttl_s": 60, "refresh_after_s": 1, "ttl_jitter_s": 0})
    pid = project_ids(1, first=5_000_970)[0]

    def event(kind: str, second: int) -> str:
        return json.dumps({"event_type": kind, "project_id": pid, "ingested_at": f"2026-04-01T00:00:{second:02d}Z"})

    await produce(settings.kafka, [event("PROJECT_CREATED", 0), event("POLICYHOLDER_INVITED", 1)])
    worker = EnrichmentWorker(settings)
    async with running(worker) as task:
        await until(lambda: worker.counts.processed >= 2, task=task)
        # the entry must be older than refresh_after_s before the next event (there is no event to wait on: its age is the condition)
        verified = time.monotonic()
        await until(lambda: time.monotonic() - verified > settings.cache.refresh_after_s, "the entry to age past refresh_after_s")
        await produce(settings.kafka, [event("POLICYHOLDER_JOINED", 2)])
        await until(lambda: worker.counts.processed >= 3 and worker.cache.stats().background_refreshes == 1, task=task)
    assert api.stats()["project"] == 2  # the creation, then one background refresh
    messages = [EntityRowsMessage.from_bytes(r.value) for r in await read_topic(settings.kafka, settings.kafka.entity_rows_topic, 4)]
    (refreshed,) = [m for m in messages if m.event_type == "PROJECT_REFRESHED"]
    assert refreshed.project_id == str(pid) and refreshed.rows["claimx_projects"][0]["project_number"]
    joined = next(m for m in messages if m.event_type == "POLICYHOLDER_JOINED")
    assert [set(r) for r in joined.rows["claimx_projects"]] == [{"project_id", "policyholder_joined_at"}]  # a hit: no project rows
