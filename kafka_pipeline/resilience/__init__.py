"""Retrying and failing fast: jittered backoff and the circuit breaker."""
