"""The running stack's connection details, written by `kafka-pipeline run` for the other commands.

`run` writes `data/stack.json` (`KP_STACK_FILE` elsewhere) once its broker, simulator and workers
are up, and removes it when it stops. Every other command (`status`, `dlq`, `tables`, `replay`,
`reset-offsets`, `inject`, `maintain`) reads it when nothing else names a broker or a tables
root (no flag, no environment variable, no `KP_ENV` file of its own) and says in one line on
stderr which stack it talks to. A file left by a `run` that is gone (its pid is not alive) is
ignored. Secrets (API token, storage options, SASL) never go in it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from kafka_pipeline.config import Settings

DEFAULT_PATH = Path("data") / "stack.json"
# where a setting may be given besides the stack file: then the stack file is not used for it
BROKER_VARIABLES = ("KAFKA_BOOTSTRAP_SERVERS", "KP_KAFKA__BOOTSTRAP_SERVERS")
TABLES_VARIABLES = ("DELTA_TABLES_ROOT", "KP_DELTA__TABLES_ROOT")
STACK_ENVIRONMENTS = ("default", "embedded")  # KP_ENV values whose config leaves the broker to `run`


class StackInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")

    pid: int
    started_at: datetime
    bootstrap_servers: str
    broker_kind: str
    api_url: str
    tables_root: str
    ops_urls: dict[str, str]  # worker name -> its ops base URL

    def describe(self, path: Path, *, broker: bool = True, tables: bool = True) -> str:
        parts = [f"broker {self.bootstrap_servers} ({self.broker_kind})"] if broker else []
        parts += [f"tables {self.tables_root}"] if tables else []
        return f"using the stack of 'kafka-pipeline run' (pid {self.pid}, {path}): {', '.join(parts)}"


def stack_file_path() -> Path:
    return Path(os.environ.get("KP_STACK_FILE") or DEFAULT_PATH)


def write_stack_file(settings: Settings, ops_urls: Mapping[str, str], path: Path | None = None) -> Path:
    """Written to a temporary name and renamed: a reader never sees half a file."""
    path = path or stack_file_path()
    root = settings.delta.tables_root
    if "://" not in root:  # a folder: absolute, so a command run elsewhere finds it
        root = str(Path(root).resolve())
    info = StackInfo(pid=os.getpid(), started_at=datetime.now(UTC), bootstrap_servers=settings.kafka.bootstrap_servers,
                     broker_kind=settings.kafka.broker_kind, api_url=settings.api.url, tables_root=root, ops_urls=dict(ops_urls))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(info.model_dump_json(indent=2) + "\n")
    partial.replace(path)
    return path


def remove_stack_file(path: Path | None = None) -> None:
    """Only the file this process wrote: another `run` may have written its own since."""
    path = path or stack_file_path()
    found = read_stack_file(path)
    if found is not None and found.pid == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def read_stack_file(path: Path | None = None) -> StackInfo | None:
    """The stack of a `run` still alive, else None (no file, unreadable, or its process is gone)."""
    path = path or stack_file_path()
    try:
        info = StackInfo.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None
    return info if _alive(info.pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _configured(variables: tuple[str, ...], flag: object) -> bool:
    return bool(flag) or any(os.environ.get(name) for name in variables) or os.environ.get("KP_ENV", "default") not in STACK_ENVIRONMENTS


def use_running_stack(settings: Settings, *, bootstrap_flag: object = None, tables_flag: object = None) -> StackInfo | None:
    """Point `settings` at the running stack for what nothing else configured; one line on stderr says so."""
    broker_free = not _configured(BROKER_VARIABLES, bootstrap_flag)
    tables_free = not _configured(TABLES_VARIABLES, tables_flag)
    if not (broker_free or tables_free):
        return None
    path = stack_file_path()
    info = read_stack_file(path)
    if info is None:
        return None
    if broker_free:
        settings.kafka = settings.kafka.model_copy(update={"bootstrap_servers": info.bootstrap_servers, "broker_kind": info.broker_kind})
    if tables_free:
        settings.delta.tables_root = info.tables_root
    print(info.describe(path, broker=broker_free, tables=tables_free), file=sys.stderr, flush=True)
    return info
