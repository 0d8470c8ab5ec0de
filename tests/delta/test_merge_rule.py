"""The merge rule on real Delta tables: newest non-null value per column wins, whatever the order.

Rows go in the way the writer gets them (entity-rows messages -> typed Arrow -> DeltaTableWriter),
one partition, increasing offsets, one `write` per batch.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kafka_pipeline.claimx.entity_rows import EntityRowsMessage
from kafka_pipeline.claimx.schemas import TABLES
from kafka_pipeline.delta import DeltaTableWriter, merge_expressions, merge_rule
from kafka_pipeline.workers.writer.entity_writer import read_table
from kafka_pipeline.workers.writer.row_conversion import BatchBuilder, parse_timestamp
from tests.fixtures.writer import read_rows

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
APP = "claimx-writer:claimx.entity_rows:0"


@dataclass(frozen=True)
class Row:
    table: str
    values: dict[str, Any]
    hour: int
    trace: str

    @property
    def event_time(self) -> datetime:
        return T0 + timedelta(hours=self.hour)


class Tables:
    """Feeds batches of rows through one DeltaTableWriter per table, offsets counting up."""

    def __init__(self, root: str, app: str = APP) -> None:
        self.root = root
        self.app = app
        self.offset = 0
        self.writers = {name: DeltaTableWriter(spec, root) for name, spec in TABLES.items()}

    def write(self, batch: list[Row]) -> dict[str, Any]:
        builder = BatchBuilder()
        for row in batch:
            message = EntityRowsMessage(
                trace_id=row.trace, event_type="TEST", project_id="p", event_time=row.event_time, rows={row.table: [row.values]}
            )
            builder.add(message, app=self.app, offset=self.offset)
            self.offset += 1
        progress = {self.app: self.offset - 1}
        return {name: self.writers[name].write(rows, progress) for name, rows in builder.tables().items()}

    def rows(self, table: str) -> list[dict[str, Any]]:
        return read_rows(self.root, table)


def content(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without the wall-clock columns (updated_at is the write time, created_at the first one)."""
    return [{k: v for k, v in row.items() if k not in ("created_at", "updated_at")} for row in rows]


@pytest.fixture
def tables(tmp_path) -> Tables:
    return Tables(str(tmp_path / "delta"))


def project(hour: int, trace: str, **values: Any) -> Row:
    return Row("claimx_projects", {"project_id": "P1", **values}, hour, trace)


# -- the rule, case by case -------------------------------------------------------------------


def test_late_row_wins_a_column_a_newer_null_row_left_alone(tables: Tables) -> None:
    """t=1 {status: open}, t=3 {status: null}, then late t=2 {status: closed}: closed is the newest
    non-null status. A row-level `source.event_time >= target.event_time` test would keep open."""
    tables.write([project(1, "e1", status="open", city="Austin")])
    tables.write([project(3, "e3", policyholder_invited_at="2024-03-01T15:00:00Z")])
    tables.write([project(2, "e2", status="closed")])
    [row] = tables.rows("claimx_projects")
    assert row["status"] == "closed"
    assert row["city"] == "Austin"
    assert row["policyholder_invited_at"] == datetime(2024, 3, 1, 15, tzinfo=UTC)
    assert row["event_time"] == T0 + timedelta(hours=3)
    assert row["trace_id"] == "e3"  # the newest event, not the late one that changed status


def test_null_never_erases_and_an_older_row_only_fills_nulls(tables: Tables) -> None:
    tables.write([project(5, "new", status="open", city=None, year_built=None)])
    tables.write([project(1, "old", status="stale", city="Boston", year_built=1999)])
    tables.write([project(6, "newest", status=None, city=None, square_footage=120.5)])
    [row] = tables.rows("claimx_projects")
    assert (row["status"], row["city"], row["year_built"], row["square_footage"]) == ("open", "Boston", 1999, 120.5)
    assert row["trace_id"] == "newest" and row["event_time"] == T0 + timedelta(hours=6)


def test_minimal_update_rows_keep_the_full_row(tables: Tables) -> None:
    """The mfn / policyholder / XA rows carry one or two columns; the rest of the project stays."""
    tables.write([project(1, "fetch", status="open", city="Austin", master_file_name="MFN-1", xa_autolink_fail=False)])
    tables.write([
        project(2, "mfn", master_file_name="MFN-2"),
        project(3, "xa", xa_autolink_fail=True, xa_autolink_fail_at="2024-03-01T15:00:00"),
    ])
    [row] = tables.rows("claimx_projects")
    assert (row["status"], row["city"], row["master_file_name"], row["xa_autolink_fail"]) == ("open", "Austin", "MFN-2", True)
    assert row["xa_autolink_fail_at"] == datetime(2024, 3, 1, 15, tzinfo=UTC)  # naive ISO = UTC


def test_ties_go_to_the_later_arrival_within_and_across_batches(tables: Tables) -> None:
    tables.write([project(1, "a", status="first"), project(1, "b", status="second")])
    [row] = tables.rows("claimx_projects")
    assert (row["status"], row["trace_id"]) == ("second", "b")  # same batch: later offset wins
    tables.write([project(1, "c", status="third")])
    [row] = tables.rows("claimx_projects")
    assert (row["status"], row["trace_id"]) == ("third", "c")  # later batch wins the tie


def test_duplicates_and_same_batch_repeats_change_nothing_but_updated_at(tables: Tables) -> None:
    rows = [project(1, "a", status="open"), project(2, "b", city="Austin"), project(2, "b", city="Austin")]
    tables.write(rows + rows)
    first = tables.rows("claimx_projects")
    tables.write(rows)
    tables.write(list(reversed(rows)))
    again = tables.rows("claimx_projects")
    assert content(again) == content(first)
    assert again[0]["created_at"] == first[0]["created_at"]
    assert again[0]["updated_at"] > first[0]["updated_at"]
    assert len(again) == 1


def test_older_rows_that_change_nothing_are_not_written(tables: Tables) -> None:
    tables.write([project(5, "new", status="open", city="Austin")])
    [before] = tables.rows("claimx_projects")
    results = tables.write([project(1, "old", status="stale", city="Boston")])
    [after] = tables.rows("claimx_projects")
    assert results["claimx_projects"].keys_changed == 0 and results["claimx_projects"].commits == 0
    assert after == before  # not even updated_at moved


def test_created_at_is_kept_and_updated_at_is_the_write_time(tables: Tables) -> None:
    before = datetime.now(UTC)
    tables.write([project(1, "a", status="open")])
    [row] = tables.rows("claimx_projects")
    assert before <= row["created_at"] == row["updated_at"] <= datetime.now(UTC)
    tables.write([project(2, "b", status="closed")])
    [later] = tables.rows("claimx_projects")
    assert later["created_at"] == row["created_at"] and later["updated_at"] > row["updated_at"]


def test_composite_keys_and_ids_as_numbers(tables: Tables) -> None:
    def contact(hour: int, trace: str, **values: Any) -> Row:
        return Row("claimx_contacts", {"project_id": 77, "contact_email": "a@x.com", **values}, hour, trace)

    tables.write([
        contact(1, "a", contact_type="POLICYHOLDER", first_name="Ann", is_primary_contact=True),
        contact(1, "a", contact_type="CLAIM_REP", first_name="Bob"),
        contact(2, "b", contact_type="POLICYHOLDER", last_name="Lee", task_assignment_id=9001),
    ])
    rows = tables.rows("claimx_contacts")
    assert [(r["project_id"], r["contact_type"], r["first_name"], r["last_name"]) for r in rows] == [
        ("77", "CLAIM_REP", "Bob", None),
        ("77", "POLICYHOLDER", "Ann", "Lee"),
    ]
    assert rows[1]["task_assignment_id"] == "9001" and rows[1]["is_primary_contact"] is True


def test_events_log_is_keyed_by_trace_id(tables: Tables) -> None:
    event = {"event_type": "PROJECT_CREATED", "project_id": "P1", "ingested_at": "2024-03-01T12:00:00Z", "event_date": "2024-03-01"}
    tables.write([Row("claimx_events", event, 0, "trace-1"), Row("claimx_events", event, 0, "trace-1")])
    tables.write([Row("claimx_events", {**event, "project_id": "P2"}, 0, "trace-2")])
    rows = tables.rows("claimx_events")
    assert [(r["trace_id"], r["project_id"], r["event_date"]) for r in rows] == [
        ("trace-1", "P1", datetime(2024, 3, 1).date()),
        ("trace-2", "P2", datetime(2024, 3, 1).date()),
    ]


def test_merge_expressions_never_let_a_null_erase() -> None:
    expressions = merge_expressions(TABLES["claimx_projects"])
    assert expressions.predicate == "t.project_id = s.project_id"
    assert expressions.updates["status"] == "coalesce(s.status, t.status)"
    assert "created_at" not in expressions.updates and expressions.updates["updated_at"] == "s.updated_at"
    assert set(expressions.inserts) == set(TABLES["claimx_projects"].schema.names)


def test_combine_folds_a_batch_per_key() -> None:
    spec = TABLES["claimx_media"]
    schema = merge_rule.input_schema(spec)
    data = {name: [None] * 4 for name in schema.names}
    data.update(
        media_id=["m1", "m1", "m2", "m1"],
        file_name=["a.jpg", None, "c.jpg", "d.jpg"],
        latitude=[1.0, 2.0, None, None],
        trace_id=["t1", "t2", "t3", "t4"],
        event_time=[T0 + timedelta(hours=h) for h in (1, 3, 1, 2)],
        **{merge_rule.SEQ: [0, 1, 2, 3], merge_rule.APP: [APP] * 4, merge_rule.OFFSET: [0, 1, 2, 3]},
    )
    combined = merge_rule.combine(spec, pa.table(data, schema=schema)).sort_by("media_id").to_pylist()
    m1, m2 = combined
    assert (m1["file_name"], m1["latitude"], m1["trace_id"]) == ("d.jpg", 2.0, "t2")
    assert m1["event_time"] == int((T0 + timedelta(hours=3)).timestamp() * 1_000_000)
    assert (m2["file_name"], m2["latitude"], m2["trace_id"]) == ("c.jpg", None, "t3")


def test_a_batch_of_new_keys_resolves_as_the_general_rule_does() -> None:
    """No stored clocks takes a shorter path; it must agree with the general rule (forced here
    by a stored clock row of an unrelated key)."""
    spec = TABLES["claimx_media"]
    schema = merge_rule.input_schema(spec)
    data = {name: [None] * 4 for name in schema.names}
    data.update(
        media_id=["m1", "m1", "m2", "m3"],
        file_name=["a.jpg", None, "c.jpg", None],
        latitude=[1.0, None, None, None],
        trace_id=["t1", "t2", "t3", "t4"],
        event_time=[T0 + timedelta(hours=h) for h in (1, 3, 1, 2)],
        **{merge_rule.SEQ: [0, 1, 2, 3], merge_rule.APP: [APP] * 4, merge_rule.OFFSET: [0, 1, 2, 3]},
    )
    combined = merge_rule.combine(spec, pa.table(data, schema=schema))
    unrelated = merge_rule.resolve(spec, combined.filter(pa.array([False, False, True])), None, T0).clock_rows
    unrelated = unrelated.set_column(0, "media_id", pa.array(["elsewhere"]))
    short = merge_rule.resolve(spec, combined, None, T0)
    general = merge_rule.resolve(spec, combined, unrelated, T0)
    assert short.clock_rows.to_pylist() == general.clock_rows.to_pylist()
    assert short.source.to_pylist() == general.source.to_pylist()
    m1 = next(row for row in short.clock_rows.to_pylist() if row["media_id"] == "m1")
    assert m1["latitude"] == T0 + timedelta(hours=1)  # older than the row's newest event: kept
    assert m1["file_name"] == T0 + timedelta(hours=1)
    m3 = next(row for row in short.clock_rows.to_pylist() if row["media_id"] == "m3")
    assert m3["file_name"] == merge_rule.NO_VALUE  # the column holds null


# -- the property: order, duplication and batching do not matter ------------------------------

COLUMN_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "status": st.sampled_from(["open", "closed", "review"]),
    "city": st.text(alphabet="abcxyz", min_size=1, max_size=4),
    "year_built": st.integers(1900, 2030),
    "square_footage": st.floats(allow_nan=False, allow_infinity=False, width=64),
    "xa_autolink_fail": st.booleans(),
    "policyholder_invited_at": st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.sampled_from([UTC, None])
    ).map(lambda d: d.isoformat()),
}


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Row], list[list[Row]]]:
    """Distinct rows (unique event time per key, so the answer does not hinge on arrival order),
    each sent one to three times, shuffled, cut into batches."""
    distinct: list[Row] = []
    for key in ("P1", "P2", "P3")[: draw(st.integers(1, 3))]:
        for hour in draw(st.lists(st.integers(0, 40), min_size=1, max_size=5, unique=True)):
            values = {name: draw(st.none() | strategy) for name, strategy in COLUMN_VALUES.items()}
            distinct.append(Row("claimx_projects", {"project_id": key, **values}, hour, f"{key}@{hour}"))
    sent = [row for row in distinct for _ in range(draw(st.integers(1, 3)))]
    shuffled = draw(st.permutations(sent))
    cuts = sorted(draw(st.lists(st.integers(1, max(1, len(shuffled) - 1)), max_size=4, unique=True)))
    bounds = [0, *[c for c in cuts if c < len(shuffled)], len(shuffled)]
    return distinct, [shuffled[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def reference(distinct: list[Row]) -> list[dict[str, Any]]:
    """The merge rule, written out plainly."""
    spec = TABLES["claimx_projects"]
    result = []
    for key in sorted({row.values["project_id"] for row in distinct}):
        rows = sorted((r for r in distinct if r.values["project_id"] == key), key=lambda r: r.hour)
        out: dict[str, Any] = dict.fromkeys(spec.schema.names)
        out["project_id"] = key
        for name in COLUMN_VALUES:
            for row in rows:
                if row.values.get(name) is not None:
                    out[name] = row.values[name]
        if out["policyholder_invited_at"] is not None:
            out["policyholder_invited_at"] = parse_timestamp(out["policyholder_invited_at"])
        out["trace_id"], out["event_time"] = rows[-1].trace, rows[-1].event_time
        result.append(content([out])[0])
    return result


@settings(max_examples=35, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(streams())
def test_any_order_duplication_and_batching_gives_the_same_table(stream: tuple[list[Row], list[list[Row]]]) -> None:
    distinct, batches = stream
    with tempfile.TemporaryDirectory() as root:
        tables = Tables(root)
        for batch in batches:
            tables.write(batch)
        rows = tables.rows("claimx_projects")
        assert content(rows) == reference(distinct)
        assert all(row["created_at"] <= row["updated_at"] for row in rows)
        assert read_table(root, "claimx_projects").schema == TABLES["claimx_projects"].schema
