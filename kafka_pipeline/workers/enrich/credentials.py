"""The credentials gate: a 401 holds the event that got it and pauses the worker until a probe
gets through.

Credentials rejected is not the event's failure but the worker's, so the event is never
dead-lettered. It stays in flight, held where it got the 401: its slot taken, its offset done
neither (nothing at or after it in its partition is committed), its project's later events
waiting behind it. Consumption pauses (the worker's room is 0), readiness reports
`auth_failed`, and every `api.auth_probe_interval_s` a probe re-reads the token
(`CLAIMX_API_TOKEN_FILE` may have been rotated) and asks for the project export of the event
that failed. Once the API accepts the credentials, the held events run their handler again.
Holding them is simpler than seeking back: the offset tracker, the per-project order and the
counts stay as they are, and nothing is fetched or produced twice. A revoke or a stop hands held
events back at once (cancelled, offsets uncommitted), without waiting the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from kafka_pipeline.claimx.api.client import ClaimXApiClient
from kafka_pipeline.errors import AuthError, PermanentError
from kafka_pipeline.observability.logging import get_logger

log = get_logger(__name__)

T = TypeVar("T")


class CredentialsGate:
    def __init__(self, api: ClaimXApiClient, *, probe_interval_s: float) -> None:
        self.api = api
        self.probe_interval_s = probe_interval_s
        self.rejected = False  # the API rejected our credentials and no probe got through since
        self.held: set[asyncio.Task[Any]] = set()  # events waiting for the credentials
        self._ok = asyncio.Event()  # set while the credentials work: held events wait for it
        self._ok.set()
        self._probe: asyncio.Task[None] | None = None

    async def call(self, fn: Callable[[], Awaitable[T]], *, project_id: str, trace_id: str) -> T:
        """`fn()`'s result; a 401 holds the caller here until the credentials work, then `fn` runs again."""
        while True:
            try:
                return await fn()
            except AuthError as exc:
                self._reject(exc, project_id=project_id, trace_id=trace_id)
            task = asyncio.current_task()
            assert task is not None
            self.held.add(task)
            try:
                await self._ok.wait()
            finally:
                self.held.discard(task)

    def hand_back(self, tasks: set[asyncio.Task[None]]) -> None:
        """Cancel the held ones among `tasks`: they cannot finish before the credentials work."""
        for task in tasks & self.held:
            task.cancel()

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe

    def _reject(self, error: AuthError, *, project_id: str, trace_id: str) -> None:
        if self.rejected:
            return
        self.rejected = True
        self._ok.clear()
        log.error(
            "CLAIMX API REJECTED OUR CREDENTIALS (401): consumption paused, events held until they work again; "
            "fix CLAIMX_API_TOKEN_FILE (re-read before every probe) or CLAIMX_API_TOKEN (needs a restart)",
            error=str(error),
            trace_id=trace_id,
            probe_every_s=self.probe_interval_s,
        )
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._probe_until_accepted(project_id), name="credentials-probe")

    async def _probe_until_accepted(self, project_id: str) -> None:
        """Every `probe_interval_s` while the credentials are rejected: re-read the token, then
        fetch the project export of the event that got the 401. Any answer but a 401 (or a
        transient failure, which proves nothing) means the API accepts the credentials."""
        interval = self.probe_interval_s
        while self.rejected:
            await asyncio.sleep(interval)
            try:
                self.api.reload_token()
            except (OSError, ValueError) as exc:
                log.error("cannot re-read the ClaimX API token file", error=f"{type(exc).__name__}: {exc}")
                continue
            try:
                await self.api.get_project(project_id)
            except AuthError:
                log.error("ClaimX API still rejects our credentials (401); consumption stays paused", retry_in_s=interval)
                continue
            except PermanentError:
                pass  # the API answered (a 404, say): it accepted the credentials
            except Exception as exc:  # noqa: BLE001 - transient (or unexpected): proves nothing, try again
                log.warning("credentials probe inconclusive", error=f"{type(exc).__name__}: {exc}", retry_in_s=interval)
                continue
            self.rejected = False
            self._ok.set()
            log.info("ClaimX API accepts our credentials again: held events re-run, consumption resumes", held=len(self.held))
