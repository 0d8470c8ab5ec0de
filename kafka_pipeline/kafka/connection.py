"""How every client reaches the brokers: addresses, security and timeouts from the settings."""

from __future__ import annotations

from typing import Any

from aiokafka.helpers import create_ssl_context

from kafka_pipeline.config import KafkaSettings


def connection_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """Security and timeout options shared by producer, consumer and admin client."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "security_protocol": kafka.security_protocol,
        "request_timeout_ms": kafka.request_timeout_ms,
    }
    if kafka.sasl_mechanism:
        kwargs["sasl_mechanism"] = kafka.sasl_mechanism
        kwargs["sasl_plain_username"] = kafka.sasl_username
        kwargs["sasl_plain_password"] = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = create_ssl_context(cafile=kafka.ssl_cafile)
    return kwargs
