"""Failure categories. Every failure a worker sees is one of these three, and the
category alone decides where the message goes: retry topic, dead-letter topic, or a pause."""

from __future__ import annotations

from typing import Literal

Category = Literal["permanent", "transient", "auth"]


class PipelineError(Exception):
    category: Category = "permanent"

    def __init__(self, message: str, *, error_type: str | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type or type(self).__name__


class PermanentError(PipelineError):
    """Retrying cannot help: malformed input, 4xx from the API, schema mismatch."""

    category: Category = "permanent"


class TransientError(PipelineError):
    """May succeed later: 5xx, 429, timeouts, connection errors, open circuit, commit conflict."""

    category: Category = "transient"

    def __init__(self, message: str, *, error_type: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message, error_type=error_type)
        self.retry_after_s = retry_after_s


class AuthError(PipelineError):
    """Credentials rejected (401): pause and report, never dead-letter the event."""

    category: Category = "auth"
