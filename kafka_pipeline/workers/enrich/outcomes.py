"""How an event ends: its outcome, where a failed one goes, and the counts that must reconcile."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from kafka_pipeline.claimx.events import ClaimXEvent
from kafka_pipeline.claimx.handlers import HANDLERS
from kafka_pipeline.config import Settings
from kafka_pipeline.dead_letters.envelope import DeadLetter, dlq_key
from kafka_pipeline.dead_letters.routing import RetryMessage, next_hop
from kafka_pipeline.errors import PipelineError

Outcome = Literal["succeeded", "skipped", "retried", "dead_lettered"]
OUTCOMES: tuple[Outcome, ...] = ("succeeded", "skipped", "retried", "dead_lettered")


@dataclass(frozen=True)
class FailureRoute:
    """A failed message's destination: produce `value` to `topic` and count it as `outcome`."""

    outcome: Outcome
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    letter: DeadLetter | None = None  # the dead-letter route's envelope (sent through the runtime's sink)


def route_failure(record: Any, error: PipelineError, *, settings: Settings, trace_id: str | None) -> FailureRoute:
    """Where a failed event goes; the one place that decides it.

    - permanent (malformed message, 404 and other 4xx): the dead-letter topic, with the reason;
    - transient (5xx, 429, timeouts, open circuit, after the client's in-process retries): the
      retry topic while `settings.retry.delays_s` has a delay left for the message's attempt
      (`kafka_pipeline.dead_letters.routing.next_hop`), then the dead-letter topic.

    An auth failure (401) is not the event's fault and never comes here: the worker holds the
    event and pauses (`credentials.CredentialsGate`); `next_hop` raises ValueError for it.
    """
    hop = next_hop(
        record,
        error,
        delays_s=settings.retry.delays_s,
        retry_topic=settings.kafka.retry_topic,
        worker=settings.worker.name,
        trace_id=trace_id,
        made_by="enrich",
    )
    if isinstance(hop, RetryMessage):
        return FailureRoute("retried", hop.topic, hop.key, hop.value, hop.headers)
    return FailureRoute("dead_lettered", settings.kafka.dlq_topic, dlq_key(record.key), hop.to_bytes(), letter=hop)


def type_label(event: ClaimXEvent | None) -> str:
    """A bounded label: known types by name, the rest as `other`, unparsed messages as `malformed`."""
    if event is None:
        return "malformed"
    return event.event_type if event.event_type in HANDLERS else "other"


MAX_SKIPPED_TYPES = 50


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
    skipped_types: Counter[str] = field(default_factory=Counter)  # skipped events by their own type (bounded)

    def skipped_type(self, event_type: str) -> None:
        """Count a skipped event under its type; past MAX_SKIPPED_TYPES distinct types, as `other`
        (the types come from the input: a flood of made-up ones must not grow this forever)."""
        known = event_type in self.skipped_types or len(self.skipped_types) < MAX_SKIPPED_TYPES
        self.skipped_types[event_type if known else "other"] += 1

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
