"""Jittered exponential backoff ("full jitter"), shared by every in-process retry loop."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Delay before retry number `attempt` (1 = first retry): uniform in [0, min(max, base*2^(attempt-1))]."""
    if attempt < 1:
        raise ValueError("attempt starts at 1")
    ceiling = min(max_s, base_s * (2 ** (attempt - 1)))
    return (rng or random).uniform(0, ceiling)
