"""`python -m kafka_pipeline.simulator [--port 0] [--seed 7] ...`: the simulator as a plain process."""

from __future__ import annotations

import argparse
import sys

from kafka_pipeline.simulator.server import SimulatorError, add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kafka_pipeline.simulator", description="ClaimX API simulator.")
    add_arguments(parser, default_port=0)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except SimulatorError as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
