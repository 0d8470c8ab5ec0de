"""The writer's stored progress, trusted only for the log it was read from.

Each Delta commit of a flush records, per source partition (see `entity_writer`):

- `group:topic:partition` -> the last offset the commit incorporates (rows below it are skipped);
- `group:topic:partition@<log token>` -> the same offset, under the identity of the log it was
  read from (`offsets.log_identity`: cluster id and topic id);
- `group:topic:partition#record` -> a fingerprint of the record at that offset;
- `group:topic:partition!written` -> the offset through which every table holds the partition's
  rows (the flush's first offset - 1: every earlier flush finished before this one began).

All three are app transactions of the same commit, so they can never disagree. On assignment,
`check` compares them with the log the broker serves now:

- nothing stored: a new partition for these tables, written from its first record;
- the offset stored under the current log's token equals the stored offset, the offset is
  below the log's end, and the record at it (when still retained) has the stored fingerprint:
  the same log, resume;
- otherwise (another log, a log that ends at or before the stored offset, a record that
  differs): refused. The writer does not consume the partition; adopting the new log
  (`adopt`, from `kafka-pipeline write --adopt-new-log`) records offset -1 under the new
  log's token, after which every record of the new log is written (the merge rule keeps rows
  right where some were written before).

A trusted partition is read on from the highest `!written` offset + 1 (`Verdict.written_through`),
as kafka-delta-ingest seeks to the offsets its Delta log stores: a replayed range is not read
again, only the last flush's records are (each table skips what it holds).

Progress written before log identities were recorded (no fingerprint stored) is taken as
coming from the current log when its offset is below the log's end (said once in the log).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from kafka_pipeline.config import KafkaSettings
from kafka_pipeline.delta.table_writer import DeltaTableWriter, open_table
from kafka_pipeline.offsets.log_identity import LogIdentity, PartitionLog, describe_partitions, read_fingerprints

LOG_METADATA_KEY = "kafka_pipeline.log"  # commitInfo field naming the log a commit's offsets came from
ADOPT_COMMAND = "kafka-pipeline write --adopt-new-log"
NO_RECORD = -1  # the fingerprint stored when no record is (adoption)


@dataclass(frozen=True)
class ProgressIds:
    """The app transaction ids of one source partition of one consumer group."""

    offset: str
    record: str
    written: str

    def log(self, identity: LogIdentity) -> str:
        return f"{self.offset}@{identity.token}"


def app_id(group_id: str, topic: str, partition: int) -> str:
    """The Delta app transaction id of one source partition of one consumer group: its offset."""
    return f"{group_id}:{topic}:{partition}"


def progress_ids(group_id: str, topic: str, partition: int) -> ProgressIds:
    offset = app_id(group_id, topic, partition)
    return ProgressIds(offset=offset, record=f"{offset}#record", written=f"{offset}!written")


def log_description(topic: str, identity: LogIdentity) -> str:
    return f"{topic} on {identity}"


@dataclass(frozen=True)
class Verdict:
    """What the tables hold for one partition, judged against the log served now."""

    partition: int
    log: PartitionLog
    stored_offset: int | None  # the highest offset any table holds (None: nothing stored)
    refusal: str = ""  # why the stored offset cannot be trusted for this log ("" = trusted)
    legacy: bool = False  # progress from before log identities were recorded
    tables: tuple[str, ...] = ()  # table locations holding progress of this partition
    written_through: int | None = None  # every table holds the partition's rows through this offset

    @property
    def trusted(self) -> bool:
        return not self.refusal


@dataclass
class _Stored:
    """One table's app transactions for one partition."""

    offset: int | None
    under_log: int | None
    fingerprint: int | None
    written: int | None


@dataclass
class LogProgress:
    """Checks and adopts the progress of one consumer group's partitions of one topic."""

    kafka: KafkaSettings
    group_id: str
    topic: str
    writers: Mapping[str, DeltaTableWriter]
    timeout_s: float = 15.0
    identity: LogIdentity | None = field(default=None, init=False)  # the log checked last

    def ids(self, partition: int) -> ProgressIds:
        return progress_ids(self.group_id, self.topic, partition)

    async def check(self, partitions: list[int]) -> list[Verdict]:
        """Verdicts for `partitions`. Raises what the broker or the store raise."""
        logs = await describe_partitions(self.kafka, self.topic, partitions, timeout_s=self.timeout_s)
        self.identity = next(iter(logs.values())).identity if logs else None
        stored = await asyncio.get_running_loop().run_in_executor(None, self._read_stored, logs)
        verdicts = {p: _judge(p, logs[p], stored[p]) for p in partitions}
        to_read = {
            p: v.stored_offset for p, v in verdicts.items()
            if v.trusted and not v.legacy and v.stored_offset is not None and v.log.start <= v.stored_offset < v.log.end
        }
        found = await read_fingerprints(self.kafka, self.topic, {p: o for p, o in to_read.items() if o is not None}, timeout_s=self.timeout_s)
        for partition, fingerprint in found.items():
            expected = _fingerprint_at(stored[partition], verdicts[partition].stored_offset)
            if expected is not None and expected != fingerprint:
                verdict = verdicts[partition]
                verdicts[partition] = Verdict(
                    partition, verdict.log, verdict.stored_offset,
                    refusal=f"the record at offset {verdict.stored_offset} is not the one the tables wrote", tables=verdict.tables,
                )
        return [verdicts[p] for p in partitions]

    def _read_stored(self, logs: Mapping[int, PartitionLog]) -> dict[int, dict[str, _Stored]]:
        result: dict[int, dict[str, _Stored]] = {}
        for partition, log in logs.items():
            ids = self.ids(partition)
            apps = [ids.offset, ids.log(log.identity), ids.record, ids.written]
            per_table: dict[str, _Stored] = {}
            for writer in self.writers.values():
                for uri, versions in writer.stored_transactions(apps).items():
                    if versions[ids.offset] is not None:
                        per_table[uri] = _Stored(versions[ids.offset], versions[apps[1]], versions[ids.record], versions[ids.written])
            result[partition] = per_table
        return result

    def stored_log(self, verdict: Verdict) -> str:
        """The log the refused progress came from, as its commits name it (newest first)."""
        for uri in verdict.tables:
            table = open_table(uri, self.writers[next(iter(self.writers))].storage_options)
            if table is None:
                continue
            for commit in table.history(50):
                named = commit.get(LOG_METADATA_KEY)
                if isinstance(named, str) and named:
                    return named
        return "an earlier log (not named in the tables' recent commits)"

    def adopt(self, verdicts: list[Verdict], identity: LogIdentity) -> int:
        """Record that the tables start over with the log served now for the refused
        partitions: offset -1 under the new log's identity. Returns the commits made."""
        commits = 0
        metadata = {LOG_METADATA_KEY: log_description(self.topic, identity), "kafka_pipeline.operation": "adopt new log"}
        for verdict in verdicts:
            ids = self.ids(verdict.partition)
            transactions = {ids.offset: NO_RECORD, ids.log(identity): NO_RECORD, ids.record: NO_RECORD, ids.written: NO_RECORD}
            for writer in self.writers.values():
                uris = [uri for uri in (writer.uri, writer.clock_uri) if uri in verdict.tables]
                if uris:
                    commits += writer.record_transactions(uris, transactions, metadata)
        return commits

    def mismatch(self, verdict: Verdict, stored_log: str) -> str:
        """What the tables hold against what the broker serves, for a refused partition."""
        return (
            f"the tables hold offset {verdict.stored_offset} of {stored_log}, but the broker serves "
            f"{log_description(self.topic, verdict.log.identity)} with offsets {verdict.log.start}..{verdict.log.end}: {verdict.refusal}"
        )

    def refusal_line(self, verdict: Verdict, stored_log: str) -> str:
        """One line naming the partition, both logs and offsets, and the command that adopts."""
        return (
            f"partition {self.topic}[{verdict.partition}] refused: {self.mismatch(verdict, stored_log)}. Nothing of it is "
            f"consumed; if this is a new log on purpose, adopt it with `{ADOPT_COMMAND}` (see --dry-run first)"
        )


def _judge(partition: int, log: PartitionLog, stored: Mapping[str, _Stored]) -> Verdict:
    if not stored:
        return Verdict(partition, log, None)
    tables = tuple(sorted(stored))
    highest = max(s.offset for s in stored.values() if s.offset is not None)
    # a table last committed before identities were recorded has neither companion
    identified = [s for s in stored.values() if s.fingerprint is not None or s.under_log is not None]
    legacy = not identified
    if any(s.under_log != s.offset for s in identified):
        return Verdict(partition, log, highest, refusal="the tables' offsets were read from another log", tables=tables)
    if highest >= log.end:
        return Verdict(partition, log, highest, refusal=f"the log ends at offset {log.end}, at or before the stored one", tables=tables)
    written = [s.written for s in identified if s.written is not None and s.under_log == s.offset]
    written_through = max(written) if written and max(written) >= 0 else None
    return Verdict(partition, log, highest, legacy=legacy, tables=tables, written_through=written_through)


def _fingerprint_at(stored: Mapping[str, _Stored], offset: int | None) -> int | None:
    for table in stored.values():
        if table.offset == offset and table.fingerprint is not None and table.fingerprint != NO_RECORD:
            return table.fingerprint
    return None
