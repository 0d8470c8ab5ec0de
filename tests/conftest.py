"""Fixtures for the real parts, one plugin module each under tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.broker",
    "tests.fixtures.broker_kind",
    "tests.fixtures.simulator",
    "tests.fixtures.redis",
]
