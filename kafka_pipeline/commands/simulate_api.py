"""`kafka-pipeline simulate-api`: run the ClaimX API simulator until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse

from kafka_pipeline.errors import UsageError
from kafka_pipeline.simulator import server

NAME = "simulate-api"
HELP = "Serve a simulated ClaimX REST API."
DESCRIPTION = (
    "Serve a simulated ClaimX REST API (realistic data from --seed, Basic auth, configurable latency "
    "and faults) and print CLAIMX_API_URL once ready (Ctrl-C stops it)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    server.add_arguments(parser, default_port=8088)


def run(args: argparse.Namespace) -> int:
    try:
        return server.run(args)
    except server.SimulatorError as exc:
        raise UsageError(str(exc)) from None
