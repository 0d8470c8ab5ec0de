"""Send JSON-lines event files to the events topic, keyed by project_id.

Lines that are not valid events are sent too (without a key when none can be read): the
enrichment worker dead-letters them with their reason, so a replay never loses input.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from kafka_pipeline.config import KafkaSettings
from kafka_pipeline.runtime.kafka import ensure_topics, make_producer

PROJECT_ID_FIELDS = ("project_id", "projectId")


@dataclass
class ReplaySummary:
    sent: int = 0
    without_key: int = 0  # not JSON or no project_id: sent unkeyed, the worker dead-letters them
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def read_lines(paths: Iterable[Path], limit: int | None = None) -> Iterator[bytes]:
    """Non-blank lines of the files, in order, at most `limit` in all."""
    count = 0
    for path in paths:
        with path.open("rb") as handle:
            for line in handle:
                line = line.strip()
                if not line:
                    continue
                if limit is not None and count >= limit:
                    return
                count += 1
                yield line


def key_of(line: bytes) -> bytes | None:
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to parse: sent without a key
        return None
    if not isinstance(event, dict):
        return None
    for field in PROJECT_ID_FIELDS:
        value = event.get(field)
        if value is not None and value != "":
            return str(value).encode()
    return None


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
    paths: list[Path],
    *,
    topic: str | None = None,
    rate: float | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    progress: bool = True,
) -> ReplaySummary:
    topic = topic or kafka.events_topic
    lines = list(read_lines(paths, limit))
    summary = ReplaySummary()
    started = time.monotonic()
    bar = tqdm(total=len(lines), unit="ev", disable=not progress, desc="dry run" if dry_run else topic)
    if dry_run:
        for line in lines:
            summary.without_key += key_of(line) is None
            summary.sent += 1
            bar.update()
    else:
        await ensure_topics(kafka, [topic])
        producer = make_producer(kafka)
        await producer.start()
        limiter = RateLimiter(rate)
        try:
            pending: list[asyncio.Future] = []
            for line in lines:
                await limiter.wait()
                key = key_of(line)
                summary.without_key += key is None
                pending.append(await producer.send(topic, value=line, key=key))
                summary.sent += 1
                bar.update()
                if len(pending) >= 1000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)  # every send acknowledged before we report success
        finally:
            await producer.stop()
    bar.close()
    summary.seconds = time.monotonic() - started
    return summary
