"""Latency and fault injection for the simulator, decided by a seeded RNG.

A request that passed authentication waits `latency_ms + uniform(0, jitter_ms)` (plus `slow_ms`
for the `slow_rate` share), then is answered with, in this order:

1. 404 when its project is in `not_found_ids` (every call of that project, every time);
2. a timeout for the `timeout_rate` share: no answer for `timeout_s` (or until the client gives
   up and disconnects), then 504;
3. 429 with `Retry-After: retry_after_s` for the `rate_limit_rate` share of what is left;
4. 500 or 503 for the `error_rate` share of what is left;
5. the normal body.

The names are the CLI options' (`--error-rate` is `error_rate`), the keys of `PUT /_faults`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class FaultSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    latency_ms: float = Field(0.0, ge=0, description="fixed delay before every answer")
    jitter_ms: float = Field(0.0, ge=0, description="extra delay, uniform in [0, jitter_ms]")
    error_rate: float = Field(0.0, ge=0.0, le=1.0, description="share answered 500 or 503")
    rate_limit_rate: float = Field(0.0, ge=0.0, le=1.0, description="share answered 429 with Retry-After")
    retry_after_s: int = Field(1, ge=0, description="the Retry-After header of a 429, in seconds")
    timeout_rate: float = Field(0.0, ge=0.0, le=1.0, description="share never answered in time")
    timeout_s: float = Field(30.0, gt=0, description="how long a timed-out request hangs before its 504")
    not_found_ids: list[int] = Field(default_factory=list, description="project ids answered 404")
    slow_rate: float = Field(0.0, ge=0.0, le=1.0, description="share delayed a further slow_ms")
    slow_ms: float = Field(0.0, ge=0, description="the extra delay of a slow request")

    @field_validator("not_found_ids", mode="before")
    @classmethod
    def _ids_from_text(cls, value: Any) -> Any:
        """`"1,2"` (as on the command line) or a list of ints or numeric strings."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


Outcome = Literal["ok", "not_found", "timeout", "rate_limited", "error"]


@dataclass(frozen=True)
class Decision:
    """What to do with one request: wait `delay_s`, then answer as `outcome` says."""

    delay_s: float
    outcome: Outcome
    status: int = 200


class FaultInjector:
    """Holds the current settings and draws each request's fate from one seeded RNG."""

    def __init__(self, settings: FaultSettings | None = None, seed: int | str = 7) -> None:
        self.seed = seed
        self.initial = (settings or FaultSettings()).model_copy(deep=True)
        self.settings = self.initial.model_copy(deep=True)
        self._not_found: frozenset[int] = frozenset(self.settings.not_found_ids)
        self._rng = random.Random(f"{seed}:faults")

    def update(self, changes: dict[str, Any]) -> FaultSettings:
        """Apply a partial change (validated as a whole; nothing changes if any value is bad)."""
        merged = FaultSettings.model_validate({**self.settings.model_dump(), **changes})
        self._install(merged)
        return self.settings

    def reset(self) -> FaultSettings:
        """Back to the settings the simulator started with, and the RNG to its first draw."""
        self._install(self.initial.model_copy(deep=True))
        return self.settings

    def _install(self, settings: FaultSettings) -> None:
        self.settings = settings
        self._not_found = frozenset(settings.not_found_ids)
        self._rng = random.Random(f"{self.seed}:faults")

    def decide(self, project_id: int | None) -> Decision:
        s, rng = self.settings, self._rng
        delay_ms = s.latency_ms
        if s.jitter_ms:
            delay_ms += rng.uniform(0.0, s.jitter_ms)
        if s.slow_rate and rng.random() < s.slow_rate:
            delay_ms += s.slow_ms
        delay_s = delay_ms / 1000.0
        if project_id is not None and project_id in self._not_found:
            return Decision(delay_s, "not_found", 404)
        if s.timeout_rate and rng.random() < s.timeout_rate:
            return Decision(delay_s, "timeout", 504)
        if s.rate_limit_rate and rng.random() < s.rate_limit_rate:
            return Decision(delay_s, "rate_limited", 429)
        if s.error_rate and rng.random() < s.error_rate:
            return Decision(delay_s, "error", 500 if rng.random() < 0.5 else 503)
        return Decision(delay_s, "ok", 200)
