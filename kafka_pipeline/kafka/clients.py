"""aiokafka clients built from the settings, and topic creation at worker start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Iterator
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    AuthenticationFailedError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    UnsupportedSaslMechanismError,
)

from kafka_pipeline.config import KafkaSettings
from kafka_pipeline.errors import BrokerUnreachable
from kafka_pipeline.kafka.capabilities import producer_idempotence, resolve_capabilities
from kafka_pipeline.kafka.connection import connection_kwargs
from kafka_pipeline.kafka.partitioner import RememberingPartitioner

# What connecting can raise: each is reported in one line (`first_contact_error`), never retried.
CONNECT_ERRORS = (KafkaConnectionError, KafkaError, asyncio.TimeoutError, OSError)
AUTH_ERRORS = (AuthenticationFailedError, SaslAuthenticationFailed, UnsupportedSaslMechanismError)


def first_contact_error(kafka: KafkaSettings, exc: BaseException) -> BrokerUnreachable:
    """One line saying why the first contact failed: credentials, TLS trust, or no answer.
    Names the user and the CA file, never the password."""
    where = kafka.bootstrap_servers
    if isinstance(exc, AUTH_ERRORS):
        return BrokerUnreachable(
            f"Kafka broker at {where} rejected the {kafka.sasl_mechanism} credentials of user "
            f"{kafka.sasl_username!r} (check KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD)"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        trusted = kafka.ssl_cafile or "the system CAs"
        return BrokerUnreachable(f"TLS certificate of the Kafka broker at {where} not trusted by {trusted}: {exc.verify_message}")
    if isinstance(exc, ssl.SSLError):
        return BrokerUnreachable(f"TLS handshake with the Kafka broker at {where} failed ({exc.reason or type(exc).__name__})")
    return BrokerUnreachable(f"Kafka broker unreachable at {where} ({type(exc).__name__})")


_client_name = "kafka-pipeline"  # the worker's name once `set_client_name` was called


def set_client_name(name: str) -> None:
    global _client_name
    _client_name = name


def client_id() -> str:
    """`<worker name>-<host>-<pid>`: what group listings (`status`, kafka-consumer-groups) show per member."""
    return f"{_client_name}-{socket.gethostname()}-{os.getpid()}"


def make_producer(kafka: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    options: dict[str, Any] = {
        **connection_kwargs(kafka),
        "client_id": client_id(),
        "acks": "all",
        "enable_idempotence": producer_idempotence(kafka),
        "compression_type": kafka.compression_type,
        "linger_ms": 5,
        "max_batch_size": 1_048_576,
        "partitioner": RememberingPartitioner(),
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def make_consumer(kafka: KafkaSettings, *topics: str, group_id: str | None, **overrides: Any) -> AIOKafkaConsumer:
    """A consumer that never auto-commits: every worker commits only what it finished."""
    options: dict[str, Any] = {
        **connection_kwargs(kafka),
        "client_id": client_id(),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": kafka.session_timeout_ms,
        "max_poll_interval_ms": kafka.max_poll_interval_ms,
        "heartbeat_interval_ms": min(3_000, kafka.session_timeout_ms // 3),
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


async def ensure_topics(kafka: KafkaSettings, topics: list[str], *, timeout_s: float = 15.0) -> None:
    """Create the topics that are missing (partitions and replication from the settings), and
    learn what the broker supports (every worker calls this before making its producer)."""
    admin = AIOKafkaAdminClient(**connection_kwargs(kafka))
    try:
        with first_contact(kafka):
            await asyncio.wait_for(admin.start(), timeout_s)
            await resolve_capabilities(kafka, timeout_s=timeout_s)
    except BrokerUnreachable:
        await _close_quietly(admin)
        raise
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        if missing:
            new = [NewTopic(t, kafka.partitions, kafka.replication_factor) for t in missing]
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass  # another worker created it first
    finally:
        await _close_quietly(admin)


async def _close_quietly(admin: AIOKafkaAdminClient) -> None:
    try:
        await admin.close()
    except Exception:  # noqa: BLE001 - closing a client that never connected
        pass


class _CauseCatcher(logging.Handler):
    """Keeps the exceptions aiokafka logs while it tries the bootstrap servers: its own error
    is only "Unable to bootstrap", the refused password or certificate is in these."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.causes: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.args, tuple):
            self.causes.extend(arg for arg in record.args if isinstance(arg, BaseException))


@contextlib.contextmanager
def quiet(logger: logging.Logger) -> Iterator[None]:
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def first_contact(kafka: KafkaSettings) -> Iterator[None]:
    """Around a client's first contact: aiokafka's per-attempt logs stay quiet, and a failure
    becomes one BrokerUnreachable line naming its real cause (`first_contact_error`)."""
    logger = logging.getLogger("aiokafka")
    catcher = _CauseCatcher()
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    logger.addHandler(catcher)
    try:
        yield
    except CONNECT_ERRORS as exc:
        telling = [c for c in catcher.causes if isinstance(c, (*AUTH_ERRORS, ssl.SSLError))]
        raise first_contact_error(kafka, telling[0] if telling else exc) from None
    finally:
        logger.removeHandler(catcher)
        logger.setLevel(level)
        logger.propagate = propagate
