"""The ClaimX change event: parsing raw message bytes into `ClaimXEvent`, and its `trace_id`.

Field names arrive in snake_case or camelCase (`project_id` / `projectId`); ids arrive as JSON
numbers or strings and are always kept as strings; `ingested_at` is ISO-8601, a naive value
meaning UTC.

`trace_id` is the event's `event_id` when it has one, else the hex SHA-256 of the UTF-8 bytes of

    f"{project_id}|{event_type}|{ingested_at_iso}"   then, for each optional id present, in order,
    f"|media:{media_id}"  f"|task:{task_assignment_id}"  f"|video:{video_collaboration_id}"
    f"|file:{master_file_name}"

where `ingested_at_iso` is `datetime.isoformat()` of the UTC-aware instant, e.g.
`2026-01-05T14:03:07+00:00`, or `2026-01-05T14:03:07.250000+00:00` when it has a fractional
second. So `...T14:03:07Z`, `...T14:03:07` and `...T09:03:07-05:00` name the same event.

Hostile input: `parse_event` raises nothing but `PermanentError(error_type="MalformedEvent")`
for any bytes (deep nesting, huge numbers, out-of-range or far-future times, lone surrogates,
ids that are not safe in an API path), so a bad message goes to the dead-letter topic and the
worker goes on.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, ValidationInfo, computed_field, field_validator, model_validator

from kafka_pipeline.errors import PermanentError

# Canonical field -> the names it may arrive under (snake_case first).
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "event_type": ("event_type", "eventType"),
    "project_id": ("project_id", "projectId"),
    "ingested_at": ("ingested_at", "ingestedAt"),
    "event_id": ("event_id", "eventId"),
    "media_id": ("media_id", "mediaId"),
    "task_assignment_id": ("task_assignment_id", "taskAssignmentId"),
    "video_collaboration_id": ("video_collaboration_id", "videoCollaborationId"),
    "master_file_name": ("master_file_name", "masterFileName"),
}
REQUIRED_FIELDS = ("event_type", "project_id", "ingested_at")
ID_FIELDS = ("project_id", "event_id", "media_id", "task_assignment_id", "video_collaboration_id")
# Ids that end up in ClaimX API requests: a path segment must not be ".", ".." or non-ASCII
# digits ("١٢٣".isdigit() is True), so only this shape is accepted.
API_ID_FIELDS = ("project_id", "media_id", "task_assignment_id", "video_collaboration_id")
API_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_EVENT_ID_CHARS = 128
# A value is refused before it is parsed past this size: compressed batches make a 100 MB value of
# a 100 KB record, and json.loads of it would cost several times that again.
MAX_EVENT_BYTES = 8 * 1024 * 1024
MAX_EVENT_TYPE_CHARS = 100
# An `ingested_at` later than now plus this is malformed: under newest-wins a far-future time
# would pin the row's columns for good (`settings.enrich.max_future_skew_s` overrides it).
DEFAULT_MAX_FUTURE_SKEW_S = 86_400.0

_UNSET_OPTIONAL: dict[str, None] = dict.fromkeys(("event_id", "media_id", "task_assignment_id", "video_collaboration_id", "master_file_name"))

# Event types whose handling needs an optional id.
REQUIRED_BY_TYPE: dict[str, str] = {
    "PROJECT_FILE_ADDED": "media_id",
    "CUSTOM_TASK_ASSIGNED": "task_assignment_id",
    "CUSTOM_TASK_COMPLETED": "task_assignment_id",
    "PROJECT_MFN_ADDED": "master_file_name",
}


class ClaimXEvent(BaseModel):
    """One parsed event. Build it with `parse_event(raw)` (precise errors) or `model_validate`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_type: str
    project_id: str
    ingested_at: datetime  # always UTC-aware
    event_id: str | None = None
    media_id: str | None = None
    task_assignment_id: str | None = None
    video_collaboration_id: str | None = None
    master_file_name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _snake_case(cls, obj: Any) -> Any:
        return _canonical_fields(obj) if isinstance(obj, dict) else obj

    @field_validator(*ID_FIELDS, mode="before")
    @classmethod
    def _id_as_str(cls, value: Any, info: ValidationInfo) -> str | None:
        return check_id(coerce_id(value, info.field_name or "id"), info.field_name or "id")

    @field_validator("event_type", "master_file_name", mode="before")
    @classmethod
    def _text(cls, value: Any, info: ValidationInfo) -> str | None:
        text = coerce_text(value, info.field_name or "text")
        return check_event_type(text) if info.field_name == "event_type" else text

    @field_validator("ingested_at", mode="before")
    @classmethod
    def _utc(cls, value: Any) -> datetime:
        return check_not_future(parse_timestamp(value, "ingested_at"), "ingested_at", DEFAULT_MAX_FUTURE_SKEW_S)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def trace_id(self) -> str:
        if self.event_id:
            return self.event_id
        return derive_trace_id(
            self.project_id,
            self.event_type,
            self.ingested_at,
            media_id=self.media_id,
            task_assignment_id=self.task_assignment_id,
            video_collaboration_id=self.video_collaboration_id,
            master_file_name=self.master_file_name,
        )

    @property
    def event_time(self) -> datetime:
        """The contract's `event_time`: the event's `ingested_at`."""
        return self.ingested_at

    @property
    def event_date(self) -> date:
        return self.ingested_at.date()


def derive_trace_id(
    project_id: str,
    event_type: str,
    ingested_at: datetime,
    *,
    media_id: str | None = None,
    task_assignment_id: str | None = None,
    video_collaboration_id: str | None = None,
    master_file_name: str | None = None,
) -> str:
    """The hex SHA-256 trace id of an event without `event_id` (see the module docstring)."""
    parts = [f"{project_id}|{event_type}|{to_utc(ingested_at).isoformat()}"]
    optional = {"media": media_id, "task": task_assignment_id, "video": video_collaboration_id, "file": master_file_name}
    parts.extend(f"|{label}:{value}" for label, value in optional.items() if value)
    # surrogatepass: never raises, even on text that is not valid Unicode (it is the same
    # UTF-8 as before for every string that is)
    return hashlib.sha256("".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


def to_utc(value: datetime) -> datetime:
    """A naive datetime is UTC; an aware one is converted to UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_timestamp(value: Any, field: str) -> datetime:
    """An ISO-8601 string (or datetime) -> UTC-aware datetime; ValueError naming the field otherwise."""
    if type(value) is str:  # the usual form, `...Z`: already UTC, nothing to strip or convert
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass  # said below
        else:
            if parsed.tzinfo is UTC:
                return parsed
    try:
        if isinstance(value, datetime):
            return to_utc(value)
        if isinstance(value, str) and value.strip():
            return to_utc(datetime.fromisoformat(value.strip()))
    except ValueError:
        pass
    except OverflowError:  # year 1 or 9999 with an offset: not representable in UTC
        raise ValueError(f"{field}: timestamp out of range in UTC {_shown(value)}") from None
    raise ValueError(f"{field}: unparseable timestamp {_shown(value)}")


def check_not_future(value: datetime, field: str, max_skew_s: float, *, now: datetime | None = None) -> datetime:
    """`value`, unless it is later than now plus `max_skew_s` (ValueError)."""
    limit = (now or datetime.now(UTC)) + _skew(max_skew_s)
    if value > limit:
        raise ValueError(f"{field}: {value.isoformat()} is more than {max_skew_s:g} s in the future")
    return value


@functools.lru_cache(maxsize=8)  # one per setting (a worker has one), not one per event
def _skew(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def coerce_id(value: Any, field: str) -> str | None:
    """An id given as a JSON number or string -> its string form (`5000001`, never `5000001.0`)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected an id, got a boolean")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError(f"{field}: expected an integer id, got {value!r}")
        return str(int(value))
    if isinstance(value, str):
        return check_text(value, field).strip() or None
    raise ValueError(f"{field}: expected an id, got {type(value).__name__}")


def check_id(value: str | None, field: str) -> str | None:
    """An id is safe where it is used: an API path segment for `API_ID_FIELDS`, a trace id for
    `event_id`; ValueError otherwise."""
    if value is None:
        return None
    if field in API_ID_FIELDS:
        if not API_ID.fullmatch(value):
            raise ValueError(f"{field}: {_shown(value)} is not 1-64 ASCII letters, digits, '-' or '_'")
    elif len(value) > MAX_EVENT_ID_CHARS or not value.isprintable():
        raise ValueError(f"{field}: {_shown(value)} is longer than {MAX_EVENT_ID_CHARS} characters or not printable")
    return value


def check_event_type(value: str | None) -> str | None:
    """An event type is a short printable name (it labels logs and metrics); ValueError otherwise."""
    if value is not None and (len(value) > MAX_EVENT_TYPE_CHARS or not value.isprintable()):
        raise ValueError(f"event_type: {_shown(value)} is longer than {MAX_EVENT_TYPE_CHARS} characters or not printable")
    return value


def check_text(value: str, field: str) -> str:
    """ValueError for text that is not valid Unicode (a lone surrogate from a JSON escape)."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{field}: holds a lone surrogate {_shown(value)}") from None
    return value


def coerce_text(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected a string, got {type(value).__name__}")
    return check_text(value, field).strip() or None


def _shown(value: Any, limit: int = 80) -> str:
    """A bounded, ASCII-only rendering of a value for an error message."""
    text = ascii(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _canonical_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """snake_case names for every known field; a snake_case value wins over its camelCase twin."""
    out: dict[str, Any] = {}
    for name, value in obj.items():  # the event's few keys, rather than every name a field may have
        canonical = _CANONICAL_OF.get(name)
        if canonical is not None and value is not None and (name == canonical or canonical not in out):
            out[canonical] = value
    return out


_CANONICAL_OF: dict[str, str] = {name: canonical for canonical, names in FIELD_ALIASES.items() for name in names}


def parse_event(
    raw: bytes | str | None, *, max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S, now: datetime | None = None
) -> ClaimXEvent:
    """Message bytes -> event, or PermanentError(error_type="MalformedEvent") with the precise reason.

    Never raises anything else, whatever the bytes (see the module docstring)."""
    if raw is None:
        raise PermanentError("not JSON: empty message (no value)", error_type="MalformedEvent")
    if len(raw) > MAX_EVENT_BYTES:
        raise PermanentError(f"message of {len(raw)} bytes is over the {MAX_EVENT_BYTES} bytes an event may have", error_type="MalformedEvent")
    try:
        obj = orjson.loads(raw)  # in C: a tenth of the standard parser's time per event
    except orjson.JSONDecodeError:
        obj = _standard_loads(raw)  # says why; and reads what orjson refuses, as it always was read
    if not isinstance(obj, dict):
        raise PermanentError(f"not a JSON object: got {type(obj).__name__}", error_type="MalformedEvent")
    return _event_of(obj, max_future_skew_s, now)


def _standard_loads(raw: bytes | str) -> Any:
    """The standard parser: it reads what orjson refuses (integers past 64 bits, NaN) and names
    what is wrong with the rest."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise PermanentError("not JSON: nested too deeply", error_type="MalformedEvent") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an int of more than 4300 digits
        raise PermanentError(f"not JSON: {str(exc)[:200]}", error_type="MalformedEvent") from None


def _checked_id(value: Any, field: str) -> str | None:
    return check_id(coerce_id(value, field), field)


def _event_type(value: Any, field: str) -> str | None:
    return check_event_type(coerce_text(value, field))


# field -> how its value is read (ingested_at: with the time it is read at, in _event_of)
_COERCERS: dict[str, Callable[[Any, str], str | None]] = {
    **dict.fromkeys(ID_FIELDS, _checked_id),
    "event_type": _event_type,
    "master_file_name": coerce_text,
}


def _event_of(obj: dict[str, Any], max_future_skew_s: float, now: datetime | None) -> ClaimXEvent:
    fields = _canonical_fields(obj)
    for name in REQUIRED_FIELDS:
        value = fields.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise PermanentError(f"missing field {name}", error_type="MalformedEvent")
    try:
        values: dict[str, Any] = {}
        for name in FIELD_ALIASES:  # in the fields' order, whatever the event's: the first bad one is named
            value = fields.get(name)
            if value is None:
                continue
            coerce = _COERCERS.get(name)
            if coerce is None:  # ingested_at
                values[name] = check_not_future(parse_timestamp(value, name), name, max_future_skew_s, now=now)
            else:
                values[name] = coerce(value, name)
    except ValueError as exc:
        raise PermanentError(str(exc), error_type="MalformedEvent") from None
    for name in REQUIRED_FIELDS:
        if values.get(name) is None:
            raise PermanentError(f"missing field {name}", error_type="MalformedEvent")
    needed = REQUIRED_BY_TYPE.get(values["event_type"])
    if needed is not None and values.get(needed) is None:
        raise PermanentError(f"{values['event_type']} requires {needed}", error_type="MalformedEvent")
    return _constructed(values)


_ALL_UNSET: dict[str, None] = dict.fromkeys(ClaimXEvent.model_fields)
_set_attribute = object.__setattr__
# What `model_construct` does for this model (no aliases, defaults all None, no extra kept, no
# private attributes, no post-init), at a third of its cost; a model that gains any of them
# takes model_construct again.
_CONSTRUCT_DIRECTLY = (
    not ClaimXEvent.__pydantic_post_init__
    and not ClaimXEvent.__pydantic_root_model__
    and not ClaimXEvent.__private_attributes__
    and ClaimXEvent.model_config.get("extra") != "allow"
    and all(f.alias is None and f.validation_alias is None and (f.is_required() or f.default is None) for f in ClaimXEvent.model_fields.values())
)


def _constructed(values: dict[str, Any]) -> ClaimXEvent:
    """`ClaimXEvent.model_construct(**values)` of checked values (absent optional fields None)."""
    if not _CONSTRUCT_DIRECTLY:
        return ClaimXEvent.model_construct(set(values), **{**_UNSET_OPTIONAL, **values})
    event = ClaimXEvent.__new__(ClaimXEvent)
    _set_attribute(event, "__dict__", {**_ALL_UNSET, **values})  # every field, in the model's order
    _set_attribute(event, "__pydantic_fields_set__", set(values))
    _set_attribute(event, "__pydantic_extra__", None)
    _set_attribute(event, "__pydantic_private__", None)
    return event

