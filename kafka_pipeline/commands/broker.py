"""`kafka-pipeline broker`: run an embedded broker (tansu, or Apache Kafka with --kafka) until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from kafka_pipeline.embedded.broker import EmbeddedBroker
from kafka_pipeline.embedded.kafka_broker import KafkaBroker

NAME = "broker"
HELP = "Run an embedded broker (tansu; --kafka: Apache Kafka)."
DESCRIPTION = ("Start an embedded Kafka broker on loopback and print its address (Ctrl-C stops it): tansu in memory, "
               "or Apache Kafka with --kafka (Java 17+ and its jars: scripts/fetch-kafka-jars.sh).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--kafka", action="store_true", help="Apache Kafka (KRaft, one node) instead of tansu")
    parser.add_argument("--data-dir", type=Path, help="with --kafka: the log directory, kept (default: a temporary one)")


def run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    broker: EmbeddedBroker | KafkaBroker
    if args.kafka:
        broker = KafkaBroker(host=args.host, port=args.port, data_dir=args.data_dir.resolve() if args.data_dir else None)
    else:
        broker = EmbeddedBroker(host=args.host, port=args.port)
    with broker:
        kind = f"Apache Kafka {broker.version}" if isinstance(broker, KafkaBroker) else "tansu"
        print(f"KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}  ({kind})", flush=True)
        try:
            while not stop.wait(0.5) and broker.running:
                pass
        except KeyboardInterrupt:
            pass
    return 0
