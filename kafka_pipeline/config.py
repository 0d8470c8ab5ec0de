"""Typed configuration: `config/*.yaml` defaults, environment variables on top.

Precedence (highest first): explicit overrides passed to `load_settings`, the flat
environment names of the README (`KAFKA_BOOTSTRAP_SERVERS`, ...), nested environment
names (`KP_<SECTION>__<FIELD>`, e.g. `KP_ENRICH__MAX_IN_FLIGHT=64`), the environment's
YAML file (`config/<KP_ENV>.yaml`), `config/default.yaml`, the model defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from kafka_pipeline.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"  # the checkout's config/ (KP_CONFIG_DIR elsewhere)

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
    timeout_s: float = Field(10.0, gt=0)
    max_concurrency: int = Field(64, ge=1)
    max_requests_per_s: float = Field(500.0, gt=0)
    retries: int = Field(3, ge=0)
    backoff_base_s: float = Field(0.2, ge=0)
    backoff_max_s: float = Field(5.0, ge=0)
    breaker_failure_threshold: int = Field(20, ge=1)
    breaker_cooldown_s: float = Field(15.0, gt=0)
    # while the API rejects the credentials (401): how often to re-read the token and try again
    auth_probe_interval_s: float = Field(15.0, gt=0)

    def resolved_token(self) -> SecretStr | None:
        if self.token is not None:
            return self.token
        if self.token_file is not None:
            return SecretStr(self.token_file.read_text().strip())
        return None


class DeltaSettings(Section):
    tables_root: str = "./data/delta"
    storage_options: dict[str, str] = Field(default_factory=dict)


class CacheSettings(Section):
    ttl_s: float = Field(1800.0, gt=0)
    refresh_after_s: float = Field(600.0, gt=0)
    absent_ttl_s: float = Field(60.0, ge=0)
    max_entries: int = Field(100_000, ge=1)
    redis_url: str | None = None
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


class WriterSettings(Section):
    group_id: str = "claimx-writer"
    max_rows: int = Field(20_000, ge=1)
    max_latency_s: float = Field(2.0, gt=0)
    stats_interval_s: float = Field(30.0, gt=0)
    max_poll_records: int = Field(2_000, ge=1)  # records taken per poll
    # a failed flush is retried after an exponential backoff between these bounds
    flush_retry_base_s: float = Field(0.5, gt=0)
    flush_retry_max_s: float = Field(30.0, gt=0)


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
    retry: RetrySettings = Field(default_factory=RetrySettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)

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
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "settings"
    value = first.get("input")
    shown = "" if isinstance(value, dict) or first["type"] == "missing" else f" (got {value!r})"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"config error: {where}: {first['msg']}{shown}{more}"
