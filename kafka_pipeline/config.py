"""Typed configuration: `config/*.yaml` defaults, environment variables on top.

Precedence (highest first): explicit overrides passed to `load_settings`, the flat
environment names of the README (`KAFKA_BOOTSTRAP_SERVERS`, ...), nested environment
names (`KP_<SECTION>__<FIELD>`, e.g. `KP_ENRICH__MAX_IN_FLIGHT=64`), the environment's
YAML file (`config/<KP_ENV>.yaml`), `config/default.yaml`, the model defaults.
"""

from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from kafka_pipeline.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"  # the checkout's config/ (KP_CONFIG_DIR elsewhere)
ENV_NAME = re.compile(r"[A-Za-z0-9_-]+")  # KP_ENV names a file in the config directory, nothing else
_TOKEN_FILE_MAX_BYTES = 65_536

# Flat environment names a user of the pipeline expects, mapped to the setting they set.
ENV_ALIASES: dict[str, tuple[str, str]] = {
    "KAFKA_BOOTSTRAP_SERVERS": ("kafka", "bootstrap_servers"),
    "KAFKA_SECURITY_PROTOCOL": ("kafka", "security_protocol"),
    "KAFKA_SASL_MECHANISM": ("kafka", "sasl_mechanism"),
    "KAFKA_SASL_USERNAME": ("kafka", "sasl_username"),
    "KAFKA_SASL_PASSWORD": ("kafka", "sasl_password"),
    "KAFKA_SSL_CAFILE": ("kafka", "ssl_cafile"),
    "KAFKA_BROKER_KIND": ("kafka", "broker_kind"),
    "KAFKA_EVENTS_TOPIC": ("kafka", "events_topic"),
    "KAFKA_ENTITY_ROWS_TOPIC": ("kafka", "entity_rows_topic"),
    "KAFKA_RETRY_TOPIC": ("kafka", "retry_topic"),
    "KAFKA_DLQ_TOPIC": ("kafka", "dlq_topic"),
    "CLAIMX_API_URL": ("api", "url"),
    "CLAIMX_API_TOKEN": ("api", "token"),
    "CLAIMX_API_TOKEN_FILE": ("api", "token_file"),
    "DELTA_TABLES_ROOT": ("delta", "tables_root"),
    "REDIS_URL": ("cache", "redis_url"),
    "WORKER_NAME": ("worker", "name"),
    "LOG_FORMAT": ("worker", "log_format"),
    "LOG_LEVEL": ("worker", "log_level"),
}
NESTED_ENV_PREFIX = "KP_"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class KafkaSettings(Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None  # PEM bundle the broker's certificate must chain to (None: system CAs)
    # what the broker supports (runtime/broker_capabilities.py): auto asks it once per process
    broker_kind: Literal["auto", "kafka", "tansu"] = "auto"
    events_topic: str = "claimx.events"
    entity_rows_topic: str = "claimx.entity_rows"
    retry_topic: str = "claimx.retry"
    dlq_topic: str = "claimx.dlq"
    partitions: int = Field(6, ge=1)
    replication_factor: int = Field(1, ge=1)
    # None: on where the broker supports it (Apache Kafka), off where not (tansu)
    enable_idempotence: bool | None = None
    compression_type: Literal["gzip", "snappy", "lz4", "zstd"] | None = None
    request_timeout_ms: int = Field(30_000, ge=1_000)
    session_timeout_ms: int = Field(30_000, ge=6_000)
    max_poll_interval_ms: int = Field(300_000, ge=10_000)


class ApiSettings(Section):
    url: str = "http://127.0.0.1:8088"
    token: SecretStr | None = None  # base64 of user:password; from env or token_file only
    token_file: Path | None = None
    timeout_s: float = Field(10.0, gt=0)  # per attempt, all of it: connect, headers, the whole body
    max_response_bytes: int = Field(16 * 1024 * 1024, ge=1024)  # a longer body is an error, not read on
    max_concurrency: int = Field(64, ge=1)
    max_requests_per_s: float = Field(500.0, gt=0)
    retries: int = Field(3, ge=0)
    backoff_base_s: float = Field(0.2, ge=0)
    backoff_max_s: float = Field(5.0, ge=0)
    # a 429's Retry-After pauses every request for at most this long (the header is the API's word, not ours)
    max_retry_after_s: float = Field(300.0, gt=0)
    breaker_failure_threshold: int = Field(20, ge=1)
    breaker_cooldown_s: float = Field(15.0, gt=0)
    # while the API rejects the credentials (401): how often to re-read the token and try again
    auth_probe_interval_s: float = Field(15.0, gt=0)

    def resolved_token(self) -> SecretStr | None:
        """The token; TokenFileError (one line, never the content) when the file cannot be read."""
        if self.token is not None:
            return self.token
        if self.token_file is None:
            return None
        try:
            with self.token_file.open("rb") as handle:
                raw = handle.read(_TOKEN_FILE_MAX_BYTES + 1)  # bounded: the path may be /dev/zero
            if len(raw) > _TOKEN_FILE_MAX_BYTES:
                reason = f"is larger than {_TOKEN_FILE_MAX_BYTES} bytes"
            else:
                return SecretStr(raw.decode("utf-8").strip())
        except IsADirectoryError:
            reason = "is a directory"
        except UnicodeDecodeError:
            reason = "is not UTF-8 text"
        except OSError as exc:
            reason = f"cannot be read ({exc.strerror or type(exc).__name__})"
        raise TokenFileError(f"config error: api.token_file: {ascii(str(self.token_file))} {reason}")


class DeltaSettings(Section):
    tables_root: str = "./data/delta"  # a folder or a URI: s3://bucket/prefix, az://..., gs://...
    # delta-rs storage options (AWS_ENDPOINT_URL, AWS_REGION, ...; see the README). They hold
    # credentials (AWS_SECRET_ACCESS_KEY, ...): never in repr, never echoed by a config error.
    storage_options: dict[str, str] = Field(default_factory=dict, repr=False)
    # AWS_S3_ALLOW_UNSAFE_RENAME is refused unless this says only one writer ever runs
    single_writer_acknowledged: bool = False


class CacheSettings(Section):
    ttl_s: float = Field(1800.0, gt=0)
    refresh_after_s: float = Field(600.0, gt=0)
    absent_ttl_s: float = Field(60.0, ge=0)
    max_entries: int = Field(100_000, ge=1)
    redis_url: SecretStr | None = None  # may hold a password: hidden in repr, dumps and errors
    key_prefix: str = "claimx:v1"
    ttl_jitter_s: float = Field(60.0, ge=0)
    lock_lease_ms: int = Field(5_000, ge=100)
    lock_wait_s: float = Field(5.0, gt=0)
    socket_timeout_s: float = Field(0.25, gt=0)
    warm_from_delta: bool = False
    warm_window_s: float = Field(1800.0, gt=0)
    admin_token: SecretStr | None = None
    # the Redis tier: its circuit breaker (consecutive failures to open, seconds open) and pool size
    redis_breaker_failure_threshold: int = Field(3, ge=1)
    redis_breaker_cooldown_s: float = Field(2.0, gt=0)
    redis_max_connections: int = Field(16, ge=1)
    # /cache/* on the ops port; a worker refuses to start with them beyond loopback and no token
    admin_routes: bool = True

    @field_validator("redis_url", mode="before")
    @classmethod
    def _redis_url_shape(cls, value: Any) -> Any:
        """A URL redis-py can use; the message never repeats the URL (it may hold a password)."""
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if text is None or text == "":
            return None
        if not isinstance(text, str):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        try:
            parts = urlsplit(text)
            port = parts.port  # ValueError when not a number in 0..65535
        except ValueError:
            raise ValueError("must be a redis://, rediss:// or unix:// URL with a valid host and port") from None
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        if parts.scheme != "unix" and (not parts.hostname or port == 0):
            raise ValueError("must name a host (redis://[:password@]host:port/db)")
        if parts.scheme == "unix" and not parts.path:
            raise ValueError("must name a socket path (unix:///path/to/redis.sock)")
        return text

    @field_validator("admin_token")
    @classmethod
    def _admin_token_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        """A blank token would pass the off-loopback check and switch the routes' auth off."""
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be blank: set a token, or leave the setting out")
        return value

    @model_validator(mode="after")
    def _refresh_below_ttl(self) -> CacheSettings:
        if self.refresh_after_s >= self.ttl_s:
            raise ValueError("refresh_after_s must be below ttl_s")
        return self


class EnrichSettings(Section):
    group_id: str = "claimx-enrich"
    max_in_flight: int = Field(256, ge=1)
    stats_interval_s: float = Field(30.0, gt=0)
    # media events of one project arriving within this window share one media-list call
    media_window_s: float = Field(0.005, ge=0)
    max_future_skew_s: float = Field(86_400.0, gt=0)  # an ingested_at later than now + this is malformed
    # a `refresh-project` header is honoured at most once per project per this many seconds
    refresh_min_interval_s: float = Field(60.0, ge=0)


class WriterSettings(Section):
    group_id: str = "claimx-writer"
    max_rows: int = Field(20_000, ge=1)
    max_latency_s: float = Field(2.0, gt=0)
    stats_interval_s: float = Field(30.0, gt=0)
    max_poll_records: int = Field(2_000, ge=1)  # records taken per poll
    # a failed flush is retried after an exponential backoff between these bounds
    flush_retry_base_s: float = Field(0.5, gt=0)
    flush_retry_max_s: float = Field(30.0, gt=0)
    # A partition whose stored progress came from another log (a recreated topic, a new cluster,
    # a fresh embedded broker) is refused unless this is set: then the new log is adopted and
    # written from its first record (`kafka-pipeline write --adopt-new-log`; `run` sets it for
    # the broker it starts itself).
    adopt_new_log: bool = False


class MaintenanceSettings(Section):
    """Table maintenance the writer deployment runs by itself (compaction, vacuum, checkpoints,
    log cleanup)."""

    enabled: bool = True
    interval_s: float = Field(30.0, gt=0)  # how often every table is looked at
    compact_small_files: int = Field(16, ge=2)  # compact once a table has this many files below its target size
    compact_after_commits: int = Field(200, ge=1)  # ... or this many commits since the last compaction
    # each flush reads every commit since the last checkpoint (delta-rs replays them for the
    # writer's transaction versions): 10 keeps that to a few GETs per table on an object store
    checkpoint_after_commits: int = Field(10, ge=1)
    log_retention_hours: float = Field(168.0, ge=0)  # commits older than this (and than a checkpoint) are deleted
    # data files removed from a table longer ago than this are deleted (Delta's default: a week of
    # time travel, and room for slow readers); fractional hours allowed, 0 needs delta.single_writer_acknowledged
    vacuum_retention_hours: float = Field(168.0, ge=0)


class RetrySettings(Section):
    group_id: str = "claimx-retry-scheduler"
    delays_s: list[float] = Field(default_factory=lambda: [30.0, 120.0, 600.0, 1800.0], min_length=1)
    max_waiting_per_partition: int = Field(10_000, ge=1)  # held in memory before the partition is paused
    stats_interval_s: float = Field(30.0, gt=0)
    max_poll_records: int = Field(500, ge=1)  # records taken per poll
    send_retry_backoff_s: float = Field(1.0, gt=0)  # a failed forward is tried again after this
    topic_refresh_s: float = Field(10.0, gt=0)  # an unknown target topic is looked up again at most this often


class WorkerSettings(Section):
    name: str = Field(default_factory=lambda: f"worker-{os.getpid()}")
    log_format: Literal["console", "json"] = "console"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    http_host: str = "127.0.0.1"
    http_port: int = Field(0, ge=0, le=65535)  # 0: no ops HTTP server
    shutdown_grace_s: float = Field(30.0, gt=0)
    # the consumer runtime (every Kafka worker): finished offsets are committed at least this often
    commit_interval_s: float = Field(0.5, gt=0)
    # longest wait of one poll, so a stop, a flush or a due time is noticed quickly
    poll_timeout_ms: int = Field(200, ge=1)
    # a flush or drain longer than this polls the consumer (partitions paused) to keep the group membership
    poll_while_busy_s: float = Field(1.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="forbid", validate_assignment=True)

    env: str = "default"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    delta: DeltaSettings = Field(default_factory=DeltaSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    enrich: EnrichSettings = Field(default_factory=EnrichSettings)
    writer: WriterSettings = Field(default_factory=WriterSettings)
    maintenance: MaintenanceSettings = Field(default_factory=MaintenanceSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)

    @model_validator(mode="after")
    def _vacuum_retention_needs_a_single_writer(self) -> Settings:
        # as delta-rs refuses a retention below the table's own unless told otherwise: at 0 a file
        # is deleted the moment a commit removes it, under a MERGE or a reader still reading it
        if self.maintenance.vacuum_retention_hours == 0 and not self.delta.single_writer_acknowledged:
            raise ValueError(
                "maintenance.vacuum_retention_hours 0 deletes files that a running MERGE or reader may still need; "
                "give a retention above 0 (fractional hours are fine), or set delta.single_writer_acknowledged: true"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _EnvSource(settings_cls), _YamlSource(settings_cls))


class TokenFileError(ConfigError, OSError):
    """The API token file cannot be read: a ConfigError at start, an OSError to the worker's
    token re-read (which logs it and tries again later)."""


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _set_path(target: dict[str, Any], section: str, field: str, value: Any) -> None:
    target.setdefault(section, {})[field] = value


class _YamlSource(PydanticBaseSettingsSource):
    """`config/default.yaml`, then `config/<env>.yaml` (env from `KP_ENV`) on top."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        config_dir = Path(os.environ.get("KP_CONFIG_DIR", CONFIG_DIR))
        env = os.environ.get("KP_ENV", "default")
        if not ENV_NAME.fullmatch(env):
            raise ConfigError(f"config error: KP_ENV must name a file in {config_dir} (letters, digits, - and _), got {ascii(env)}")
        data: dict[str, Any] = {}
        for name in dict.fromkeys(["default", env]):
            path = config_dir / f"{name}.yaml"
            if path.exists():
                loaded = yaml.safe_load(path.read_text()) or {}
                if not isinstance(loaded, dict):
                    raise ConfigError(f"config error: {path} must hold a mapping")
                data = _deep_merge(data, loaded)
            elif name != "default":
                raise ConfigError(f"config error: KP_ENV={env!r} but {path} does not exist")
        data.setdefault("env", env)
        return data


class _EnvSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name, value in os.environ.items():
            if name.startswith(NESTED_ENV_PREFIX) and "__" in name:
                section, _, field = name[len(NESTED_ENV_PREFIX):].lower().partition("__")
                _set_path(data, section, field, _parse_env_value(value))
        for name, (section, field) in ENV_ALIASES.items():
            if os.environ.get(name):
                _set_path(data, section, field, os.environ[name])
        return data


def _parse_env_value(value: str) -> Any:
    """Lists and mappings may be given as YAML/JSON (`KP_RETRY__DELAYS_S=[1,2]`)."""
    if value[:1] in "[{":
        return yaml.safe_load(value)
    return value


def load_settings(**overrides: Any) -> Settings:
    """Build the settings or raise ConfigError with one line naming the bad setting."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config error: invalid YAML: {str(exc).splitlines()[0]}") from None
    return settings


def format_validation_error(exc: ValidationError) -> str:
    """One line naming the setting. The value is shown only for a known setting that is not a
    secret: a mistyped name (`KP_API__TOKN`) may well carry one."""
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "settings"
    value = first.get("input")
    hidden = isinstance(value, dict) or first["type"] in ("missing", "extra_forbidden") or _is_secret(first["loc"])
    shown = "" if hidden else f" (got {_shown(value)})"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"config error: {where}: {first['msg']}{shown}{more}"


# Settings that are not SecretStr but hold secrets all the same.
_SECRET_SETTINGS = {("delta", "storage_options")}


def _is_secret(loc: tuple[int | str, ...]) -> bool:
    """Is the setting at `loc` (or any setting it is part of) a SecretStr, or one that holds secrets?"""
    if tuple(loc[:2]) in _SECRET_SETTINGS:
        return True
    model: Any = Settings
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not isinstance(part, str) or fields is None or part not in fields:
            return False
        annotation = fields[part].annotation
        if SecretStr in (annotation, *typing.get_args(annotation)):
            return True
        model = annotation
    return False


def _shown(value: Any) -> str:
    text = ascii(value)
    return text if len(text) <= 80 else text[:77] + "..."
