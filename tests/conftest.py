"""Fixtures for the real parts, one plugin module each under tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.broker",
    "tests.fixtures.kafka_broker",
    "tests.fixtures.time_lookups",
    "tests.fixtures.simulator",
    "tests.fixtures.redis",
    "tests.fixtures.s3",
]
