"""Operating the dead-letter topic: list, inspect, replay, purge."""
