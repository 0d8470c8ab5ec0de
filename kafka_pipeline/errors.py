"""Every error class a user or a worker meets, in one place.

- `PipelineError` and its three categories: every failure a worker sees while handling one
  message is one of them, and the category alone decides where the message goes: retry topic,
  dead-letter topic, or a pause.
- `UserError`: something the user fixes (a bad argument or setting, an unreachable broker);
  the CLI prints its one-line message and exits 2, never a traceback.
- `WorkerFailed`: a worker stopped because of a failure of its own (the broker or the DLQ
  refused a message, a batch could not be written at stop); the CLI prints one line, exits 1.
"""

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


class UserError(Exception):
    """A mistake the user fixes; the message is one line naming it (never a secret)."""


class UsageError(UserError):
    """A bad command-line argument value found after parsing."""


class ConfigError(UserError):
    """A setting is wrong; the message is one line naming it."""


class BrokerUnreachable(UserError):
    """The bootstrap servers did not answer."""


class WorkerFailed(Exception):
    """A worker stopped because of a failure of its own; what it finished is committed."""
