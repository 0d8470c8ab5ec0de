"""One way to send dead letters, for every worker: build the envelope, send a batch, await the acks.

Building the envelope never fails on the message's content (any bytes, any exception text), so
a poison message always reaches the dead-letter topic with its reason.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from prometheus_client import CollectorRegistry, Counter

from kafka_pipeline.dead_letters.envelope import DeadLetter, Maker, dead_letter_for, dlq_key, safe_text
from kafka_pipeline.errors import Category, WorkerFailed
from kafka_pipeline.observability.logging import get_logger
from kafka_pipeline.observability.metrics import metric

log = get_logger(__name__)


class DeadLetterFailed(WorkerFailed):
    """The dead-letter topic did not take a letter: the record stays unfinished (uncommitted)."""


@dataclass(frozen=True)
class Letter:
    """A record that failed, and why."""

    record: Any  # aiokafka ConsumerRecord or dead_letters.envelope.RecordView
    error_type: str
    message: str
    category: Category = "permanent"
    trace_id: str | None = None
    attempts: int = 1
    original_topic: str | None = None


MESSAGE_LIMIT = 2_000  # characters of a reason kept in a letter (the rest is "...")


def letter_for_exception(record: Any, exc: BaseException, *, trace_id: str | None = None) -> Letter:
    """The letter of a record whose handling raised `exc` (the runtime's error boundary)."""
    return Letter(record, type(exc).__name__, safe_text(f"{type(exc).__name__}: {exc}", MESSAGE_LIMIT), trace_id=trace_id)


class DeadLetterSink:
    def __init__(self, producer: AIOKafkaProducer, topic: str, *, worker: str, made_by: Maker, registry: CollectorRegistry) -> None:
        self.producer = producer
        self.topic = topic
        self.worker = worker
        self.made_by: Maker = made_by
        self.sent = 0
        self._counter = metric(
            registry, Counter, "kafka_pipeline_dead_letters", "Messages sent to the dead-letter topic, by worker group and error type", ["group", "error_type"]
        )

    def envelope(self, letter: Letter) -> DeadLetter:
        return dead_letter_for(
            letter.record,
            error_type=safe_text(letter.error_type, 200),
            error_message=safe_text(letter.message, MESSAGE_LIMIT),
            category=letter.category,
            worker=self.worker,
            attempts=letter.attempts,
            trace_id=letter.trace_id,
            original_topic=letter.original_topic,
            made_by=self.made_by,
        )

    async def send(self, letters: list[Letter], *, group: str) -> None:
        """Send every letter, then wait for all acknowledgements; DeadLetterFailed if any failed."""
        await self._deliver([(self.envelope(letter), letter.record) for letter in letters], group)

    async def send_envelope(self, envelope: DeadLetter, record: Any, *, group: str) -> None:
        """A letter built where the failure was routed (the enrichment worker's, with its retry
        history): the same delivery, count and log line as every other letter."""
        await self._deliver([(envelope, record)], group)

    async def _deliver(self, items: list[tuple[DeadLetter, Any]], group: str) -> None:
        deliveries: list[asyncio.Future[Any]] = []
        try:
            for envelope, record in items:
                deliveries.append(await self.producer.send(self.topic, envelope.to_bytes(), key=dlq_key(record.key)))
            await asyncio.gather(*deliveries)
        except (KafkaError, MessageSizeTooLargeError) as exc:
            for delivery in deliveries:
                delivery.cancel()
            raise DeadLetterFailed(f"dead-letter topic {self.topic} did not take a letter: {type(exc).__name__}: {exc}") from exc
        for envelope, record in items:
            self._counter.labels(group, envelope.error_type[:100]).inc()
            log.warning(
                "message dead-lettered",
                error_type=envelope.error_type,
                error=safe_text(envelope.error_message, 300),
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                trace_id=envelope.trace_id,
            )
        self.sent += len(items)
