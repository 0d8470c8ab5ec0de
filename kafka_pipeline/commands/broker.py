"""`kafka-pipeline broker`: run the embedded tansu broker until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import threading

from kafka_pipeline.embedded.broker import EmbeddedBroker

NAME = "broker"
HELP = "Run the embedded tansu Kafka broker on loopback."
DESCRIPTION = "Start the embedded tansu Kafka broker on loopback and print its address (Ctrl-C stops it)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")


def run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with EmbeddedBroker(host=args.host, port=args.port) as broker:
        print(f"KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}", flush=True)
        try:
            while not stop.wait(0.5) and broker.running:
                pass
        except KeyboardInterrupt:
            pass
    return 0
