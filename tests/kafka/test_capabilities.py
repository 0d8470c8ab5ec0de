"""What differs between the brokers, decided by runtime/broker_capabilities.py, checked on the
session's broker (KP_TEST_BROKER) and on Apache Kafka."""

from __future__ import annotations

import uuid

from aiokafka import TopicPartition

from kafka_pipeline.config import KafkaSettings
from kafka_pipeline.embedded.kafka_broker import KafkaBroker, new_cluster_id
from kafka_pipeline.kafka.capabilities import (
    APACHE_KAFKA,
    PROFILES,
    TANSU,
    known_capabilities,
    producer_idempotence,
    resolve_capabilities,
)
from kafka_pipeline.kafka.clients import ensure_topics, make_consumer, make_producer
from kafka_pipeline.offsets.topic_offsets import group_lag, high_watermarks
from tests.fixtures.broker import unique_topics


async def test_auto_detects_the_session_broker(kafka_settings: KafkaSettings, broker_kind: str) -> None:
    assert kafka_settings.broker_kind == "auto"
    assert await resolve_capabilities(kafka_settings) == PROFILES[broker_kind]
    assert known_capabilities(kafka_settings) == PROFILES[broker_kind]
    assert producer_idempotence(kafka_settings) is PROFILES[broker_kind].idempotent_producer


def test_configured_kind_and_explicit_idempotence_win() -> None:
    nowhere = KafkaSettings(bootstrap_servers="127.0.0.1:1")  # never asked: nothing is detected
    assert known_capabilities(nowhere) == TANSU  # the careful profile until detected
    assert known_capabilities(nowhere.model_copy(update={"broker_kind": "kafka"})) == APACHE_KAFKA
    assert producer_idempotence(nowhere.model_copy(update={"broker_kind": "kafka"})) is True
    assert producer_idempotence(nowhere.model_copy(update={"broker_kind": "kafka", "enable_idempotence": False})) is False
    assert producer_idempotence(nowhere.model_copy(update={"enable_idempotence": True})) is True


async def test_high_watermarks_and_lag_count_every_record(kafka_settings: KafkaSettings) -> None:
    """Several batches per partition: tansu's end_offsets() would stop at the last batch's base."""
    kafka = kafka_settings.model_copy(update={"partitions": 2})
    topic = kafka.events_topic
    await ensure_topics(kafka, [topic])
    producer = make_producer(kafka, linger_ms=0)
    await producer.start()
    try:
        for batch in range(4):
            sent = [await producer.send(topic, f"{batch}-{i}".encode(), partition=i % 2) for i in range(6)]
            for future in sent:
                await future
    finally:
        await producer.stop()
    assert await high_watermarks(kafka, topic) == {0: 12, 1: 12}
    group = f"lag-{uuid.uuid4().hex[:8]}"
    consumer = make_consumer(kafka, group_id=group)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
        await consumer.commit({TopicPartition(topic, 0): 5, TopicPartition(topic, 1): 12})
    finally:
        await consumer.stop()
    assert await group_lag(kafka, group, topic) == 7


async def test_apache_kafka_idempotent_producer_and_time_lookup(kafka_broker: KafkaBroker) -> None:
    kafka = unique_topics(kafka_broker.bootstrap_servers, partitions=1)
    topic = kafka.events_topic
    await ensure_topics(kafka, [topic])  # detects the broker
    assert known_capabilities(kafka) == APACHE_KAFKA
    producer = make_producer(kafka)
    await producer.start()
    try:
        for i, timestamp_ms in enumerate((1_000_000, 2_000_000, 3_000_000)):
            await producer.send_and_wait(topic, f"v{i}".encode(), timestamp_ms=timestamp_ms)
        # the broker granted this producer an id: its batches carry sequence numbers
        assert producer._txn_manager is not None and producer._txn_manager.producer_id >= 0  # noqa: SLF001
    finally:
        await producer.stop()
    consumer = make_consumer(kafka, group_id=None)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        found = await consumer.offsets_for_times({tp: 2_500_000})
        assert found[tp] is not None and (found[tp].offset, found[tp].timestamp) == (2, 3_000_000)
        assert await consumer.end_offsets([tp]) == {tp: 3}
    finally:
        await consumer.stop()


def test_cluster_ids_never_look_like_an_option() -> None:
    """One id in 64 would start with "-" and the storage tool would take it for an option."""
    ids = [new_cluster_id() for _ in range(2000)]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids)
