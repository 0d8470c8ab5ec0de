"""A worker process runs with its start-up heap frozen and the collector's passes spaced out,
and cyclic garbage is still collected."""

from __future__ import annotations

import json
import subprocess
import sys

from kafka_pipeline.lifecycle.garbage_collector import FULL_EVERY, MIDDLE_EVERY, YOUNG_THRESHOLD

# run_worker as every worker command calls it, with a worker that reports the collector's state
# and whether a reference cycle made while it runs is collected
PROBE = """
import asyncio, gc, json, weakref
from kafka_pipeline.config import load_settings
from kafka_pipeline.lifecycle.signals import run_worker

class Node:
    pass

class Probe:
    async def run(self, stop):
        a, b = Node(), Node()
        a.other, b.other = b, a
        alive = weakref.ref(a)
        del a, b
        gc.collect(0)
        print(json.dumps({"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count(), "cycle_collected": alive() is None}))

run_worker(load_settings(worker={"name": "probe"}), Probe)
"""


def test_a_worker_process_freezes_its_start_up_heap_and_still_collects_cycles() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    state = json.loads(done.stdout.strip().splitlines()[-1])
    assert state["threshold"] == [YOUNG_THRESHOLD, MIDDLE_EVERY, FULL_EVERY]
    assert state["frozen"] > 10_000  # the imported modules at least
    assert state["cycle_collected"] is True
