"""Running the simulator: uvicorn in this process (`serve`), or a child process (`SimulatorProcess`).

`python -m kafka_pipeline.simulator --port 0 --seed 7` and `kafka-pipeline simulate-api` share
`add_arguments` and `run`: they listen, print `CLAIMX_API_URL=http://host:port` once ready and
serve until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import httpx
import uvicorn
from pydantic import SecretStr, ValidationError

from kafka_pipeline.argument_types import port
from kafka_pipeline.config import ApiSettings
from kafka_pipeline.lifecycle.processes import stop_process
from kafka_pipeline.simulator.app import DEFAULT_PASSWORD, DEFAULT_USER, create_app, make_token
from kafka_pipeline.simulator.data import DEFAULT_SEED
from kafka_pipeline.simulator.faults import FaultSettings

URL_PREFIX = "CLAIMX_API_URL="

try:  # the C parser is several times faster than h11 when it is installed
    import httptools  # noqa: F401

    HTTP_IMPL = "httptools"
except ImportError:
    HTTP_IMPL = "h11"


class SimulatorError(Exception):
    """The simulator could not start or answer (one line for the user)."""


# ---------------------------------------------------------------------------------------------
# command line (shared by `kafka-pipeline simulate-api` and `python -m kafka_pipeline.simulator`)


def add_arguments(parser: argparse.ArgumentParser, default_port: int = 8088) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1; the /_ control endpoints have no auth)"
    )
    parser.add_argument("--port", type=port, default=default_port, help=f"port, 0 for a free one (default: {default_port})")
    parser.add_argument("--seed", default=str(DEFAULT_SEED), help=f"data seed: same id and seed, same body (default: {DEFAULT_SEED})")
    parser.add_argument("--user", default=DEFAULT_USER, help=f"Basic auth user (default: {DEFAULT_USER})")
    parser.add_argument(
        "--password", default=os.environ.get("CLAIMX_SIMULATOR_PASSWORD", DEFAULT_PASSWORD),
        help="Basic auth password (default: $CLAIMX_SIMULATOR_PASSWORD, else 'simulator')",
    )
    parser.add_argument(
        "--fault-routes", choices=("on", "off"), default="on",
        help="serve GET/PUT /_faults and POST /_faults/reset, which change faults at runtime without auth (default: on)",
    )
    faults = parser.add_argument_group("latency and faults (also changeable at runtime: PUT /_faults)")
    faults.add_argument("--latency-ms", type=float, default=0.0, help="fixed delay of every answer (default: 0)")
    faults.add_argument("--jitter-ms", type=float, default=0.0, help="extra random delay, uniform in [0, N] ms (default: 0)")
    faults.add_argument("--error-rate", type=float, default=0.0, help="share of requests answered 500/503 (default: 0)")
    faults.add_argument("--rate-limit-rate", type=float, default=0.0, help="share answered 429 with Retry-After (default: 0)")
    faults.add_argument("--retry-after-s", type=int, default=1, help="Retry-After of a 429, in seconds (default: 1)")
    faults.add_argument("--timeout-rate", type=float, default=0.0, help="share never answered in time (default: 0)")
    faults.add_argument("--timeout-s", type=float, default=30.0, help="how long such a request hangs before a 504 (default: 30)")
    faults.add_argument("--not-found-ids", default="", help="comma-separated project ids answered 404 on every call")
    faults.add_argument("--slow-rate", type=float, default=0.0, help="share of requests delayed a further --slow-ms (default: 0)")
    faults.add_argument("--slow-ms", type=float, default=0.0, help="the extra delay of a slow request (default: 0)")


def faults_from_args(args: argparse.Namespace) -> FaultSettings:
    names = FaultSettings.model_fields
    try:
        return FaultSettings(**{name: getattr(args, name) for name in names})
    except ValidationError as exc:
        first = exc.errors()[0]
        option = "--" + str(first["loc"][0]).replace("_", "-")
        raise SimulatorError(f"{option}: {first['msg']}") from None


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM; 0 on a clean stop."""
    faults = faults_from_args(args)
    seed: int | str = int(args.seed) if str(args.seed).lstrip("-").isdigit() else args.seed
    app = create_app(seed=seed, faults=faults, user=args.user, password=args.password, fault_routes=args.fault_routes == "on")
    # SIGTERM stops uvicorn gracefully; afterwards uvicorn re-raises it to this no-op handler.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        serve(app, args.host, args.port, on_ready=lambda url: print(f"{URL_PREFIX}{url}", flush=True))
    except KeyboardInterrupt:
        pass
    return 0


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says TCP (with proto 0, Nagle + delayed ACK add 40 ms to every answer).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SimulatorError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def serve(app: Any, host: str = "127.0.0.1", port: int = 0, on_ready: Callable[[str], None] | None = None) -> None:
    """Run `app` with uvicorn until a signal stops it; `on_ready(url)` once it accepts requests."""
    sock = bind_socket(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    url = f"http://{'[' + bound_host + ']' if ':' in bound_host else bound_host}:{bound_port}"
    config = uvicorn.Config(
        app, http=HTTP_IMPL, loop="auto", lifespan="off", access_log=False, log_level="warning",
        backlog=4096, timeout_keep_alive=30, timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started and on_ready is not None:
            on_ready(url)
        while not task.done() and not server.should_exit:
            await asyncio.sleep(0.05)
        simulator = getattr(getattr(app, "state", None), "simulator", None)
        if simulator is not None:  # let requests held by a timeout fault go, so the stop is quick
            simulator.closing().set()
        await task

    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(main())


# ---------------------------------------------------------------------------------------------
# the simulator as a child process, for tests, benchmarks and the `run` command


def _die_with_parent() -> None:
    os.setpgrp()  # its own process group: a terminal's Ctrl-C reaches `run`, which stops it last
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class SimulatorProcess:
    """The simulator in a child process on a free loopback port.

        SimulatorProcess(
            seed: int | str = 7, *, host: str = "127.0.0.1", port: int = 0,
            user: str = "claimx", password: str = "simulator",
            latency_ms: float = 0, jitter_ms: float = 0,
            error_rate: float = 0, rate_limit_rate: float = 0, retry_after_s: int = 1,
            timeout_rate: float = 0, timeout_s: float = 30, not_found_ids: Iterable[int] = (),
            slow_rate: float = 0, slow_ms: float = 0,
            log_path: str | Path | None = None, startup_timeout_s: float = 20,
        )

    `start()` (or `with SimulatorProcess(...) as sim:`) launches it and returns once `/_health`
    answers; `stop()` ends it (SIGTERM, then SIGKILL). While running:

    - `url` ("http://127.0.0.1:PORT"), `token` (base64 of user:password), `headers` (the
      Authorization header), `seed`, `port`, `running`;
    - `api_settings(**overrides)` -> an `ApiSettings` pointing at it with its token;
    - `stats()` -> the `/_stats` dict; `reset_stats()`;
    - `faults()` -> current settings; `set_faults(**changes)` (e.g. `error_rate=1.0`) -> new
      settings; `reset_faults()` -> back to the constructor's settings.

    Fault options mean what `kafka_pipeline.simulator.faults` says.
    """

    def __init__(
        self,
        seed: int | str = DEFAULT_SEED,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        user: str = DEFAULT_USER,
        password: str = DEFAULT_PASSWORD,
        latency_ms: float = 0.0,
        jitter_ms: float = 0.0,
        error_rate: float = 0.0,
        rate_limit_rate: float = 0.0,
        retry_after_s: int = 1,
        timeout_rate: float = 0.0,
        timeout_s: float = 30.0,
        not_found_ids: Iterable[int] = (),
        slow_rate: float = 0.0,
        slow_ms: float = 0.0,
        log_path: str | Path | None = None,
        startup_timeout_s: float = 20.0,
    ) -> None:
        self.seed = seed
        self.host = host
        self.port = port
        self.user = user
        self.token = make_token(user, password)
        self._password = password
        self.initial_faults = FaultSettings(
            latency_ms=latency_ms, jitter_ms=jitter_ms, error_rate=error_rate,
            rate_limit_rate=rate_limit_rate, retry_after_s=retry_after_s, timeout_rate=timeout_rate,
            timeout_s=timeout_s, not_found_ids=list(not_found_ids), slow_rate=slow_rate, slow_ms=slow_ms,
        )
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout_s = startup_timeout_s
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._client: httpx.Client | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def command(self) -> list[str]:
        f = self.initial_faults
        return [
            sys.executable, "-m", "kafka_pipeline.simulator",
            "--host", self.host, "--port", str(self.port), "--seed", str(self.seed), "--user", self.user,
            "--latency-ms", str(f.latency_ms), "--jitter-ms", str(f.jitter_ms),
            "--error-rate", str(f.error_rate), "--rate-limit-rate", str(f.rate_limit_rate),
            "--retry-after-s", str(f.retry_after_s), "--timeout-rate", str(f.timeout_rate),
            "--timeout-s", str(f.timeout_s), "--not-found-ids", ",".join(map(str, f.not_found_ids)),
            "--slow-rate", str(f.slow_rate), "--slow-ms", str(f.slow_ms),
        ]

    def start(self) -> SimulatorProcess:
        if self.running:
            return self
        self._log = open(self.log_path, "ab") if self.log_path else tempfile.TemporaryFile()  # noqa: SIM115
        env = {**os.environ, "CLAIMX_SIMULATOR_PASSWORD": self._password}  # not on the command line
        self._process = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL,
            env=env, preexec_fn=_die_with_parent,
        )
        try:
            self.url = self._read_url(time.monotonic() + self.startup_timeout_s)
            self.port = int(self.url.rsplit(":", 1)[1])
            self._client = httpx.Client(base_url=self.url, timeout=10.0)
            self._wait_healthy(time.monotonic() + self.startup_timeout_s)
        except BaseException:  # noqa: BLE001 - clean up, then re-raise
            detail = self._log_tail()
            self.stop()
            raise SimulatorError(f"simulator failed to start{': ' + detail if detail else ''}") from None
        return self

    def _read_url(self, deadline: float) -> str:
        assert self._process is not None and self._process.stdout is not None
        stdout = self._process.stdout
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not selector.select(timeout=0.1):
                    if self._process.poll() is not None:
                        raise SimulatorError(f"exited with code {self._process.returncode}")
                    continue
                chunk = os.read(stdout.fileno(), 4096)
                if not chunk:
                    raise SimulatorError(f"exited with code {self._process.wait()}")
                buffer += chunk
                for line in buffer.decode(errors="replace").splitlines():
                    if line.startswith(URL_PREFIX):
                        return line[len(URL_PREFIX):].strip()
        raise SimulatorError("no address printed in time")

    def _wait_healthy(self, deadline: float) -> None:
        while True:
            with contextlib.suppress(httpx.HTTPError, SimulatorError):
                if self._control("GET", "/_health").get("status") == "ok":
                    return
            if time.monotonic() > deadline:
                raise SimulatorError("/_health did not answer in time")
            time.sleep(0.05)

    def _log_tail(self) -> str:
        if self._log is None:
            return ""
        with contextlib.suppress(OSError, ValueError):
            self._log.flush()
            self._log.seek(0)
            lines = [line for line in self._log.read().decode(errors="replace").splitlines() if line.strip()]
            return lines[-1].strip() if lines else ""
        return ""

    def stop(self, timeout_s: float = 5.0) -> None:
        process, self._process = self._process, None
        if self._client is not None:
            self._client.close()
            self._client = None
        if process is not None:
            stop_process(process, timeout_s)
            if process.stdout is not None:
                process.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- use ------------------------------------------------------------------------------------

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Basic {self.token}"}

    def api_settings(self, **overrides: Any) -> Any:
        """`ApiSettings` for a client of this simulator (url and token filled in)."""
        return ApiSettings(url=self.url, token=SecretStr(self.token), **overrides)

    def _control(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        if self._client is None:
            raise SimulatorError("simulator is not running")
        response = self._client.request(method, path, json=body)
        if response.status_code >= 400:
            raise SimulatorError(f"{method} {path}: {response.status_code} {response.text}")
        result: dict[str, Any] = response.json()
        return result

    def stats(self) -> dict[str, Any]:
        return self._control("GET", "/_stats")

    def reset_stats(self) -> dict[str, Any]:
        return self._control("POST", "/_stats/reset")

    def faults(self) -> dict[str, Any]:
        return self._control("GET", "/_faults")

    def set_faults(self, **changes: Any) -> dict[str, Any]:
        if "not_found_ids" in changes and not isinstance(changes["not_found_ids"], str):
            changes["not_found_ids"] = [int(i) for i in changes["not_found_ids"]]
        return self._control("PUT", "/_faults", changes)

    def reset_faults(self) -> dict[str, Any]:
        return self._control("POST", "/_faults/reset")

    def __repr__(self) -> str:
        return f"SimulatorProcess(url={self.url!r}, seed={self.seed!r}, running={self.running})"
