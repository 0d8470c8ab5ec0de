"""A pipeline worker (`kafka-pipeline <command>`) as a child process: start, kill, restart.

Used by `kafka-pipeline run`, by the crash tests (SIGKILL at random moments) and the benchmarks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from kafka_pipeline.lifecycle.processes import stop_process


@dataclass
class WorkerProcess:
    command: str  # enrich | write | retry-scheduler
    env: dict[str, str]
    name: str = ""
    log_path: Path | None = None  # None: inherit the parent's stderr
    extra_args: list[str] = field(default_factory=list)
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)
    starts: int = field(default=0, init=False)

    def start(self) -> WorkerProcess:
        env = {**os.environ, **self.env, "WORKER_NAME": self.name or self.command}
        if self.log_path is not None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "kafka_pipeline", self.command, *self.extra_args],
            env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
            process_group=0,  # not the terminal's: on Ctrl-C `run` stops the workers first, with SIGTERM (drain, commit)
        )
        self.starts += 1
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def kill(self) -> None:
        """SIGKILL: the crash a worker must survive without losing or duplicating anything."""
        if self.running:
            assert self._process is not None
            self._process.kill()
            self._process.wait()

    def restart(self) -> WorkerProcess:
        self.kill()
        self._close_log()
        return self.start()

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM and wait for the graceful drain; SIGKILL when it takes longer."""
        process = self._process
        if process is None:
            return None
        code = stop_process(process, timeout_s)
        self._close_log()
        return code

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
