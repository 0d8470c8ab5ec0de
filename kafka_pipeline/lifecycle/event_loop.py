"""The event loop every worker process runs on: uvloop where it is installed, else asyncio's.

uvloop (libuv, in C) schedules callbacks and moves socket bytes without asyncio's Python loop,
which was about a fifth of the enrichment worker's CPU (py-spy on scripts/bench_enrich.py).
Behaviour is asyncio's either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop  # noqa: PLC0415 - optional: not built for every platform
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the fastest loop available."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
