#!/usr/bin/env python3
"""Replay JSON-lines ClaimX events into Kafka: the same as `kafka-pipeline replay`.

    python scripts/replay_events.py events.jsonl --rate 200 --bootstrap-servers kafka:9092
"""

import sys

from kafka_pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["replay", *sys.argv[1:]]))
