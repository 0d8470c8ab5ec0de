"""The enrichment worker: ClaimX events in, one EntityRowsMessage per event out.

Read top to bottom, one consumed message goes through:

1. `_dispatch`: the offset is tracked (OffsetTracker), the bytes are parsed (a malformed
   message fails at once), and the event joins its project's queue: it runs concurrently with
   everything else, but its output is produced only after the project's previous event's.
2. `_process`: the registered handler fetches what the event needs from the ClaimX API while
   the ProjectCache verifies the parent project (`handlers.base.EventHandler.handle`).
3. The rows are produced to the entity-rows topic keyed by project id; a failure is sent where
   `route_failure` says (the retry topic or the dead-letter topic), except a 401, which holds
   the event (below); an unknown event type is skipped.
4. Once the broker acknowledged that message, the project's snapshot is confirmed in the cache
   and the offset is marked done. Offsets are committed every `COMMIT_INTERVAL_S`, on revoke and
   on shutdown, up to the highest offset below which every message is done.

Every consumed message ends in exactly one outcome: succeeded, skipped, retried or
dead_lettered, unless a revoke or a stop hands it back unfinished (the group reads it again);
`WorkerCounts.reconciles()` checks it.

At most `settings.enrich.max_in_flight` events are in flight: parsed and being processed
(fetching, waiting for their project's turn, handing their message to the producer). An event
frees its slot once its message is in the producer; until the broker acknowledges it, the event
is still pending (its offset is not done, a drain or revoke waits for it). Those awaiting an ack
are bounded by the producer itself, which holds at most one batch per partition besides the
one being sent and makes `send()` wait beyond that.

Back-pressure (`_consume`): while every slot is taken (a slow API) or the credentials were
rejected, every assigned partition is paused and the loop keeps calling `getmany`. aiokafka
leaves the group when `getmany` was not called for `max_poll_interval_ms` (its heartbeat task
compares the time since the last poll ended with that interval), so polling paused partitions
keeps the assignment however long the API takes; a paused partition returns nothing and its
prefetched records are dropped (fetched again after `resume`), so memory does not grow either.

Credentials rejected (401, `_handle`): not the event's failure but the worker's, so the event is
never dead-lettered. It stays in flight, held where it got the 401: its slot taken, its offset
done neither (nothing at or after it in its partition is committed), its project's later events
waiting behind it. Consumption pauses, readiness reports `auth_failed`, and every
`api.auth_probe_interval_s` a probe re-reads the token (`CLAIMX_API_TOKEN_FILE` may have been
rotated) and asks for the project export of the event that failed. Once the API accepts the
credentials, the held events run their handler again and consumption resumes. Holding them is
simpler than seeking back: the offset tracker, the per-project order and the counts stay as
they are, and nothing is fetched or produced twice. A revoke or a stop hands held events back at
once (cancelled, offsets uncommitted: the group reads them again), without waiting the grace.

A message that could not be produced at all (the broker is gone) is not finished: the worker
stops with `WorkerAborted` without committing past it, and its replacement replays it.

Stopping (`_drain`): fetching stops; in-flight events get `worker.shutdown_grace_s` to finish
(the consumer keeps polling, paused, meanwhile); the rest are handed back (cancelled, their
offsets uncommitted); what is done is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError, MessageSizeTooLargeError
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge, Histogram

from kafka_pipeline.claimx.api.client import ClaimXApiClient
from kafka_pipeline.claimx.cache.admin import admin_routes
from kafka_pipeline.claimx.entity_rows import EntityRowsMessage
from kafka_pipeline.claimx.events import ClaimXEvent, derive_trace_id, parse_event
from kafka_pipeline.claimx.handlers import HANDLERS, HandlerContext, MediaBatcher, handler_for
from kafka_pipeline.claimx.handlers.base import EventHandler, HandlerResult, ProjectVerifier
from kafka_pipeline.claimx.cache.project_cache import ProjectCache, ProjectSnapshot
from kafka_pipeline.config import Settings
from kafka_pipeline.runtime.cycle_stats import CycleSnapshot, CycleStats
from kafka_pipeline.errors import AuthError, PermanentError, PipelineError
from kafka_pipeline.runtime.kafka import ensure_topics, make_consumer, make_producer
from kafka_pipeline.runtime.logging import get_logger
from kafka_pipeline.runtime.offset_tracker import OffsetTracker
from kafka_pipeline.runtime.ops_server import OpsServer
from kafka_pipeline.retry.routing import RetryMessage, next_hop

log = get_logger(__name__)

Outcome = Literal["succeeded", "skipped", "retried", "dead_lettered"]
OUTCOMES: tuple[Outcome, ...] = ("succeeded", "skipped", "retried", "dead_lettered")

COMMIT_INTERVAL_S = 0.5
FETCH_TIMEOUT_MS = 200

# Prometheus series (process-wide registry, served by the OpsServer's /metrics).
EVENTS = PromCounter("claimx_enrich_events", "Consumed events by outcome and event type.", ["outcome", "event_type"])
API_CALLS = PromCounter("claimx_api_calls", "ClaimX API requests by kind and outcome (status code or error).", ["kind", "outcome"])
API_LATENCY = Histogram(
    "claimx_api_latency_seconds",
    "ClaimX API request latency by kind.",
    ["kind"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0),
)
IN_FLIGHT = Gauge("claimx_enrich_in_flight", "Events being processed (holding an in-flight slot).", ["worker"])
AWAITING_ACK = Gauge("claimx_enrich_awaiting_ack", "Events whose message waits for the broker's acknowledgement.", ["worker"])
COMMITS = PromCounter("claimx_enrich_commits", "Offset commits by result.", ["result"])


class WorkerAborted(Exception):
    """The worker could not hand a message to the broker; it stopped without committing past it."""


# --- where a failed event goes ---------------------------------------------------------------


@dataclass(frozen=True)
class FailureRoute:
    """A failed message's destination: produce `value` to `topic` and count it as `outcome`."""

    outcome: Outcome
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def route_failure(record: ConsumerRecord, error: PipelineError, *, settings: Settings, trace_id: str | None) -> FailureRoute:
    """Where a failed event goes; the one place that decides it.

    - permanent (malformed message, 404 and other 4xx): the dead-letter topic, with the reason;
    - transient (5xx, 429, timeouts, open circuit, after the client's in-process retries): the
      retry topic while `settings.retry.delays_s` has a delay left for the message's attempt
      (`kafka_pipeline.retry.routing.next_hop`), then the dead-letter topic.

    An auth failure (401) is not the event's fault and never comes here: the worker holds the
    event and pauses (`EnrichmentWorker._handle`); `next_hop` raises ValueError for it.
    """
    hop = next_hop(
        record,
        error,
        delays_s=settings.retry.delays_s,
        retry_topic=settings.kafka.retry_topic,
        worker=settings.worker.name,
        trace_id=trace_id,
    )
    if isinstance(hop, RetryMessage):
        return FailureRoute("retried", hop.topic, hop.key, hop.value, hop.headers)
    return FailureRoute("dead_lettered", settings.kafka.dlq_topic, record.key, hop.to_bytes())


# --- counters --------------------------------------------------------------------------------


@dataclass
class WorkerCounts:
    consumed: int = 0
    pending: int = 0  # consumed, not yet finished: in flight or awaiting the broker's ack
    in_flight: int = 0  # holding an in-flight slot (being processed)
    outcomes: Counter[str] = field(default_factory=Counter)
    by_type: Counter[tuple[str, str]] = field(default_factory=Counter)  # (outcome, event_type)
    aborted: int = 0  # could not be produced: the worker stopped
    handed_back: int = 0  # unfinished at a revoke or a stop: the group reads them again
    peak_in_flight: int = 0  # the most events ever in flight at once (never above max_in_flight)

    def finished(self, outcome: Outcome, event_type: str) -> None:
        self.outcomes[outcome] += 1
        self.by_type[(outcome, event_type)] += 1

    @property
    def succeeded(self) -> int:
        return self.outcomes["succeeded"]

    @property
    def skipped(self) -> int:
        return self.outcomes["skipped"]

    @property
    def retried(self) -> int:
        return self.outcomes["retried"]

    @property
    def dead_lettered(self) -> int:
        return self.outcomes["dead_lettered"]

    @property
    def processed(self) -> int:
        return sum(self.outcomes.values())

    def reconciles(self) -> bool:
        """Every consumed message is in exactly one outcome, still pending, or handed back."""
        return self.consumed == self.processed + self.pending + self.aborted + self.handed_back

    @property
    def awaiting_ack(self) -> int:
        return self.pending - self.in_flight


# --- the worker ------------------------------------------------------------------------------


class EnrichmentWorker:
    """`await EnrichmentWorker(settings).run(stop_event)` runs until `stop_event` is set.

    `cache` defaults to `ProjectCache.from_settings(settings.cache)`; pass `NoCache()` for the
    naive baseline. `api_transport` is handed to httpx (tests only).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        cache: ProjectVerifier | None = None,
        api_transport: Any = None,
        media_window_s: float = 0.005,
    ) -> None:
        self.settings = settings
        self.name = settings.worker.name
        self.counts = WorkerCounts()
        self.tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self.api = ClaimXApiClient(settings.api, transport=api_transport, observer=self._observe_api_call)
        self.cache: Any = cache if cache is not None else ProjectCache.from_settings(
            settings.cache, delta=settings.delta, on_background_refresh=self._emit_refreshed_project
        )
        self.media = MediaBatcher(self.api, window_s=media_window_s)
        self.context = HandlerContext(api=self.api, cache=self.cache, media=self.media)
        self.ops: OpsServer | None = None
        self.running = False
        self.auth_failed = False  # the API rejected our credentials and no probe got through since
        self._credentials_ok = asyncio.Event()  # set while the credentials work: held events wait for it
        self._credentials_ok.set()
        self._held: set[asyncio.Task[Any]] = set()  # events waiting for the credentials
        self._probe: asyncio.Task[None] | None = None
        self._stopping = False
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._assigned: set[TopicPartition] = set()
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = defaultdict(set)
        # Per project, the turn of its latest event: an Event set once that event's output was
        # handed to the producer (or it ended without output), so the next one may go.
        self._project_tail: dict[str, asyncio.Event] = {}
        self._slot_freed = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._fatal: BaseException | None = None
        self._stats: CycleStats | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self, stop_event: asyncio.Event) -> None:
        """Consume until `stop_event` is set, then drain in-flight work and commit.

        Raises WorkerAborted when a message could not be produced (after committing what is done)."""
        kafka = self.settings.kafka
        stats_stop = asyncio.Event()
        stats_task: asyncio.Task[None] | None = None
        try:
            await ensure_topics(kafka, [kafka.events_topic, kafka.entity_rows_topic, kafka.retry_topic, kafka.dlq_topic])
            self._producer = make_producer(kafka)
            self._consumer = make_consumer(
                kafka, group_id=self.settings.enrich.group_id, max_poll_records=self.settings.enrich.max_in_flight
            )
            self._consumer.subscribe([kafka.events_topic], listener=_RebalanceListener(self))
            if hasattr(self.cache, "start"):
                await self.cache.start()
            await self._producer.start()
            await self._consumer.start()
            if self.settings.worker.http_port:
                self.ops = OpsServer(
                    self.settings.worker.http_host,
                    self.settings.worker.http_port,
                    readiness={"consumer": self._consumer_ready, "claimx_api": self._api_ready, **self._cache_readiness()},
                    routes=admin_routes(self.settings, self.cache),
                )
                await self.ops.start()
            self.running = True
            IN_FLIGHT.labels(self.name).set_function(lambda: self.counts.in_flight)  # read at scrape time
            AWAITING_ACK.labels(self.name).set_function(lambda: self.counts.awaiting_ack)
            self._stats = CycleStats(self._sample, interval_s=self.settings.enrich.stats_interval_s)
            stats_task = asyncio.create_task(self._stats.loop(stats_stop), name="cycle-stats")
            log.info(
                "enrichment worker started",
                topic=kafka.events_topic,
                group=self.settings.enrich.group_id,
                max_in_flight=self.settings.enrich.max_in_flight,
                handlers=len(HANDLERS),
                ops_port=self.ops.port if self.ops else None,
            )
            await self._consume(stop_event)
            await self._drain(self.settings.worker.shutdown_grace_s)
        finally:
            self.running = False
            if self._probe is not None:
                self._probe.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._probe
            stats_stop.set()
            if stats_task is not None and self._stats is not None:
                await stats_task
                self._stats.tick()  # the last, partial cycle
            await self._close()
        if self._fatal is not None:
            raise WorkerAborted(f"stopped: a message could not be produced: {self._fatal}") from self._fatal
        log.info("enrichment worker stopped", **self.summary())

    async def _close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._commit()
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        if hasattr(self.cache, "close"):
            await self.cache.close()
        await self.api.aclose()
        if self.ops is not None:
            await self.ops.stop()
        for gauge in (IN_FLIGHT, AWAITING_ACK):
            with contextlib.suppress(KeyError):
                gauge.remove(self.name)

    def summary(self) -> dict[str, Any]:
        c = self.counts
        return {
            "consumed": c.consumed,
            "succeeded": c.succeeded,
            "skipped": c.skipped,
            "retried": c.retried,
            "dead_lettered": c.dead_lettered,
            "in_flight": c.in_flight,
            "pending": c.pending,
            "handed_back": c.handed_back,
            "peak_in_flight": c.peak_in_flight,
            "reconciled": c.reconciles(),
            "api_calls": dict(self.api.calls),
        }

    # --- the consume loop --------------------------------------------------------------------

    async def _consume(self, stop_event: asyncio.Event) -> None:
        assert self._consumer is not None
        next_commit = time.monotonic() + COMMIT_INTERVAL_S
        while not stop_event.is_set() and self._fatal is None:
            room = self._room()
            if room > 0:
                self._consumer.resume(*self._consumer.paused())
                self._take(await self._consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=room))
            else:  # back-pressure (see the module docstring): wait for a slot, polling paused meanwhile
                self._slot_freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot_freed.wait(), FETCH_TIMEOUT_MS / 1000)
                if self._room() <= 0:
                    await self._poll_paused()
            if time.monotonic() >= next_commit:
                await self._commit()
                next_commit = time.monotonic() + COMMIT_INTERVAL_S

    def _room(self) -> int:
        """How many more events may be taken now: none while the credentials are rejected or the
        worker is stopping."""
        if self.auth_failed or self._stopping:
            return 0
        return self.settings.enrich.max_in_flight - self.counts.in_flight

    async def _poll_paused(self) -> None:
        """Poll with every assigned partition paused: nothing comes back, but the group keeps this
        member (aiokafka leaves the group when getmany was not called for max_poll_interval_ms)."""
        assert self._consumer is not None
        self._consumer.pause(*self._consumer.assignment())
        self._take(await self._consumer.getmany(timeout_ms=0))

    def _take(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Dispatch fetched records while there is room; hand the rest back to the consumer.

        Records beyond the room only come from a partition assigned between a pause and the poll
        after it; seeking back to the first of them makes the consumer fetch them again later."""
        assert self._consumer is not None
        for tp, records in batches.items():
            if tp not in self._assigned:  # revoked while we held it: the next owner reads it
                continue
            for record in records:
                if self._room() <= 0:
                    self._consumer.seek(tp, record.offset)
                    break
                self._dispatch(tp, record)

    def _dispatch(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        try:
            self.tracker.track(tp, record.offset)
        except ValueError:  # handed out again (a fetch position reset): it is in flight or done already
            log.warning("re-delivered message ignored", topic=tp.topic, partition=tp.partition, offset=record.offset)
            return
        self.counts.consumed += 1
        self.counts.pending += 1
        self.counts.in_flight += 1
        self.counts.peak_in_flight = max(self.counts.peak_in_flight, self.counts.in_flight)
        event: ClaimXEvent | None = None
        error: PermanentError | None = None
        try:
            event = parse_event(record.value)
        except PermanentError as exc:
            error = exc
        previous: asyncio.Event | None = None
        turn = asyncio.Event()
        if event is not None:
            previous = self._project_tail.get(event.project_id)
            self._project_tail[event.project_id] = turn
        task = asyncio.create_task(self._run_one(tp, record, event, error, previous, turn, _Slot(self)))
        self._tasks[tp].add(task)
        task.add_done_callback(self._tasks[tp].discard)

    async def _run_one(
        self,
        tp: TopicPartition,
        record: ConsumerRecord,
        event: ClaimXEvent | None,
        parse_error: PermanentError | None,
        previous: asyncio.Event | None,
        turn: asyncio.Event,
        slot: _Slot,
    ) -> None:
        event_type = _type_label(event)
        try:
            outcome = await self._process(record, event, parse_error, previous, turn, slot)
        except WorkerAborted as exc:
            self.counts.aborted += 1
            if self._fatal is None:
                self._fatal = exc.__cause__ or exc
                log.error("cannot produce to the broker: stopping", error=str(self._fatal), topic=record.topic, offset=record.offset)
            return
        except asyncio.CancelledError:  # handed back at a revoke or a stop: its offset stays uncommitted
            self.counts.handed_back += 1
            raise
        finally:
            turn.set()
            if event is not None and self._project_tail.get(event.project_id) is turn:
                del self._project_tail[event.project_id]
            slot.release()
            self.counts.pending -= 1
        self.counts.finished(outcome, event_type)
        _child(EVENTS, outcome, event_type).inc()
        self.tracker.done(tp, record.offset)

    async def _process(
        self,
        record: ConsumerRecord,
        event: ClaimXEvent | None,
        parse_error: PermanentError | None,
        previous: asyncio.Event | None,
        turn: asyncio.Event,
        slot: _Slot,
    ) -> Outcome:
        if event is None:
            assert parse_error is not None
            log.warning("malformed event", reason=str(parse_error), topic=record.topic, partition=record.partition, offset=record.offset)
            return await self._fail(record, parse_error, None, slot)
        handler = handler_for(event.event_type)
        if handler is None:
            log.info("skipped event of unknown type", event_type=event.event_type, project_id=event.project_id, trace_id=event.trace_id)
            await _wait(previous)  # keeps the project's line intact for the events behind it
            return "skipped"
        try:
            result = await self._handle(handler, event)
        except PipelineError as exc:
            await _wait(previous)
            return await self._fail(record, exc, event, slot)
        except Exception as exc:  # noqa: BLE001 - a bug in a handler must not stop the worker
            log.exception("handler failed unexpectedly", event_type=event.event_type, trace_id=event.trace_id)
            await _wait(previous)
            error = PermanentError(f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__)
            return await self._fail(record, error, event, slot)
        message = EntityRowsMessage.model_construct(  # every field is already validated
            trace_id=event.trace_id,
            event_type=event.event_type,
            project_id=event.project_id,
            event_time=event.event_time,
            rows=result.rows,
        )
        await _wait(previous)  # one project's messages go out in offset order
        try:
            await self._produce(
                self.settings.kafka.entity_rows_topic, message.to_bytes(), event.project_id.encode(), turn=turn, slot=slot
            )
        except PermanentError as exc:  # e.g. rows too large for the topic
            if result.carries_project:
                self.cache.abandon(event.project_id)
            return await self._fail(record, exc, event, slot)
        except BaseException:  # WorkerAborted, or handed back before the ack: the rows may not be written
            if result.carries_project:
                self.cache.abandon(event.project_id)
            raise
        if result.carries_project:
            self.cache.confirm(event.project_id)
        return "succeeded"

    async def _handle(self, handler: EventHandler, event: ClaimXEvent) -> HandlerResult:
        """The handler's result. A 401 holds the event here until the credentials work again,
        then the handler runs again (the module docstring says why it is held, not routed)."""
        while True:
            try:
                return await handler.handle(event, self.context)
            except AuthError as exc:
                self._credentials_rejected(event, exc)
            task = asyncio.current_task()
            assert task is not None
            self._held.add(task)
            try:
                await self._credentials_ok.wait()
            finally:
                self._held.discard(task)

    # --- credentials -----------------------------------------------------------------------

    def _credentials_rejected(self, event: ClaimXEvent, error: AuthError) -> None:
        if self.auth_failed:
            return
        self.auth_failed = True
        self._credentials_ok.clear()
        log.error(
            "CLAIMX API REJECTED OUR CREDENTIALS (401): consumption paused, events held until they work again; "
            "fix CLAIMX_API_TOKEN_FILE (re-read before every probe) or CLAIMX_API_TOKEN (needs a restart)",
            error=str(error),
            trace_id=event.trace_id,
            probe_every_s=self.settings.api.auth_probe_interval_s,
        )
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._probe_credentials(event.project_id), name="credentials-probe")

    async def _probe_credentials(self, project_id: str) -> None:
        """Every `api.auth_probe_interval_s` while the credentials are rejected: re-read the token,
        then fetch the project export of the event that got the 401. Any answer but a 401 (or a
        transient failure, which proves nothing) means the API accepts the credentials."""
        interval = self.settings.api.auth_probe_interval_s
        while self.auth_failed:
            await asyncio.sleep(interval)
            try:
                self.api.reload_token()
            except (OSError, ValueError) as exc:
                log.error("cannot re-read the ClaimX API token file", error=f"{type(exc).__name__}: {exc}")
                continue
            try:
                await self.api.get_project(project_id)
            except AuthError:
                log.error("ClaimX API still rejects our credentials (401); consumption stays paused", retry_in_s=interval)
                continue
            except PermanentError:
                pass  # the API answered (a 404, say): it accepted the credentials
            except Exception as exc:  # noqa: BLE001 - transient (or unexpected): proves nothing, try again
                log.warning("credentials probe inconclusive", error=f"{type(exc).__name__}: {exc}", retry_in_s=interval)
                continue
            self.auth_failed = False
            self._credentials_ok.set()
            log.info("ClaimX API accepts our credentials again: held events re-run, consumption resumes", held=len(self._held))

    async def _fail(self, record: ConsumerRecord, error: PipelineError, event: ClaimXEvent | None, slot: _Slot) -> Outcome:
        trace_id = event.trace_id if event is not None else None
        log.warning(
            "event failed",
            category=error.category,
            error_type=error.error_type,
            error=str(error),
            event_type=event.event_type if event else None,
            trace_id=trace_id,
            partition=record.partition,
            offset=record.offset,
        )
        route = route_failure(record, error, settings=self.settings, trace_id=trace_id)
        try:
            await self._produce(route.topic, route.value, route.key, headers=route.headers, slot=slot)
        except PermanentError as exc:
            raise WorkerAborted(f"the failure of offset {record.offset} could not be routed: {exc}") from exc
        return route.outcome

    async def _produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        *,
        headers: list[tuple[str, bytes]] | None = None,
        turn: asyncio.Event | None = None,
        slot: _Slot | None = None,
    ) -> None:
        """Hand the message to the producer (then `turn` lets the project's next event go and
        `slot` is freed for the next event) and wait for the broker's ack."""
        assert self._producer is not None
        try:
            try:
                delivery = await self._producer.send(topic, value=value, key=key, headers=headers or None)
            finally:
                if turn is not None:
                    turn.set()
                if slot is not None:
                    slot.release()
            await delivery
        except MessageSizeTooLargeError as exc:
            raise PermanentError(f"message of {len(value)} bytes too large for {topic}: {exc}", error_type="MessageTooLarge") from None
        except KafkaError as exc:
            raise WorkerAborted(f"produce to {topic} failed: {exc}") from exc

    async def _emit_refreshed_project(self, snapshot: ProjectSnapshot) -> None:
        """The cache refreshed a stale project in the background: write its rows like an event's."""
        now = datetime.now(UTC)
        message = EntityRowsMessage(
            trace_id=derive_trace_id(snapshot.project_id, "PROJECT_REFRESHED", now),
            event_type="PROJECT_REFRESHED",
            project_id=snapshot.project_id,
            event_time=now,
            rows=snapshot.rows,
        )
        try:
            await self._produce(self.settings.kafka.entity_rows_topic, message.to_bytes(), snapshot.project_id.encode())
        except WorkerAborted as exc:
            raise PermanentError(str(exc), error_type="ProduceFailed") from None

    # --- offsets and rebalances ---------------------------------------------------------------

    async def _commit(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        if self._consumer is None:
            return
        async with self._commit_lock:
            chosen = self._assigned if partitions is None else set(partitions)
            positions = self.tracker.committable(chosen)
            if not positions:
                return
            try:
                await self._consumer.commit(positions)
            except (CommitFailedError, IllegalStateError, KafkaError) as exc:
                COMMITS.labels("failed").inc()
                log.warning("offset commit failed; the next owner re-reads from the last commit", error=str(exc))
                return
            COMMITS.labels("ok").inc()
            self.tracker.mark_committed(positions)

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Before giving partitions away: let their in-flight events finish (bounded), commit
        what is done, forget the rest (the next owner replays it)."""
        self._assigned -= revoked
        pending = {task for tp in revoked for task in self._tasks.get(tp, ())}
        if pending:
            log.info("rebalance: finishing in-flight events of revoked partitions", partitions=len(revoked), in_flight=len(pending))
            await self._finish_or_hand_back(pending, self.settings.worker.shutdown_grace_s, keep_polling=False)
        await self._commit(revoked)
        self.tracker.drop(revoked)
        for tp in revoked:
            self._tasks.pop(tp, None)
        log.info("partitions revoked", partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked))

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._assigned |= assigned
        log.info("partitions assigned", partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))

    async def _drain(self, timeout_s: float) -> None:
        """On stop: take nothing more, give in-flight events `timeout_s` to finish, commit."""
        self._stopping = True
        pending = {task for tasks in self._tasks.values() for task in tasks}
        if pending:
            log.info("draining in-flight events", in_flight=len(pending), held_for_credentials=len(self._held))
            await self._finish_or_hand_back(pending, timeout_s, keep_polling=True)
        await self._commit()

    async def _finish_or_hand_back(self, tasks: set[asyncio.Task[None]], timeout_s: float, *, keep_polling: bool) -> None:
        """Wait up to `timeout_s` for `tasks`, then cancel what is left: those events are handed
        back (their offsets stay uncommitted, the group reads them again). Events held for the
        credentials cannot finish and are handed back at once. `keep_polling` polls the consumer
        (paused) while waiting, so a long grace never costs the group membership (not possible
        inside a rebalance callback, where the rebalance itself is waiting)."""
        for task in tasks & self._held:
            task.cancel()
        deadline = time.monotonic() + timeout_s
        pending = set(tasks)
        while pending and (left := deadline - time.monotonic()) > 0:
            _, pending = await asyncio.wait(pending, timeout=min(left, FETCH_TIMEOUT_MS / 1000) if keep_polling else left)
            if keep_polling:
                await self._poll_paused()
        if pending:
            log.warning("in-flight events did not finish in time; they are handed back and will be replayed", unfinished=len(pending))
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=5)

    # --- observability ------------------------------------------------------------------------

    def _observe_api_call(self, kind: str, outcome: str, seconds: float) -> None:
        _child(API_CALLS, kind, outcome).inc()
        if outcome != "circuit_open":
            _child(API_LATENCY, kind).observe(seconds)

    def _consumer_ready(self) -> tuple[bool, dict[str, Any]]:
        c = self.counts
        paused = len(self._consumer.paused()) if self._consumer is not None else 0
        details = {"assigned_partitions": len(self._assigned), "paused_partitions": paused, "in_flight": c.in_flight, "awaiting_ack": c.awaiting_ack}
        return self.running, details

    def _api_ready(self) -> tuple[bool, dict[str, Any]]:
        state = self.api.breaker.state
        return state != "open" and not self.auth_failed, {"breaker": state, "auth_failed": self.auth_failed}

    def _cache_readiness(self) -> dict[str, Any]:
        check = getattr(self.cache, "readiness", None)
        return {"project_cache": check} if check is not None else {}

    def _sample(self) -> CycleSnapshot:
        gauges: dict[str, Any] = {"in_flight": self.counts.in_flight, "awaiting_ack": self.counts.awaiting_ack}
        stats = self.cache.stats() if hasattr(self.cache, "stats") else None
        if stats is not None:
            gauges["project_cache_size"] = stats.size
            gauges["hit_rate"] = float(stats.hit_rate)
            gauges["l1_hit_rate"] = float(stats.l1_hit_rate)  # per tier: in-process, then Redis
            gauges["l2_hit_rate"] = float(stats.l2_hit_rate)
            gauges["redis"] = stats.redis_state
        return CycleSnapshot(
            succeeded=self.counts.succeeded,
            failed=self.counts.retried + self.counts.dead_lettered,
            skipped=self.counts.skipped,
            api_calls=sum(self.api.calls.values()),
            gauges=gauges,
        )


class _Slot:
    """One of the worker's `max_in_flight` slots, held by an event until its message is in the
    producer (or it ended without one); `release` is idempotent."""

    __slots__ = ("worker", "held")

    def __init__(self, worker: EnrichmentWorker) -> None:
        self.worker = worker
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.worker.counts.in_flight -= 1
            self.worker._slot_freed.set()  # noqa: SLF001


class _RebalanceListener(ConsumerRebalanceListener):
    def __init__(self, worker: EnrichmentWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.worker._on_revoked(set(revoked))  # noqa: SLF001

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.worker._on_assigned(set(assigned))  # noqa: SLF001


_CHILDREN: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, looked up once (labels() takes a lock and builds a key each call)."""
    key = (metric, *labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*labels)
    return child


async def _wait(turn: asyncio.Event | None) -> None:
    if turn is not None:
        await turn.wait()


def _type_label(event: ClaimXEvent | None) -> str:
    """A bounded label: known types by name, the rest as `other`, unparsed messages as `malformed`."""
    if event is None:
        return "malformed"
    return event.event_type if event.event_type in HANDLERS else "other"
