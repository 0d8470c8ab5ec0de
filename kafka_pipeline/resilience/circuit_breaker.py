"""A circuit breaker for a dependency that keeps failing (the ClaimX API, Redis).

closed -> open after `failure_threshold` consecutive failures; open -> half-open after
`cooldown_s`; half-open lets one trial call through: success closes, failure re-opens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

State = Literal["closed", "open", "half_open"]


@dataclass
class CircuitBreaker:
    name: str
    failure_threshold: int = 5
    cooldown_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    on_change: Callable[[str, State, State], None] | None = None
    _state: State = field(default="closed", init=False)
    _failures: int = field(default=0, init=False)
    _opened_at: float = field(default=0.0, init=False)
    _trial_in_flight: bool = field(default=False, init=False)

    @property
    def state(self) -> State:
        if self._state == "open" and self.clock() - self._opened_at >= self.cooldown_s:
            self._set("half_open")
        return self._state

    def allow(self) -> bool:
        """May a call go through now? In half-open only one trial at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        self._trial_in_flight = False
        if self._state != "closed":
            self._set("closed")

    def record_failure(self) -> None:
        self._failures += 1
        self._trial_in_flight = False
        if self._state == "half_open" or self._failures >= self.failure_threshold:
            self._opened_at = self.clock()
            if self._state != "open":
                self._set("open")

    def seconds_until_retry(self) -> float:
        if self._state != "open":
            return 0.0
        return max(0.0, self.cooldown_s - (self.clock() - self._opened_at))

    def _set(self, new: State) -> None:
        old, self._state = self._state, new
        if self.on_change is not None:
            self.on_change(self.name, old, new)
