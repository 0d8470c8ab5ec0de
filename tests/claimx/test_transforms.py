"""API JSON -> table rows: names, columns and value types exactly as the contract says."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, date, datetime, timedelta, timezone

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kafka_pipeline.claimx import transforms
from kafka_pipeline.claimx.entity_rows import utc_iso
from kafka_pipeline.claimx.events import parse_event, parse_timestamp
from kafka_pipeline.claimx.schemas import TABLES
from kafka_pipeline.simulator import data
from kafka_pipeline.simulator.events import generate_events
from kafka_pipeline.simulator.ids import project_children, project_ids

EXPORT = {
    "project": {
        "projectId": 5000001,
        "projectNumber": "HM123",
        "mfn": "TX26-100200",
        "secondaryNumber": None,
        "createdDate": "2026-01-05T09:03:07-05:00",
        "status": "Open",
        "dateOfLoss": "2026-01-01T00:00:00.123Z",
        "yearBuilt": 1990,
        "squareFootage": 2100,
        "dateReceived": "2026-01-05T14:10:00",
        "customerInformation": {
            "firstName": "Ada",
            "lastName": "Lovelace",
            "customBusinessName": None,
            "businessLineType": "Personal",
            "emails": [{"emailAddress": "first@example.com", "primary": False}, {"emailAddress": "Ada@Example.com", "primary": True}],
            "phones": [{"phoneNumber": "5551234567", "phoneCountryCode": "1"}, {"phoneNumber": "5550000000", "phoneCountryCode": "44"}],
        },
        "address": {"street1": "1 Main St", "street2": None, "city": "Houston", "stateProvince": "TX", "zipPostcode": "77001",
                    "county": "Harris", "country": "US"},
    },
    "teamMembers": [
        {"userName": "rep.one@carrier.example.com", "primaryContact": True, "mfn": "TX26-100200"},
        {"userName": "rep.two@carrier.example.com", "primaryContact": False, "mfn": "TX26-100200"},
        {"userName": None, "primaryContact": False},
    ],
    "companyName": "Harborline Mutual",
}


def python_type_ok(value: object, arrow_type: pa.DataType) -> bool:
    if value is None:
        return True
    if arrow_type == pa.string():
        return isinstance(value, str)
    if arrow_type == pa.bool_():
        return isinstance(value, bool)
    if arrow_type == pa.int64():
        return isinstance(value, int) and not isinstance(value, bool)
    if arrow_type == pa.float64():
        return isinstance(value, float)
    if pa.types.is_timestamp(arrow_type):
        return isinstance(value, str) and datetime.fromisoformat(value).utcoffset().total_seconds() == 0
    if arrow_type == pa.date32():
        return isinstance(value, str) and date.fromisoformat(value) is not None
    return False


def assert_conforms(rows: transforms.Rows) -> None:
    for table, table_rows in rows.items():
        spec = TABLES[table]
        types = dict(zip(spec.schema.names, spec.schema.types, strict=True))
        for row in table_rows:
            assert set(row) <= set(types), f"{table}: unknown columns {set(row) - set(types)}"
            assert all(row.get(key) is not None for key in spec.merge_keys), f"{table}: merge key missing in {row}"
            for column, value in row.items():
                assert python_type_ok(value, types[column]), f"{table}.{column}: {value!r} is not {types[column]}"
            json.dumps(row)  # JSON-ready


def test_project_row_columns_and_values() -> None:
    rows = transforms.project_rows({"data": EXPORT})
    assert_conforms(rows)
    (project,) = rows["claimx_projects"]
    assert project["project_id"] == "5000001" and project["master_file_name"] == "TX26-100200"
    assert project["created_date"] == "2026-01-05T14:03:07+00:00"  # offset converted to UTC
    assert project["date_of_loss"] == "2026-01-01T00:00:00.123000+00:00"
    assert project["date_received"] == "2026-01-05T14:10:00+00:00"  # naive means UTC
    assert project["primary_email"] == "Ada@Example.com"  # the one marked primary, not the first
    assert (project["primary_phone"], project["primary_phone_country_code"]) == ("5551234567", "1")  # the first phone
    assert project["company_name"] == "Harborline Mutual" and project["city"] == "Houston" and project["state_province"] == "TX"
    assert project["year_built"] == 1990 and project["square_footage"] == 2100.0
    assert "policyholder_invited_at" not in project and "xa_autolink_fail" not in project  # event-only columns stay out


def test_project_without_data_wrapper_is_the_same() -> None:
    assert transforms.project_rows(EXPORT) == transforms.project_rows({"data": EXPORT})


def test_primary_email_falls_back_to_the_first() -> None:
    assert transforms.primary_email([{"emailAddress": "a@x.com", "primary": False}, {"emailAddress": "b@x.com"}]) == "a@x.com"
    assert transforms.primary_email([]) is None and transforms.primary_email(None) is None


def test_contacts_from_the_export() -> None:
    contacts = transforms.project_rows(EXPORT)["claimx_contacts"]
    holder, rep_one, rep_two = contacts  # the team member without a userName has no contact row
    assert holder == {
        "project_id": "5000001", "contact_email": "ada@example.com", "contact_type": "POLICYHOLDER", "first_name": "Ada",
        "last_name": "Lovelace", "phone_number": "5551234567", "phone_country_code": "1", "is_primary_contact": True,
        "master_file_name": "TX26-100200",
    }
    assert (rep_one["contact_type"], rep_one["contact_email"], rep_one["is_primary_contact"]) == ("CLAIM_REP", "rep.one@carrier.example.com", True)
    assert rep_two["is_primary_contact"] is False


def test_no_policyholder_contact_without_an_email() -> None:
    export = json.loads(json.dumps(EXPORT))
    export["project"]["customerInformation"]["emails"] = []
    contacts = transforms.project_rows(export)["claimx_contacts"]
    assert [c["contact_type"] for c in contacts] == ["CLAIM_REP", "CLAIM_REP"]
    assert transforms.project_rows(export)["claimx_projects"][0]["primary_email"] is None


def test_media_rows() -> None:
    item = {"mediaID": 5000001003, "taskAssignmentId": 5000001001, "mediaType": "jpg", "mediaName": "IMG_1.jpg",
            "mediaDescription": "Roof", "mediaComment": None, "latitude": 29, "longitude": "-95.5", "gpsSource": "EXIF",
            "takenDate": "2026-01-06T08:00:00-06:00", "fullDownloadLink": "https://x/y", "expiresAt": "2026-07-01T00:00:00Z"}
    rows = transforms.media_rows([item], "5000001")
    assert_conforms(rows)
    assert rows["claimx_media"][0] == {
        "media_id": "5000001003", "project_id": "5000001", "task_assignment_id": "5000001001", "file_type": "jpg",
        "file_name": "IMG_1.jpg", "media_description": "Roof", "media_comment": None, "latitude": 29.0, "longitude": -95.5,
        "gps_source": "EXIF", "taken_date": "2026-01-06T14:00:00+00:00", "full_download_link": "https://x/y",
        "expires_at": "2026-07-01T00:00:00+00:00",
    }


def test_task_rows_with_template_link_and_link_contact() -> None:
    body = data.task_assignment(5000001001)
    body["externalLinkData"] = {"linkId": 77, "linkCode": "abc", "url": "https://l", "notificationAccessMethod": "EMAIL",
                                "countryId": 1, "stateId": 44, "email": "holder@example.com", "firstName": "Hol",
                                "lastName": "Der", "phone": "5557654321", "phoneCountryCode": "1"}
    body["customTask"]["default"] = True
    body["customTask"]["allowReSubmit"] = False
    rows = transforms.task_rows(body)
    assert_conforms(rows)
    (task,) = rows["claimx_tasks"]
    assert task["assignment_id"] == "5000001001" and task["project_id"] == "5000001"
    assert task["assignor_email"] == body["assignor"] and task["task_id"] == str(body["taskId"])
    assert isinstance(task["stp_enabled"], bool)
    (template,) = rows["claimx_task_templates"]
    assert template["task_id"] == str(body["customTask"]["taskId"])
    assert template["is_default"] is True and template["allow_resubmit"] is False
    (link,) = rows["claimx_external_links"]
    assert link == {"link_id": "77", "assignment_id": "5000001001", "project_id": "5000001", "link_code": "abc",
                    "url": "https://l", "notification_access_method": "EMAIL", "country_id": "1", "state_id": "44",
                    "email": "holder@example.com", "first_name": "Hol", "last_name": "Der", "phone": "5557654321"}
    (contact,) = rows["claimx_contacts"]
    assert contact["contact_type"] == "POLICYHOLDER" and contact["is_primary_contact"] is False
    assert contact["task_assignment_id"] == "5000001001" and contact["contact_email"] == "holder@example.com"


def test_task_without_link_or_template() -> None:
    rows = transforms.task_rows({"assignmentId": 1, "taskId": 2}, "9")
    assert set(rows) == {"claimx_tasks"} and rows["claimx_tasks"][0]["project_id"] == "9"
    link_without_email = transforms.task_rows({"assignmentId": 1, "externalLinkData": {"linkId": 5, "email": None}})
    assert "claimx_contacts" not in link_without_email and link_without_email["claimx_external_links"][0]["link_id"] == "5"


def test_video_selection_and_full_name() -> None:
    items = [
        {"videoCollaborationId": 11, "claimId": 1, "claimRepFirstName": "Jo", "claimRepLastName": "Ng", "claimRepFullName": None},
        {"videoCollaborationId": 12, "claimId": 1, "claimRepFullName": "Given Name"},
    ]
    assert transforms.select_video_item(items, "1", "12") is items[1]
    assert transforms.select_video_item(items, "1", None) is items[0]
    assert transforms.select_video_item(items, "1", "99") is None
    assert transforms.select_video_item(items, "2", None) is None
    row = transforms.video_collab_rows(items[0])["claimx_video_collab"][0]
    assert row["claim_rep_full_name"] == "Jo Ng" and row["project_id"] == "1" and row["video_collaboration_id"] == "11"
    assert transforms.video_collab_rows(items[1])["claimx_video_collab"][0]["claim_rep_full_name"] == "Given Name"


def test_minimal_update_rows_carry_only_key_and_their_columns() -> None:
    base = {"project_id": 5, "ingested_at": "2026-02-01T10:00:00-02:00"}
    mfn = parse_event(json.dumps({**base, "event_type": "PROJECT_MFN_ADDED", "master_file_name": "TX26-9"}).encode())
    invited = parse_event(json.dumps({**base, "event_type": "POLICYHOLDER_INVITED"}).encode())
    joined = parse_event(json.dumps({**base, "event_type": "POLICYHOLDER_JOINED"}).encode())
    xa = parse_event(json.dumps({**base, "event_type": "PROJECT_AUTO_XA_LINKING_UNSUCCESSFUL"}).encode())
    assert transforms.mfn_row(mfn) == {"claimx_projects": [{"project_id": "5", "master_file_name": "TX26-9"}]}
    assert transforms.policyholder_row(invited) == {"claimx_projects": [{"project_id": "5", "policyholder_invited_at": "2026-02-01T12:00:00+00:00"}]}
    assert transforms.policyholder_row(joined) == {"claimx_projects": [{"project_id": "5", "policyholder_joined_at": "2026-02-01T12:00:00+00:00"}]}
    assert transforms.xa_row(xa) == {
        "claimx_projects": [{"project_id": "5", "xa_autolink_fail": True, "xa_autolink_fail_at": "2026-02-01T12:00:00+00:00"}]
    }


def test_event_row() -> None:
    event = parse_event(b'{"eventType": "PROJECT_FILE_ADDED", "projectId": 5, "mediaId": 5001, "ingestedAt": "2026-02-01T23:30:00-02:00"}')
    rows = transforms.event_row(event)
    assert_conforms(rows)
    assert rows["claimx_events"] == [{
        "trace_id": event.trace_id, "event_type": "PROJECT_FILE_ADDED", "project_id": "5", "media_id": "5001",
        "task_assignment_id": None, "video_collaboration_id": None, "master_file_name": None,
        "ingested_at": "2026-02-02T01:30:00+00:00", "event_date": "2026-02-02",  # the UTC date
    }]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-01", "2026-01-01T00:00:00+00:00"), ("garbage", None), ("", None), (None, None),
        (datetime(2026, 1, 1, 12), "2026-01-01T12:00:00+00:00"),  # an event's time: naive is UTC
        (datetime(2026, 1, 1, 12, 0, 0, 250000, tzinfo=timezone(timedelta(hours=-2))), "2026-01-01T14:00:00.250000+00:00"),
        (datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=2))), None),  # before year 1 in UTC
    ],
)
def test_timestamp_conversion(value: object, expected: str | None) -> None:
    assert transforms.as_timestamp(value) == expected


def test_conversions() -> None:
    assert transforms.as_str(5000001.0) == "5000001" and transforms.as_str(7) == "7"
    assert transforms.as_bool("true") is True and transforms.as_bool(0) is False and transforms.as_bool("maybe") is None
    assert transforms.as_int("12") == 12 and transforms.as_int(3.0) == 3 and transforms.as_int("x") is None
    assert transforms.as_float("1.5") == 1.5 and transforms.as_float(float("nan")) is None


def test_unknown_column_is_a_bug() -> None:
    with pytest.raises(KeyError):
        transforms.conform(TABLES["claimx_media"], {"media_id": "1", "no_such_column": 1})


def test_every_simulated_body_conforms_to_the_schemas() -> None:
    for project_id in project_ids(40):
        children = project_children(project_id)
        assert_conforms(transforms.project_rows({"data": data.project_export(project_id)}))
        assert_conforms(transforms.media_rows(data.project_media(project_id), str(project_id)))
        for assignment_id in children.assignment_ids:
            assert_conforms(transforms.task_rows(data.task_assignment(assignment_id)))
        for item in data.video_collaborations(project_id):
            assert_conforms(transforms.video_collab_rows(item))


def _nulled(table: str, column: str) -> float:
    return transforms.VALUES_NULLED[(table, column)]


def test_out_of_range_api_values_become_null_counted_and_the_writer_accepts_the_rows() -> None:
    """`yearBuilt: "1e30"`, year-1 and year-9999 times with offsets, integers past int64, floats
    past float range, lone surrogates: each becomes null and is counted, and the rows still pass
    the writer's strict conversion (they used to dead-letter the whole message there)."""
    from kafka_pipeline.claimx.entity_rows import EntityRowsMessage
    from tests.fixtures.writer import rows_to_arrow

    hostile = json.loads(json.dumps(EXPORT))
    project = hostile["project"]
    project.update(
        yearBuilt="1e30",
        squareFootage=10**400,  # past the float range
        dateOfLoss="0001-01-01T00:00:00+01:00",
        createdDate="9999-12-31T23:59:59-05:00",
        lossDescription="\ud800 lone surrogate",
    )
    before = {c: _nulled("claimx_projects", c) for c in ("year_built", "square_footage", "date_of_loss", "created_date", "loss_description")}
    rows = transforms.project_rows(json.loads(json.dumps(hostile)), "5000001")
    row = rows["claimx_projects"][0]
    assert row["project_id"] == "5000001" and row["project_number"] == "HM123"  # the rest is kept
    for column, old in before.items():
        assert row[column] is None, column
        assert _nulled("claimx_projects", column) == old + 1, column
    assert_conforms(rows)
    message = EntityRowsMessage(trace_id="t", event_type="PROJECT_CREATED", project_id="5000001",
                                event_time=datetime.fromisoformat("2026-01-05T00:00:00+00:00"), rows=rows)
    tables = rows_to_arrow(EntityRowsMessage.from_bytes(message.to_bytes()))
    assert tables["claimx_projects"].num_rows == 1 and tables["claimx_contacts"].num_rows == 3


def test_values_that_fit_are_not_counted() -> None:
    before = _nulled("claimx_projects", "year_built")
    assert transforms.project_rows(EXPORT)["claimx_projects"][0]["year_built"] == 1990
    project = {**EXPORT["project"], "yearBuilt": None, "dateOfLoss": ""}
    assert transforms.project_rows({**EXPORT, "project": project})["claimx_projects"][0]["year_built"] is None
    assert _nulled("claimx_projects", "year_built") == before  # absent is not a misfit


def test_range_limits_of_the_conversions() -> None:
    assert transforms.as_int(2**63 - 1) == 2**63 - 1 and transforms.as_int(2**63) is None and transforms.as_int(-(2**63) - 1) is None
    assert transforms.as_int("9.3e18") is None and transforms.as_float(10**400) is None
    assert transforms.as_timestamp("0001-01-01T00:00:00-01:00") == "0001-01-01T01:00:00+00:00"  # inside the calendar: kept
    assert transforms.as_str("caf\u00e9") == "caf\u00e9" and transforms.as_str("\udfff") is None


def test_event_rows_are_conformed() -> None:
    """`event_row` skips `conform`'s conversions: for every kind of event (snake and camel case,
    numeric ids, offsets, naive times, with and without event_id, text beyond ASCII) its row is
    the one `conform` makes, also when handed the trace id the caller derived."""
    lines = [line.encode() for line in generate_events(300, 20, seed="conform")]
    lines.append('{"event_type": "PROJECT_MFN_ADDED", "project_id": 7, "master_file_name": "Caf\u00e9 \u2603", "ingested_at": "2026-03-01T01:00:00.5+05:30"}'.encode())
    for event in map(parse_event, lines):
        expected = transforms.conform(TABLES["claimx_events"], {
            "trace_id": event.trace_id, "event_type": event.event_type, "project_id": event.project_id, "media_id": event.media_id,
            "task_assignment_id": event.task_assignment_id, "video_collaboration_id": event.video_collaboration_id,
            "master_file_name": event.master_file_name, "ingested_at": event.ingested_at, "event_date": event.event_date,
        })
        assert transforms.event_row(event) == {"claimx_events": [expected]}
        assert transforms.event_row(event, event.trace_id) == {"claimx_events": [expected]}  # the worker's: the id it derived once


_ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["", " ", "\ud800", "caf\u00e9", "2026-01-05T09:03:07Z", "1e30", "yes"]),
    st.datetimes(timezones=st.none() | st.just(UTC)), st.dates(),
)


@given(table=st.sampled_from(sorted(TABLES)), data_=st.data())
@settings(max_examples=300, deadline=None)
def test_conform_is_each_columns_converter(table: str, data_: st.DataObject) -> None:
    """`conform` keeps None and ASCII text without a call: every row is still the column
    converters' output, and the same values are counted as nulled."""
    spec = TABLES[table]
    columns = data_.draw(st.lists(st.sampled_from(spec.schema.names), unique=True, max_size=len(spec.schema.names)))
    values = {column: data_.draw(_ANY_VALUE) for column in columns}
    converters = {name: transforms._CONVERTERS[kind] for name, kind in zip(spec.schema.names, spec.schema.types, strict=True)}  # noqa: SLF001
    expected = {column: converters[column](value) for column, value in values.items()}
    expected_nulled = Counter(column for column, value in values.items() if expected[column] is None and value is not None and value != "")
    before = Counter({column: _nulled(table, column) for column in columns})
    assert transforms.conform(spec, values) == expected
    assert Counter({column: _nulled(table, column) for column in columns}) - before == expected_nulled


@given(moment=st.datetimes(timezones=st.just(UTC)), text=st.text(alphabet="0123456789-T:.Z+ ", max_size=30))
@settings(max_examples=300, deadline=None)
def test_api_utc_times_take_the_short_path_to_the_same_text(moment: datetime, text: str) -> None:
    """`as_timestamp` reads text ending in "Z" without the general path: same answer."""
    def general(value: str) -> str | None:
        try:
            return utc_iso(parse_timestamp(value, "t"))
        except (ValueError, OverflowError):
            return None

    for value in (moment.replace(tzinfo=None).isoformat() + "Z", moment.strftime("%Y-%m-%dT%H:%M:%SZ"), text + "Z", f" {text}Z"):
        assert transforms.as_timestamp(value) == general(value), value
