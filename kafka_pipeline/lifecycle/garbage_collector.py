"""The cyclic garbage collector as a long-running worker wants it.

An enrichment event allocates a few thousand container objects (the parsed event, the httpx
request and response, the rows) that live as long as the event is in flight (tens of ms), and
almost all of them are freed by reference counting, not by the collector. With CPython's
default thresholds (700, 10, 10) the collector ran about once per event and every few hundred
events walked the whole heap, the hundred thousand objects of the imported modules included:
a quarter of the worker's CPU (`scripts/bench_enrich.py`, gc callbacks timing each pass).

So, once the worker is built: everything alive at start-up is moved out of the collector's
sight (`gc.freeze`: the modules, the settings, never garbage), and a young collection waits
for `YOUNG_THRESHOLD` allocations instead of 700, so it runs a few times a minute at full
speed, each pass as cheap as before (it walks the objects still alive, the events in flight).
Cycles are still collected, only later: memory held by cyclic garbage is bounded by the
allocations between two passes.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000
# a middle pass every 20 young ones, a full pass every 100 middle ones (CPython also waits for
# the long-lived objects to grow by a quarter since the last full pass)
MIDDLE_EVERY, FULL_EVERY = 20, 100


def tune_for_long_running() -> None:
    """Freeze the start-up heap and space the collector's passes out; call once per process,
    after start-up, before the loop runs."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_EVERY, FULL_EVERY)
