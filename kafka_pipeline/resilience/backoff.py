"""Jittered exponential backoff ("full jitter"), shared by every in-process retry loop."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None, *, floor: float = 0.0) -> float:
    """Delay before retry number `attempt` (1 = first retry): uniform in [floor*c, c] where
    c = min(max, base*2^(attempt-1)). `floor=0.5` ("equal jitter") keeps retries against a
    store that keeps failing from ever running close together."""
    if attempt < 1:
        raise ValueError("attempt starts at 1")
    ceiling = min(max_s, base_s * (2 ** (attempt - 1)))
    return (rng or random).uniform(floor * ceiling, ceiling)
