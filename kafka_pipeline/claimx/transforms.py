"""Pure functions: ClaimX API JSON (and events) -> rows for the contract's eight tables.

Rows are dicts keyed by the column names of `kafka_pipeline.claimx.schemas`, with JSON-ready
values conformed to the column's type: ids and text as `str`, timestamps as ISO-8601 strings in
UTC (`datetime.isoformat()` of the UTC instant, naive API values meaning UTC), dates as
`YYYY-MM-DD`, booleans as `bool`, int64 as `int`, float64 as `float`. A value that cannot be
read as its column's type, or does not fit it (`yearBuilt: "1e30"` past int64, a year-1 time
with an offset, text that is not valid Unicode), becomes `None` (the merge rule never lets a
null erase a value) and is counted in `claimx_api_values_nulled_total{table, column}`: one odd
value never costs the writer the whole message.

Rows carry entity columns only; the writer adds the metadata columns (`trace_id`, `event_time`,
`created_at`, `updated_at`), except in `claimx_events`, whose merge key is `trace_id`.
Minimal update rows (master file name, policyholder invited/joined, XA auto-link failure) carry
only the key and their own columns.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any

import pyarrow as pa

from kafka_pipeline.claimx.entity_rows import Row, utc_iso
from kafka_pipeline.claimx.events import ClaimXEvent, parse_timestamp, to_utc
from kafka_pipeline.claimx.schemas import (
    BOOL,
    CONTACTS,
    DATE,
    EVENTS,
    EXTERNAL_LINKS,
    FLOAT64,
    INT64,
    MEDIA,
    PROJECTS,
    STRING,
    TABLES,
    TASK_TEMPLATES,
    TASKS,
    TIMESTAMP,
    VIDEO_COLLAB,
    TableSpec,
)

Rows = dict[str, list[Row]]

POLICYHOLDER = "POLICYHOLDER"
CLAIM_REP = "CLAIM_REP"

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# (table, column) -> API values that did not fit the column and were written as null. A plain
# count: the enrichment worker exports it as `claimx_api_values_nulled_total` (the domain does
# no I/O, metrics included).
VALUES_NULLED: Counter[tuple[str, str]] = Counter()

_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


# --- value conformance -----------------------------------------------------------------------


def as_str(value: Any) -> str | None:
    """Text or an id: numbers become their plain string form (`5000001`, not `5000001.0`)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value if value.isascii() or _is_unicode(value) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def _is_unicode(text: str) -> bool:
    """False for text with lone surrogates (JSON `"\\ud800"`): no UTF-8 column can hold it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def as_timestamp(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if type(value) is str and value.endswith("Z"):  # the API's own form: UTC already, nothing to strip or convert
        try:
            return datetime.fromisoformat(value).isoformat()
        except ValueError:
            pass  # said below, as for any other text
    try:
        if isinstance(value, datetime):  # an event's time, already parsed
            return to_utc(value).isoformat()
        return utc_iso(parse_timestamp(value, "timestamp"))
    except (ValueError, OverflowError):  # overflow: year 1 or 9999 moved to UTC leaves the calendar
        return None


def as_date(value: Any) -> str | None:
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip()[:10]).isoformat()
        except ValueError:
            return None
    return None


def as_bool(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return None


def as_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        result = float(value)
    except (TypeError, ValueError, OverflowError):  # overflow: an int too large for a float
        return None
    return result if math.isfinite(result) else None


def as_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value if INT64_MIN <= value <= INT64_MAX else None
    number = as_float(value)
    if number is None:
        return None
    rounded = int(round(number))
    return rounded if INT64_MIN <= rounded <= INT64_MAX else None


_CONVERTERS: dict[pa.DataType, Any] = {
    STRING: as_str,
    TIMESTAMP: as_timestamp,
    DATE: as_date,
    BOOL: as_bool,
    INT64: as_int,
    FLOAT64: as_float,
}
# table -> column -> the converter of the column's type
_COLUMN_CONVERTERS: dict[str, dict[str, Any]] = {
    name: {column: _CONVERTERS[kind] for column, kind in zip(spec.schema.names, spec.schema.types, strict=True)}
    for name, spec in TABLES.items()
}


def conform(spec: TableSpec, values: Mapping[str, Any]) -> Row:
    """The row with every value converted to its column's type; an unknown column is a bug.

    None and ASCII text in a text column are kept as they are (what the converters would
    return) without a call: most values of most rows are one or the other."""
    converters = _COLUMN_CONVERTERS[spec.name]
    row: Row = {}
    nulled: list[str] | None = None
    for column, value in values.items():
        convert = converters.get(column)
        if convert is None:
            raise KeyError(f"{spec.name} has no column {column!r}")
        if value is None or (convert is as_str and type(value) is str and value.isascii()):
            row[column] = value
            continue
        converted = row[column] = convert(value)
        if converted is None and value != "":
            nulled = [column] if nulled is None else [*nulled, column]
    for column in nulled or ():
        VALUES_NULLED[(spec.name, column)] += 1
    return row


def _unwrap(body: Any) -> Any:
    """API bodies come with or without a `{"data": ...}` wrapper."""
    if isinstance(body, Mapping) and "data" in body and not {"project", "assignmentId"} & body.keys():
        return body["data"]
    return body


def _obj(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _email_key(value: Any) -> str | None:
    """A contact email as merge key: trimmed and lower-cased, so case variants are one contact."""
    text = as_str(value)
    text = text.strip().lower() if text else None
    return text or None


def _table(spec: TableSpec, rows: Iterable[Row]) -> list[Row]:
    """The rows with every merge key (conformed values: None is the only value equal to None)."""
    keys = spec.merge_keys
    return [r for r in rows if None not in map(r.get, keys)]


# --- projects and contacts -------------------------------------------------------------------


def primary_email(emails: Any) -> str | None:
    """The address marked primary, else the first one."""
    addresses = [e for e in _list(emails) if isinstance(e, Mapping) and e.get("emailAddress")]
    for entry in addresses:
        if as_bool(entry.get("primary")):
            return as_str(entry["emailAddress"])
    return as_str(addresses[0]["emailAddress"]) if addresses else None


def first_phone(phones: Any) -> Mapping[str, Any]:
    for entry in _list(phones):
        if isinstance(entry, Mapping) and entry.get("phoneNumber"):
            return entry
    return {}


def project_rows(body: Any, project_id: str | None = None) -> Rows:
    """`GET /export/project/{id}` -> one `claimx_projects` row and its `claimx_contacts` rows."""
    export = _obj(_unwrap(body))
    project = _obj(export.get("project"))
    customer = _obj(project.get("customerInformation"))
    address = _obj(project.get("address"))
    phone = first_phone(customer.get("phones"))
    pid = as_str(project.get("projectId")) or project_id
    mfn = project.get("mfn")
    email = primary_email(customer.get("emails"))
    projects = conform(
        PROJECTS,
        {
            "project_id": pid,
            "project_number": project.get("projectNumber"),
            "master_file_name": mfn,
            "secondary_number": project.get("secondaryNumber"),
            "status": project.get("status"),
            "created_date": project.get("createdDate"),
            "date_of_loss": project.get("dateOfLoss"),
            "type_of_loss": project.get("typeOfLoss"),
            "cause_of_loss": project.get("causeOfLoss"),
            "loss_description": project.get("lossDescription"),
            "year_built": project.get("yearBuilt"),
            "square_footage": project.get("squareFootage"),
            "date_received": project.get("dateReceived"),
            "date_contacted": project.get("dateContacted"),
            "planned_inspection_date": project.get("plannedInspectionDate"),
            "date_inspected": project.get("dateInspected"),
            "appointment_date": project.get("appointmentDate"),
            "custom_attribute1": project.get("customAttribute1"),
            "custom_attribute2": project.get("customAttribute2"),
            "custom_attribute3": project.get("customAttribute3"),
            "custom_external_unique_id": project.get("customExternalUniqueId"),
            "customer_first_name": customer.get("firstName"),
            "customer_last_name": customer.get("lastName"),
            "custom_business_name": customer.get("customBusinessName"),
            "business_line_type": customer.get("businessLineType"),
            "street1": address.get("street1"),
            "street2": address.get("street2"),
            "city": address.get("city"),
            "state_province": address.get("stateProvince"),
            "zip_postcode": address.get("zipPostcode"),
            "county": address.get("county"),
            "country": address.get("country"),
            "primary_email": email,
            "primary_phone": phone.get("phoneNumber"),
            "primary_phone_country_code": phone.get("phoneCountryCode"),
            "company_name": export.get("companyName"),
        },
    )
    contacts: list[Row] = []
    if _email_key(email):
        contacts.append(
            conform(
                CONTACTS,
                {
                    "project_id": pid,
                    "contact_email": _email_key(email),
                    "contact_type": POLICYHOLDER,
                    "first_name": customer.get("firstName"),
                    "last_name": customer.get("lastName"),
                    "phone_number": phone.get("phoneNumber"),
                    "phone_country_code": phone.get("phoneCountryCode"),
                    "is_primary_contact": True,
                    "master_file_name": mfn,
                },
            )
        )
    for member in _list(export.get("teamMembers")):
        member = _obj(member)
        if not _email_key(member.get("userName")):
            continue
        contacts.append(
            conform(
                CONTACTS,
                {
                    "project_id": pid,
                    "contact_email": _email_key(member.get("userName")),
                    "contact_type": CLAIM_REP,
                    "is_primary_contact": as_bool(member.get("primaryContact")) or False,
                    "master_file_name": member.get("mfn") or mfn,
                },
            )
        )
    return {PROJECTS.name: _table(PROJECTS, [projects]), CONTACTS.name: _table(CONTACTS, contacts)}


def mfn_row(event: ClaimXEvent) -> Rows:
    """PROJECT_MFN_ADDED: the project's master file name, from the event."""
    return {PROJECTS.name: [conform(PROJECTS, {"project_id": event.project_id, "master_file_name": event.master_file_name})]}


def policyholder_row(event: ClaimXEvent) -> Rows:
    """POLICYHOLDER_INVITED / POLICYHOLDER_JOINED: when, from the event time."""
    column = "policyholder_joined_at" if event.event_type == "POLICYHOLDER_JOINED" else "policyholder_invited_at"
    return {PROJECTS.name: [conform(PROJECTS, {"project_id": event.project_id, column: event.event_time})]}


def xa_row(event: ClaimXEvent) -> Rows:
    """PROJECT_AUTO_XA_LINKING_UNSUCCESSFUL: the flag and when."""
    return {
        PROJECTS.name: [
            conform(PROJECTS, {"project_id": event.project_id, "xa_autolink_fail": True, "xa_autolink_fail_at": event.event_time})
        ]
    }


# --- media -----------------------------------------------------------------------------------


def media_item_id(item: Mapping[str, Any]) -> str | None:
    return as_str(item.get("mediaID", item.get("mediaId")))


def media_row(item: Mapping[str, Any], project_id: str) -> Row:
    return conform(
        MEDIA,
        {
            "media_id": media_item_id(item),
            "project_id": as_str(item.get("projectId")) or project_id,
            "task_assignment_id": item.get("taskAssignmentId"),
            "file_type": item.get("mediaType"),
            "file_name": item.get("mediaName"),
            "media_description": item.get("mediaDescription"),
            "media_comment": item.get("mediaComment"),
            "latitude": item.get("latitude"),
            "longitude": item.get("longitude"),
            "gps_source": item.get("gpsSource"),
            "taken_date": item.get("takenDate"),
            "full_download_link": item.get("fullDownloadLink"),
            "expires_at": item.get("expiresAt"),
        },
    )


def media_rows(items: Iterable[Mapping[str, Any]], project_id: str) -> Rows:
    return {MEDIA.name: _table(MEDIA, (media_row(item, project_id) for item in items))}


# --- tasks -----------------------------------------------------------------------------------


def task_rows(body: Any, project_id: str | None = None) -> Rows:
    """`GET /customTasks/assignment/{id}?full=true` -> tasks, task_templates, external_links and
    a POLICYHOLDER contact (not primary) when the external link has an email."""
    task = _obj(_unwrap(body))
    template = _obj(task.get("customTask"))
    link = _obj(task.get("externalLinkData"))
    assignment_id = as_str(task.get("assignmentId"))
    pid = as_str(task.get("projectId")) or project_id
    rows: Rows = {
        TASKS.name: _table(
            TASKS,
            [
                conform(
                    TASKS,
                    {
                        "assignment_id": assignment_id,
                        "task_id": task.get("taskId"),
                        "task_name": task.get("taskName"),
                        "form_id": task.get("formId"),
                        "project_id": pid,
                        "assignee_id": task.get("assigneeId"),
                        "assignor_id": task.get("assignorId"),
                        "assignor_email": task.get("assignor"),
                        "date_assigned": task.get("dateAssigned"),
                        "date_completed": task.get("dateCompleted"),
                        "cancelled_date": task.get("cancelledDate"),
                        "status": task.get("status"),
                        "stp_enabled": task.get("stpEnabled"),
                        "mfn": task.get("mfn"),
                    },
                )
            ],
        )
    }
    if template:
        rows[TASK_TEMPLATES.name] = _table(
            TASK_TEMPLATES,
            [
                conform(
                    TASK_TEMPLATES,
                    {
                        "task_id": template.get("taskId", task.get("taskId")),
                        "comp_id": template.get("compId"),
                        "name": template.get("name"),
                        "description": template.get("description"),
                        "form_id": template.get("formId"),
                        "form_name": template.get("formName"),
                        "enabled": template.get("enabled"),
                        "is_default": template.get("default"),
                        "is_manual_delivery": template.get("isManualDelivery"),
                        "is_external_link_delivery": template.get("isExternalLinkDelivery"),
                        "provide_portal_access": template.get("providePortalAccess"),
                        "notify_assigned_send_recipient": template.get("notifyAssignedSendRecipient"),
                        "notify_assigned_send_recipient_sms": template.get("notifyAssignedSendRecipientSms"),
                        "notify_assigned_subject": template.get("notifyAssignedSubject"),
                        "notify_task_completed": template.get("notifyTaskCompleted"),
                        "notify_completed_subject": template.get("notifyCompletedSubject"),
                        "allow_resubmit": template.get("allowReSubmit"),
                        "auto_generate_pdf": template.get("autoGeneratePdf"),
                        "modified_by": template.get("modifiedBy"),
                        "modified_by_id": template.get("modifiedById"),
                        "modified_date": template.get("modifiedDate"),
                    },
                )
            ],
        )
    if link:
        rows[EXTERNAL_LINKS.name] = _table(
            EXTERNAL_LINKS,
            [
                conform(
                    EXTERNAL_LINKS,
                    {
                        "link_id": link.get("linkId"),
                        "assignment_id": assignment_id,
                        "project_id": pid,
                        "link_code": link.get("linkCode"),
                        "url": link.get("url"),
                        "notification_access_method": link.get("notificationAccessMethod"),
                        "country_id": link.get("countryId"),
                        "state_id": link.get("stateId"),
                        "email": link.get("email"),
                        "first_name": link.get("firstName"),
                        "last_name": link.get("lastName"),
                        "phone": link.get("phone"),
                    },
                )
            ],
        )
        if _email_key(link.get("email")):
            rows[CONTACTS.name] = _table(
                CONTACTS,
                [
                    conform(
                        CONTACTS,
                        {
                            "project_id": pid,
                            "contact_email": _email_key(link.get("email")),
                            "contact_type": POLICYHOLDER,
                            "first_name": link.get("firstName"),
                            "last_name": link.get("lastName"),
                            "phone_number": link.get("phone"),
                            "phone_country_code": link.get("phoneCountryCode"),
                            "is_primary_contact": False,
                            "master_file_name": task.get("mfn"),
                            "task_assignment_id": assignment_id,
                        },
                    )
                ],
            )
    return rows


# --- video collaboration ---------------------------------------------------------------------


def select_video_item(items: Iterable[Mapping[str, Any]], project_id: str, video_collaboration_id: str | None) -> Mapping[str, Any] | None:
    """The item whose `videoCollaborationId` is the event's id when it has one, else the first
    item whose `claimId` is the project."""
    items = list(items)
    if video_collaboration_id is not None:
        return next((i for i in items if as_str(i.get("videoCollaborationId")) == video_collaboration_id), None)
    return next((i for i in items if as_str(i.get("claimId")) == project_id), None)


def video_collab_rows(item: Mapping[str, Any], project_id: str | None = None) -> Rows:
    first, last = as_str(item.get("claimRepFirstName")), as_str(item.get("claimRepLastName"))
    full = as_str(item.get("claimRepFullName")) or (" ".join(p for p in (first, last) if p) or None)
    row = conform(
        VIDEO_COLLAB,
        {
            "video_collaboration_id": item.get("videoCollaborationId"),
            "project_id": as_str(item.get("claimId")) or project_id,
            "mfn": item.get("mfn"),
            "claim_number": item.get("claimNumber"),
            "policy_number": item.get("policyNumber"),
            "email_user_name": item.get("emailUserName"),
            "claim_rep_first_name": first,
            "claim_rep_last_name": last,
            "claim_rep_full_name": full,
            "number_of_videos": item.get("numberOfVideos"),
            "number_of_photos": item.get("numberOfPhotos"),
            "number_of_viewers": item.get("numberOfViewers"),
            "session_count": item.get("sessionCount"),
            "total_time_seconds": item.get("totalTimeSeconds"),
            "total_time": item.get("totalTime"),
            "created_date": item.get("createdDate"),
            "live_call_first_session": item.get("liveCallFirstSession"),
            "live_call_last_session": item.get("liveCallLastSession"),
            "company_id": item.get("companyId"),
            "company_name": item.get("companyName"),
            "guid": item.get("guid"),
        },
    )
    return {VIDEO_COLLAB.name: _table(VIDEO_COLLAB, [row])}


# --- the audit log ---------------------------------------------------------------------------


def event_row(event: ClaimXEvent, trace_id: str | None = None) -> Rows:
    """The `claimx_events` row every parsed event produces; `trace_id`: the event's, when the
    caller has it already (an event without `event_id` derives it with a hash on every read).

    Built as `conform` would build it, without its per-column conversions (one of these rows per
    event): a parsed event's ids and text are valid strings already and its time is UTC
    (`test_event_rows_are_conformed` holds the two equal)."""
    ingested_at = event.ingested_at
    return {
        EVENTS.name: [
            {
                "trace_id": event.trace_id if trace_id is None else trace_id,
                "event_type": event.event_type,
                "project_id": event.project_id,
                "media_id": event.media_id,
                "task_assignment_id": event.task_assignment_id,
                "video_collaboration_id": event.video_collaboration_id,
                "master_file_name": event.master_file_name,
                "ingested_at": ingested_at.isoformat(),
                "event_date": ingested_at.date().isoformat(),
            }
        ]
    }


def merge_rows(*parts: Rows) -> Rows:
    """Several transforms' rows as one table -> rows mapping (order kept, empty tables dropped)."""
    merged: Rows = {}
    for part in parts:
        for table, rows in part.items():
            if rows:
                merged.setdefault(table, []).extend(rows)
    return merged
