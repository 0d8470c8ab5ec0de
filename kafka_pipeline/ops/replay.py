"""Replay events into the events topic: from a source (`replay_sources`), through a filter, at a
pace, with a summary of what was read, matched and sent per event type.

Events are keyed by project id, so one project's events stay in one partition, in order. With
`refresh_projects` every sent event carries the `refresh-project` header: the enrichment worker
then refetches the event's project instead of trusting its cache, so a backfill after wrong API
data writes the corrected values (a replayed event has its original `event_time`, and on a tie
the later arrival wins).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from tqdm import tqdm

from kafka_pipeline.claimx.handlers.base import REFRESH_PROJECT_HEADER
from kafka_pipeline.config import KafkaSettings
from kafka_pipeline.kafka.clients import ensure_topics, make_producer
from kafka_pipeline.ops.replay_sources import EventFilter, Source, describe

UNREADABLE = "(not an event)"  # the summary's label for records without an event type
ACK_EVERY = 1000  # sends awaited together


@dataclass
class ReplaySummary:
    read: Counter[str] = field(default_factory=Counter)  # per event type
    matched: Counter[str] = field(default_factory=Counter)
    sent: Counter[str] = field(default_factory=Counter)
    without_key: int = 0  # sent unkeyed: no project id could be read (the worker dead-letters them)
    seconds: float = 0.0

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())

    @property
    def rate(self) -> float:
        return self.total_sent / self.seconds if self.seconds > 0 else 0.0

    def table(self) -> list[str]:
        """The per-type lines of the summary, then the total."""
        types = sorted(self.read, key=lambda t: (t == UNREADABLE, t))
        width = max([len(t) for t in types] + [len("event type")])
        lines = [f"{'event type':<{width}}  {'read':>8}  {'matched':>8}  {'sent':>8}"]
        lines += [f"{t:<{width}}  {self.read[t]:>8}  {self.matched[t]:>8}  {self.sent[t]:>8}" for t in types]
        lines.append(f"{'total':<{width}}  {sum(self.read.values()):>8}  {sum(self.matched.values()):>8}  {self.total_sent:>8}")
        return lines


def key_of(line: bytes) -> bytes | None:
    """The project id of a JSON event line, as the message key (None when there is none)."""
    project_id = describe(line)[1]
    return project_id.encode() if project_id is not None else None


class RateLimiter:
    """Paces sends to `rate` per second (None: as fast as the broker takes them)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.next_at = time.monotonic()

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        if self.next_at > now:
            await asyncio.sleep(self.next_at - now)
        self.next_at = max(self.next_at, now) + self.interval


async def replay(
    kafka: KafkaSettings,
    source: Source,
    *,
    selection: EventFilter | None = None,
    topic: str | None = None,
    rate: float | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    refresh_projects: bool = False,
    progress: bool = True,
) -> ReplaySummary:
    """Send the source's records that match `selection` (at most `limit`) to `topic`.

    A dry run reads and matches, and sends nothing. Every send is acknowledged before this returns."""
    topic = topic or kafka.events_topic
    selection = selection or EventFilter()
    headers = [(REFRESH_PROJECT_HEADER, b"1")] if refresh_projects else None
    summary = ReplaySummary()
    started = time.monotonic()
    producer: AIOKafkaProducer | None = None
    bar: tqdm[None] | None = None
    try:
        total = await source.open()
        bar = tqdm(total=total, unit="ev", disable=not progress, desc="dry run" if dry_run else topic)
        if not dry_run:
            await ensure_topics(kafka, [topic])
            producer = make_producer(kafka)
            await producer.start()
        limiter = RateLimiter(rate)
        pending: list[asyncio.Future[object]] = []
        matched = 0
        async for record in source.records():
            if limit is not None and matched >= limit:
                break
            bar.update()
            label = record.event_type or UNREADABLE
            summary.read[label] += 1
            if not selection.matches(record):
                continue
            matched += 1
            summary.matched[label] += 1
            if producer is None:
                continue
            await limiter.wait()
            pending.append(await producer.send(topic, value=record.value, key=record.key, headers=headers))
            summary.sent[label] += 1
            summary.without_key += record.key is None
            if len(pending) >= ACK_EVERY:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)  # every send acknowledged before we report success
    finally:
        if bar is not None:
            bar.close()
        if producer is not None:
            await producer.stop()
        await source.close()
    summary.seconds = time.monotonic() - started
    return summary
