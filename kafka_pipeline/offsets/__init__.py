"""Offsets: where a topic's partitions begin and end, which offset a point in time is
(`positions`), what the log is (`log_identity`), what a worker has done (`tracker`), and lag."""

from __future__ import annotations

from kafka_pipeline.errors import UserError


class OffsetsError(UserError):
    """A position cannot be resolved or a reset cannot be done; one line for the user."""


class TimeLookupUnsupported(OffsetsError):
    """The broker cannot map a point in time to offsets (tansu answers ListOffsets by timestamp
    with offset 0 and the current time, whatever the records say)."""
