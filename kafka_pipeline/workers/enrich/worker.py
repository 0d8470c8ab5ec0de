"""The enrichment worker: ClaimX events in, one EntityRowsMessage per event out.

It runs on the consumer runtime (`kafka_pipeline.runtime.consumer`), which does the Kafka part:
polling, pausing while there is no room, rebalances, commits up to the finished prefix of each
partition, the drain on stop. Read top to bottom, one consumed message goes through:

1. `add`: the bytes are parsed (a malformed message fails at once), the event takes an
   in-flight slot and joins its project's lane (`lanes.ProjectLanes`): it runs concurrently
   with everything else, but its output is produced only after the project's previous event's.
2. `_process`: the registered handler fetches what the event needs from the ClaimX API while
   the ProjectCache verifies the parent project, through the credentials gate
   (`credentials.CredentialsGate`: a 401 holds the event and pauses the worker).
3. The rows are produced to the entity-rows topic keyed by project id; a failure goes where
   `outcomes.route_failure` says (the retry topic or the dead-letter topic); an unknown event
   type is skipped. Anything else raised on the way ends in the runtime's error boundary (the
   message is dead-lettered with the exception's type and message).
4. Once the broker acknowledged that message, the project's snapshot is confirmed in the cache
   and the offset is done (`runtime.done`).

Every consumed message ends in exactly one outcome: succeeded, skipped, retried or
dead_lettered, unless a revoke or a stop hands it back unfinished (the group reads it again);
`WorkerCounts.reconciles()` checks it.

At most `settings.enrich.max_in_flight` events are in flight: parsed and being processed
(fetching, waiting for their project's turn, handing their message to the producer). An event
frees its slot once its message is in the producer; until the broker acknowledges it, the event
is still pending (its offset is not done, a drain or revoke waits for it). Those awaiting an ack
are bounded by the producer itself, which holds at most one batch per partition besides the
one being sent and makes `send()` wait beyond that.

A message that could not be produced at all (the broker is gone) is not finished: the worker
stops with `WorkerAborted` without committing past it, and its replacement replays it.

Stopping (`drain`): in-flight events get `worker.shutdown_grace_s` to finish (the runtime keeps
polling, paused, meanwhile); the rest are handed back (cancelled, their offsets uncommitted).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from prometheus_client import REGISTRY, CollectorRegistry

from kafka_pipeline.claimx.api.client import ClaimXApiClient
from kafka_pipeline.claimx.cache.admin import admin_routes
from kafka_pipeline.claimx.cache.factory import build_project_cache
from kafka_pipeline.claimx.cache.project_cache import CacheStats, ProjectCache, ProjectSnapshot
from kafka_pipeline.claimx.cache.warm import Warmer, delta_warmer
from kafka_pipeline.claimx.entity_rows import EntityRowsMessage, encode_rows_message
from kafka_pipeline.claimx.events import ClaimXEvent, derive_trace_id, parse_event
from kafka_pipeline.claimx.handlers import HANDLERS, HandlerContext, MediaBatcher, handler_for
from kafka_pipeline.claimx.handlers.base import HandlerResult, ProjectVerifier, RefreshLimit, refresh_requested
from kafka_pipeline.config import Settings
from kafka_pipeline.dead_letters.sink import DeadLetterFailed
from kafka_pipeline.errors import PermanentError, PipelineError, WorkerFailed
from kafka_pipeline.observability.logging import get_logger
from kafka_pipeline.observability.ops_server import ReadinessCheck
from kafka_pipeline.observability.tracing import traced_consume, with_trace_headers
from kafka_pipeline.runtime.app import ConsumerSpec, ConsumerWorker, RuntimeHandle
from kafka_pipeline.runtime.consumer import run_app
from kafka_pipeline.runtime.cycle_stats import CycleSnapshot
from kafka_pipeline.workers.enrich.credentials import CredentialsGate
from kafka_pipeline.workers.enrich.lanes import ProjectLanes, Slot, Slots, Turn
from kafka_pipeline.workers.enrich.metrics import EnrichMetrics
from kafka_pipeline.workers.enrich.outcomes import OUTCOMES, Outcome, WorkerCounts, route_failure, type_label

__all__ = ["EnrichmentWorker", "WorkerAborted", "WorkerCounts", "route_failure"]

log = get_logger(__name__)


class WorkerAborted(WorkerFailed):
    """The worker could not hand a message to the broker; it stopped without committing past it."""


class WorkerCache(ProjectVerifier, Protocol):
    """What the worker needs of its project cache (ProjectCache, or NoCache for the naive baseline)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def stats(self) -> CacheStats: ...

    def readiness(self) -> tuple[bool, dict[str, Any]]: ...


class EnrichmentWorker(ConsumerWorker):
    """`await EnrichmentWorker(settings).run(stop_event)` runs until `stop_event` is set.

    `cache` defaults to `build_project_cache(settings.cache)`; pass `NoCache()` for the
    naive baseline. `api_transport` is handed to httpx (tests only).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        cache: WorkerCache | None = None,
        api_transport: Any = None,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.settings = settings
        self.name = settings.worker.name
        self.counts = WorkerCounts()
        self.aborted: WorkerAborted | None = None  # a message could not be produced: the worker stops
        self.metrics = EnrichMetrics.on(registry)
        self.api = ClaimXApiClient(settings.api, transport=api_transport, observer=self.metrics.observe_api_call)
        self.cache: WorkerCache = cache if cache is not None else build_project_cache(
            settings.cache, registry=registry, on_background_refresh=self._emit_refreshed_project
        )
        # warm start and POST /cache/warm read the projects table (a real cache only)
        self._warm: Warmer | None = delta_warmer(self.cache, settings.delta) if isinstance(self.cache, ProjectCache) else None
        self.media = MediaBatcher(self.api, window_s=settings.enrich.media_window_s)
        self.context = HandlerContext(api=self.api, cache=self.cache, media=self.media)
        self.credentials = CredentialsGate(self.api, probe_interval_s=settings.api.auth_probe_interval_s)
        self.refresh_limit = RefreshLimit(settings.enrich.refresh_min_interval_s)
        self.lanes = ProjectLanes()
        kafka = settings.kafka
        self.spec = ConsumerSpec(
            group_id=settings.enrich.group_id,
            topics=[kafka.events_topic],
            ensure_topics=[kafka.events_topic, kafka.entity_rows_topic, kafka.retry_topic, kafka.dlq_topic],
            max_poll_records=settings.enrich.max_in_flight,
            stats_interval_s=settings.enrich.stats_interval_s,
            registry=registry,
            made_by="enrich",
            routes=admin_routes(settings, self.cache, warm_from=self._warm),
        )
        self.slots = Slots(on_free=self._wake)
        self._stopping = False
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = defaultdict(set)

    @property
    def auth_failed(self) -> bool:
        return self.credentials.rejected

    async def run(self, stop_event: asyncio.Event) -> None:
        """Consume until `stop_event` is set, then drain in-flight work and commit.

        Raises WorkerAborted when a message could not be produced (after committing what is done)."""
        try:
            await run_app(self, self.settings, stop_event)
        finally:
            self.metrics.forget(self.name)
        summary = self.summary()
        api_calls = " ".join(f"{kind}={n}" for kind, n in sorted(summary["api_calls"].items()))
        log.info("enrichment worker stopped", **{**summary, "api_calls": api_calls or "none"})

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

    # --- the app contract (kafka_pipeline.runtime.app) ---------------------------------------

    async def start(self, handle: RuntimeHandle) -> None:
        await super().start(handle)
        await self.cache.start()
        if self.settings.cache.warm_from_delta and self._warm is not None:
            try:
                await self._warm(self.settings.cache.warm_window_s)
            except Exception as exc:  # noqa: BLE001 - a cold cache is slower, not wrong
                log.warning("project_cache_warm_failed", error=f"{type(exc).__name__}: {exc}")
        self.metrics.start_at_zero(OUTCOMES, (*HANDLERS, "other", "malformed"))
        self.metrics.watch(
            self.name,
            in_flight=lambda: self.counts.in_flight,
            awaiting_ack=lambda: self.counts.awaiting_ack,
            breaker_open=lambda: float(self.api.breaker.state == "open"),
            credentials_rejected=lambda: float(self.credentials.rejected),
            rate_limit_paused=self.api.rate_limit_paused_s,
        )
        log.info(
            "enrichment worker started",
            topic=self.settings.kafka.events_topic,
            group=self.settings.enrich.group_id,
            max_in_flight=self.settings.enrich.max_in_flight,
            handlers=len(HANDLERS),
        )

    def room(self, tp: TopicPartition) -> int:
        """How many more events may be taken now: none while the credentials are rejected or the
        worker is stopping."""
        if self.credentials.rejected or self._stopping:
            return 0
        return self.settings.enrich.max_in_flight - self.slots.in_use

    def _wake(self) -> None:
        if self.handle is not None:
            self.handle.wake()

    async def add(self, tp: TopicPartition, record: ConsumerRecord[Any, Any]) -> None:
        self.counts.consumed += 1
        self.counts.pending += 1
        event: ClaimXEvent | None = None
        error: PermanentError | None = None
        try:
            event = parse_event(record.value, max_future_skew_s=self.settings.enrich.max_future_skew_s)
        except PermanentError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - any bytes at all are a malformed event at worst
            error = PermanentError(f"malformed event: {type(exc).__name__}: {str(exc)[:200]}", error_type=type(exc).__name__)
        slot = self.slots.take()
        self.counts.in_flight = self.slots.in_use
        self.counts.peak_in_flight = self.slots.peak
        turn = self.lanes.join(event.project_id if event is not None else None)
        task = asyncio.create_task(self._run_one(tp, record, event, error, turn, slot))
        self._tasks[tp].add(task)
        task.add_done_callback(self._tasks[tp].discard)

    async def release(self, partitions: set[TopicPartition]) -> None:
        """Before giving partitions away: let their in-flight events finish (bounded); the rest
        is handed back (the next owner replays it)."""
        pending = {task for tp in partitions for task in self._tasks.get(tp, ())}
        if pending:
            log.info("rebalance: finishing in-flight events of revoked partitions", partitions=len(partitions), in_flight=len(pending))
            await self._finish_or_hand_back(pending, self.settings.worker.shutdown_grace_s)
        for tp in partitions:
            self._tasks.pop(tp, None)

    async def drain(self, grace_s: float) -> None:
        """On stop: take nothing more, give in-flight events `grace_s` to finish."""
        self._stopping = True
        pending = {task for tasks in self._tasks.values() for task in tasks}
        if pending:
            log.info("draining in-flight events", in_flight=len(pending), held_for_credentials=len(self.credentials.held))
            await self._finish_or_hand_back(pending, grace_s)

    async def close(self) -> None:
        await self.credentials.close()
        await self.cache.close()
        await self.api.aclose()

    def readiness(self) -> Mapping[str, ReadinessCheck]:
        return {"events": self._events_ready, "claimx_api": self._api_ready, "project_cache": self.cache.readiness}

    # --- one event -----------------------------------------------------------------------------

    async def _run_one(
        self,
        tp: TopicPartition,
        record: ConsumerRecord[Any, Any],
        event: ClaimXEvent | None,
        parse_error: PermanentError | None,
        turn: Turn,
        slot: Slot,
    ) -> None:
        event_type = type_label(event)
        try:
            outcome = await self._process(record, event, parse_error, turn, slot)
        except WorkerAborted as exc:
            self.counts.aborted += 1
            if self.aborted is None:
                self.aborted = exc
                self.require_handle().fail(exc)
                log.error("cannot produce to the broker: stopping", error=str(exc.__cause__ or exc), topic=record.topic, offset=record.offset)
            return
        except asyncio.CancelledError:  # handed back at a revoke or a stop: its offset stays uncommitted
            self.counts.handed_back += 1
            raise
        except Exception as exc:  # noqa: BLE001 - the error boundary: even the failure path raised
            outcome = "dead_lettered"
            if not await self.require_handle().reject(tp, record, exc, trace_id=_trace_of(event)):  # the DLQ refused it too
                self.counts.aborted += 1
                return
        finally:
            self.lanes.leave(turn)
            slot.release()
            self.counts.in_flight = self.slots.in_use
            self.counts.pending -= 1
        self.counts.finished(outcome, event_type)
        self.metrics.event(outcome, event_type)
        self.require_handle().done(tp, record.offset)

    @traced_consume("claimx.event", fields=("event_type", "project_id", "trace_id"))  # a span per event, API calls inside
    async def _process(
        self,
        record: ConsumerRecord[Any, Any],
        event: ClaimXEvent | None,
        parse_error: PermanentError | None,
        turn: Turn,
        slot: Slot,
    ) -> Outcome:
        if event is None:
            assert parse_error is not None
            log.debug("malformed event", reason=str(parse_error)[:300], topic=record.topic, partition=record.partition, offset=record.offset)
            return await self._fail(record, parse_error, None, slot)
        handler = handler_for(event.event_type)
        if handler is None:
            log.debug("skipped event of unknown type", event_type=event.event_type, project_id=event.project_id, trace_id=event.trace_id)
            self.counts.skipped_type(event.event_type)  # the cycle line counts skips per type
            await turn.wait_previous()  # keeps the project's line intact for the events behind it
            return "skipped"
        try:
            # `replay --refresh-projects`: refetch, not the cache (a header anyone can set: rate-bound per project)
            refresh = refresh_requested(record.headers) and self.refresh_limit.allow(event.project_id)
            trace_id = event.trace_id  # derived (a hash) when the event has no id: once
            result: HandlerResult = await self.credentials.call(
                lambda: handler.handle(event, self.context, refresh=refresh, trace_id=trace_id), project_id=event.project_id, trace_id=trace_id
            )
        except PipelineError as exc:
            await turn.wait_previous()
            return await self._fail(record, exc, event, slot)
        except Exception as exc:  # noqa: BLE001 - a bug in a handler must not stop the worker
            log.exception("handler failed unexpectedly", event_type=event.event_type, trace_id=event.trace_id)
            await turn.wait_previous()
            error = PermanentError(f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__)
            return await self._fail(record, error, event, slot)
        message = encode_rows_message(trace_id, event.event_type, event.project_id, event.event_time, result.rows)
        await turn.wait_previous()  # one project's messages go out in offset order
        try:
            # The project snapshot among the rows is confirmed once acknowledged, abandoned if the
            # produce fails (WorkerAborted, or handed back before the ack: the rows may not be written).
            with result:
                await self._produce(self.settings.kafka.entity_rows_topic, message, event.project_id.encode(), turn=turn, slot=slot)
        except PermanentError as exc:  # e.g. rows too large for the topic
            return await self._fail(record, exc, event, slot)
        return "succeeded"

    async def _fail(self, record: ConsumerRecord[Any, Any], error: PipelineError, event: ClaimXEvent | None, slot: Slot) -> Outcome:
        trace_id = _trace_of(event)
        log.warning(
            "event failed",
            category=error.category,
            error_type=error.error_type,
            error=str(error)[:300],
            event_type=event.event_type if event else None,
            trace_id=trace_id,
            partition=record.partition,
            offset=record.offset,
        )
        route = route_failure(record, error, settings=self.settings, trace_id=trace_id)
        try:
            if route.letter is not None:  # dead letters take the runtime's one path: sink, count, log line
                slot.release()
                self.counts.in_flight = self.slots.in_use
                await self.require_handle().dead_letters.send_envelope(route.letter, record, group=self.spec.group_id)
            else:
                await self._produce(route.topic, route.value, route.key, headers=route.headers, slot=slot)
        except (PermanentError, DeadLetterFailed) as exc:
            raise WorkerAborted(f"the failure of offset {record.offset} could not be routed: {exc}") from exc
        return route.outcome

    async def _produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        *,
        headers: list[tuple[str, bytes]] | None = None,
        turn: Turn | None = None,
        slot: Slot | None = None,
    ) -> None:
        """Hand the message to the producer (then `turn` lets the project's next event go and
        `slot` is freed for the next event) and wait for the broker's ack."""
        producer = self.require_handle().producer
        try:
            try:
                delivery = await producer.send(topic, value=value, key=key, headers=with_trace_headers(headers) or None)
            finally:
                if turn is not None:
                    turn.mine.set()
                if slot is not None:
                    slot.release()
                    self.counts.in_flight = self.slots.in_use
            await delivery
        except MessageSizeTooLargeError as exc:
            size = len(value) if value is not None else 0
            raise PermanentError(f"message of {size} bytes too large for {topic}: {exc}", error_type="MessageTooLarge") from None
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

    async def _finish_or_hand_back(self, tasks: set[asyncio.Task[None]], timeout_s: float) -> None:
        """Wait up to `timeout_s` for `tasks`, then cancel what is left: those events are handed
        back (their offsets stay uncommitted, the group reads them again). Events held for the
        credentials cannot finish and are handed back at once."""
        self.credentials.hand_back(tasks)
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        if pending:
            log.warning("in-flight events did not finish in time; they are handed back and will be replayed", unfinished=len(pending))
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=5)

    # --- observability ------------------------------------------------------------------------

    def _events_ready(self) -> tuple[bool, dict[str, Any]]:
        c = self.counts
        return self.aborted is None, {"in_flight": c.in_flight, "awaiting_ack": c.awaiting_ack}

    def _api_ready(self) -> tuple[bool, dict[str, Any]]:
        state = self.api.breaker.state
        rejected = self.credentials.rejected
        # paused by a 429 for longer than an in-process backoff: the API asked us to stop
        paused_s = self.api.rate_limit_paused_s()
        limited = paused_s > self.settings.api.backoff_max_s
        details = {"breaker": state, "auth_failed": rejected, "rate_limit_paused_s": round(paused_s, 1)}
        return state != "open" and not rejected and not limited, details

    def cycle_snapshot(self) -> CycleSnapshot:
        gauges: dict[str, Any] = {"in_flight": self.counts.in_flight, "awaiting_ack": self.counts.awaiting_ack}
        stats = self.cache.stats()
        gauges["project_cache_size"] = stats.size
        gauges["fetches_avoided"] = float(stats.fetches_avoided)
        gauges["l1_hit_rate"] = float(stats.l1_hit_rate)  # per tier: in-process, then Redis
        gauges["l2_hit_rate"] = float(stats.l2_hit_rate)
        gauges["redis"] = stats.redis_state
        return CycleSnapshot(
            parts={
                "succeeded": self.counts.succeeded,
                "failed": self.counts.retried + self.counts.dead_lettered,
                "skipped": self.counts.skipped,
            },
            counters={"api_calls": sum(self.api.calls.values())},
            gauges=gauges,
            skipped_by={("unknown type", event_type): n for event_type, n in self.counts.skipped_types.items()},
        )


def _trace_of(event: ClaimXEvent | None) -> str | None:
    return event.trace_id if event is not None else None
