"""What differs between the brokers the pipeline runs on, decided in this one place.

- Apache Kafka (self-managed, MSK, Confluent, Strimzi): the idempotent producer works; ListOffsets
  (`end_offsets`) answers the high watermark, so lag is the broker's own end offset minus the
  committed offset; `offsets_for_times` finds the first record at or after a time.
- tansu (the embedded default of `kafka-pipeline run`): InitProducerId answers UNKNOWN_SERVER_ERROR
  although ApiVersions lists it, so the producer cannot be idempotent; `end_offsets` may answer
  the base offset of the last record batch, so the high watermark is read from a fetch response;
  `offsets_for_times` is not relied on.

`kafka.broker_kind` chooses: `kafka`, `tansu`, or `auto` (the default), which asks the broker for
a producer id once per process and bootstrap address: granted, it is Apache Kafka; refused, the
tansu profile (the careful one) applies. `kafka.enable_idempotence` set to true or false wins
over the profile.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.transaction import InitProducerIdRequest

from kafka_pipeline.config import KafkaSettings
from kafka_pipeline.kafka.connection import connection_kwargs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerCapabilities:
    kind: str
    idempotent_producer: bool
    end_offsets_are_high_watermarks: bool  # else: read the high watermark from a fetch response
    offsets_for_times: bool


APACHE_KAFKA = BrokerCapabilities("kafka", idempotent_producer=True, end_offsets_are_high_watermarks=True, offsets_for_times=True)
TANSU = BrokerCapabilities("tansu", idempotent_producer=False, end_offsets_are_high_watermarks=False, offsets_for_times=False)
PROFILES = {profile.kind: profile for profile in (APACHE_KAFKA, TANSU)}

# bootstrap servers -> what `auto` found there (one probe per process and cluster)
_detected: dict[str, BrokerCapabilities] = {}


def known_capabilities(kafka: KafkaSettings) -> BrokerCapabilities:
    """The configured profile, else what `resolve_capabilities` detected, else the careful one."""
    if kafka.broker_kind != "auto":
        return PROFILES[kafka.broker_kind]
    return _detected.get(kafka.bootstrap_servers, TANSU)


def producer_idempotence(kafka: KafkaSettings) -> bool:
    if kafka.enable_idempotence is not None:
        return kafka.enable_idempotence
    return known_capabilities(kafka).idempotent_producer


async def resolve_capabilities(kafka: KafkaSettings, *, timeout_s: float = 10.0) -> BrokerCapabilities:
    """`known_capabilities`, after probing the broker once when `broker_kind` is `auto`.

    Raises what connecting raises (unreachable broker, failed authentication)."""
    if kafka.broker_kind != "auto" or kafka.bootstrap_servers in _detected:
        return known_capabilities(kafka)
    client = AIOKafkaClient(**connection_kwargs(kafka))
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
        granted = await asyncio.wait_for(_producer_id_granted(client), timeout_s)
    finally:
        await client.close()
    found = APACHE_KAFKA if granted else TANSU
    _detected[kafka.bootstrap_servers] = found
    log.info("broker at %s: %s profile (producer id %s)", kafka.bootstrap_servers, found.kind, "granted" if granted else "refused")
    return found


async def _producer_id_granted(client: AIOKafkaClient) -> bool:
    """What an idempotent producer asks first: a producer id without a transactional id.
    A broker that just started answers COORDINATOR_LOAD_IN_PROGRESS for a moment: ask again."""
    while True:
        node_id = client.get_random_node()
        if node_id is None:
            return False
        try:
            response = await client.send(node_id, InitProducerIdRequest(None, 60_000))
        except KafkaError:
            return False
        if response.error_code == 0:
            return True
        if not for_code(response.error_code).retriable:
            return False  # tansu: UNKNOWN_SERVER_ERROR
        await asyncio.sleep(0.1)
