"""The eight Delta tables of the domain contract: names, columns, Arrow types, merge keys.

This module is the one place the table contract lives; transforms produce rows with these
column names and the writer enforces these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

STRING = pa.string()
BOOL = pa.bool_()
INT64 = pa.int64()
FLOAT64 = pa.float64()
TIMESTAMP = pa.timestamp("us", tz="UTC")
DATE = pa.date32()

# Columns every entity table carries beside its own.
METADATA_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("trace_id", STRING),
    ("event_time", TIMESTAMP),
    ("created_at", TIMESTAMP),
    ("updated_at", TIMESTAMP),
)
METADATA_COLUMN_NAMES = frozenset(name for name, _ in METADATA_COLUMNS)


@dataclass(frozen=True)
class TableSpec:
    name: str
    merge_keys: tuple[str, ...]
    columns: tuple[tuple[str, pa.DataType], ...]  # entity columns, merge keys first
    # Every row of a key carries the same `event_time` (an event log: the key names one event).
    # The writer then matches on (key, event_time), so a MERGE prunes files by event time.
    fixed_event_time: bool = False
    # Every row of a key is the same row (a pure function of the key: an event's own fields). The
    # merge rule then reduces to insert-if-absent: no clock table, one commit per flush.
    immutable: bool = False
    schema: pa.Schema = field(init=False, repr=False)

    def __post_init__(self) -> None:
        own = [name for name, _ in self.columns]
        metadata = [(n, t) for n, t in METADATA_COLUMNS if n not in own]
        fields = [pa.field(n, t, nullable=n not in self.merge_keys) for n, t in self.columns + tuple(metadata)]
        object.__setattr__(self, "schema", pa.schema(fields))

    @property
    def column_names(self) -> list[str]:
        return self.schema.names

    @property
    def value_columns(self) -> list[str]:
        """Columns merged by the newest-non-null rule (all but keys and metadata)."""
        return [n for n in self.schema.names if n not in self.merge_keys and n not in METADATA_COLUMN_NAMES]


def _columns(spec: str, types: dict[str, pa.DataType] | None = None) -> tuple[tuple[str, pa.DataType], ...]:
    """Whitespace-separated column names, STRING unless `types` says otherwise."""
    types = types or {}
    return tuple((name, types.get(name, STRING)) for name in spec.split())


def _ts(*names: str) -> dict[str, pa.DataType]:
    return dict.fromkeys(names, TIMESTAMP)


PROJECTS = TableSpec(
    "claimx_projects",
    ("project_id",),
    _columns(
        """project_id project_number master_file_name secondary_number status created_date
        date_of_loss type_of_loss cause_of_loss loss_description year_built square_footage
        date_received date_contacted planned_inspection_date date_inspected appointment_date
        custom_attribute1 custom_attribute2 custom_attribute3 custom_external_unique_id
        customer_first_name customer_last_name custom_business_name business_line_type
        street1 street2 city state_province zip_postcode county country primary_email
        primary_phone primary_phone_country_code company_name policyholder_invited_at
        policyholder_joined_at xa_autolink_fail xa_autolink_fail_at""",
        {
            **_ts(
                "created_date", "date_of_loss", "date_received", "date_contacted",
                "planned_inspection_date", "date_inspected", "appointment_date",
                "policyholder_invited_at", "policyholder_joined_at", "xa_autolink_fail_at",
            ),
            "year_built": INT64,
            "square_footage": FLOAT64,
            "xa_autolink_fail": BOOL,
        },
    ),
)

CONTACTS = TableSpec(
    "claimx_contacts",
    ("project_id", "contact_email", "contact_type"),
    _columns(
        """project_id contact_email contact_type first_name last_name phone_number
        phone_country_code is_primary_contact master_file_name task_assignment_id""",
        {"is_primary_contact": BOOL},
    ),
)

MEDIA = TableSpec(
    "claimx_media",
    ("media_id",),
    _columns(
        """media_id project_id task_assignment_id file_type file_name media_description
        media_comment latitude longitude gps_source taken_date full_download_link expires_at""",
        {"latitude": FLOAT64, "longitude": FLOAT64, **_ts("taken_date", "expires_at")},
    ),
)

TASKS = TableSpec(
    "claimx_tasks",
    ("assignment_id",),
    _columns(
        """assignment_id task_id task_name form_id project_id assignee_id assignor_id
        assignor_email date_assigned date_completed cancelled_date status stp_enabled mfn""",
        {"stp_enabled": BOOL, **_ts("date_assigned", "date_completed", "cancelled_date")},
    ),
)

TASK_TEMPLATES = TableSpec(
    "claimx_task_templates",
    ("task_id",),
    _columns(
        """task_id comp_id name description form_id form_name enabled is_default
        is_manual_delivery is_external_link_delivery provide_portal_access
        notify_assigned_send_recipient notify_assigned_send_recipient_sms
        notify_assigned_subject notify_task_completed notify_completed_subject
        allow_resubmit auto_generate_pdf modified_by modified_by_id modified_date""",
        {
            **dict.fromkeys(
                [
                    "enabled", "is_default", "is_manual_delivery", "is_external_link_delivery",
                    "provide_portal_access", "notify_assigned_send_recipient",
                    "notify_assigned_send_recipient_sms", "notify_task_completed",
                    "allow_resubmit", "auto_generate_pdf",
                ],
                BOOL,
            ),
            "modified_date": TIMESTAMP,
        },
    ),
)

EXTERNAL_LINKS = TableSpec(
    "claimx_external_links",
    ("link_id",),
    _columns(
        """link_id assignment_id project_id link_code url notification_access_method
        country_id state_id email first_name last_name phone"""
    ),
)

VIDEO_COLLAB = TableSpec(
    "claimx_video_collab",
    ("video_collaboration_id",),
    _columns(
        """video_collaboration_id project_id mfn claim_number policy_number email_user_name
        claim_rep_first_name claim_rep_last_name claim_rep_full_name number_of_videos
        number_of_photos number_of_viewers session_count total_time_seconds total_time
        created_date live_call_first_session live_call_last_session company_id company_name guid""",
        {
            **dict.fromkeys(["number_of_videos", "number_of_photos", "number_of_viewers", "session_count"], INT64),
            "total_time_seconds": FLOAT64,
            **_ts("created_date", "live_call_first_session", "live_call_last_session"),
        },
    ),
)

EVENTS = TableSpec(
    "claimx_events",
    ("trace_id",),
    _columns(
        """trace_id event_type project_id media_id task_assignment_id video_collaboration_id
        master_file_name ingested_at event_date""",
        {"ingested_at": TIMESTAMP, "event_date": DATE},
    ),
    # trace_id is derived from (or given with) one event, whose event_time is its ingested_at,
    # and the row holds that event's own fields only (transforms.event_row): never updated
    fixed_event_time=True,
    immutable=True,
)

TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (PROJECTS, CONTACTS, MEDIA, TASKS, TASK_TEMPLATES, EXTERNAL_LINKS, VIDEO_COLLAB, EVENTS)
}
