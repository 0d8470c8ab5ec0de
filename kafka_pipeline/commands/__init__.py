"""One module per `kafka-pipeline` subcommand.

Each module defines `NAME`, `HELP`, `add_arguments(parser)` and `run(args) -> int`; the CLI
finds them here, so adding a command is adding a module.
"""
