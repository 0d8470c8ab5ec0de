"""The producers' partitioner picks the partition Kafka's default partitioner picks, for every
key, while its table of remembered hashes stays bounded."""

from __future__ import annotations

import random

from aiokafka.partitioner import DefaultPartitioner

from kafka_pipeline.config import KafkaSettings
from kafka_pipeline.kafka.clients import make_producer
from kafka_pipeline.kafka.partitioner import RememberingPartitioner


def test_same_partition_as_the_default_partitioner_for_every_key() -> None:
    rng = random.Random(5)
    keys = [str(5_000_000 + rng.randrange(10_000)).encode() for _ in range(3_000)] + [rng.randbytes(rng.randrange(1, 40)) for _ in range(500)]
    partitioner = RememberingPartitioner(max_keys=1_000)
    for partitions in (list(range(1)), list(range(6)), list(range(24))):
        for key in keys:
            assert partitioner(key, partitions, partitions) == DefaultPartitioner()(key, partitions, partitions), key
    assert len(partitioner._hashes) <= 1_000  # noqa: SLF001 - the bound is the point


def test_a_message_without_a_key_goes_to_an_available_partition() -> None:
    chosen = {RememberingPartitioner()(None, [0, 1, 2, 3], [2, 3]) for _ in range(50)}
    assert chosen <= {2, 3} and chosen


async def test_every_producer_uses_it() -> None:
    producer = make_producer(KafkaSettings(bootstrap_servers="127.0.0.1:9"))
    assert isinstance(producer._partitioner, RememberingPartitioner)  # noqa: SLF001 - aiokafka keeps it private
