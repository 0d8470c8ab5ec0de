"""Kafka's default partitioner with each key's hash remembered.

aiokafka's `DefaultPartitioner` hashes a key with murmur2 as the Java client does, so a key
lands on the partition every Kafka client picks, but its murmur2 is pure Python: about 10 µs
per produced message, for keys (project ids) that repeat all day. This one picks the same
partition and computes each key's hash once, in a bounded table.
"""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner, murmur2

MAX_REMEMBERED_KEYS = 65_536


class RememberingPartitioner:
    def __init__(self, max_keys: int = MAX_REMEMBERED_KEYS) -> None:
        self._max_keys = max_keys
        self._hashes: dict[bytes, int] = {}

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(DefaultPartitioner()(key, all_partitions, available))
        positive_hash = self._hashes.get(key)
        if positive_hash is None:
            if len(self._hashes) >= self._max_keys:
                self._hashes.clear()  # simplest bound: the keys still in use are hashed again
            positive_hash = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[positive_hash % len(all_partitions)]
