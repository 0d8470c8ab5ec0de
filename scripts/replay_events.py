#!/usr/bin/env python3
"""Replay ClaimX events into Kafka: the same as `kafka-pipeline replay` (every source and filter).

    python scripts/replay_events.py events.jsonl --rate 200 --bootstrap-servers kafka:9092
    python scripts/replay_events.py --from-topic claimx.events --partitions 3 --from-offset 120000
    python scripts/replay_events.py --from-table --project-ids-file ids.txt --since 2026-03-03 --refresh-projects
"""

import sys

from kafka_pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["replay", *sys.argv[1:]]))
