"""The writer's file layout (kafka_pipeline/maintenance/table_layout.py) on real Delta tables: an
update to an updated table rewrites a bounded amount however old the table and the row, with the
maintenance loop compacting beside the writer; tables created before take the layout up."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable

from kafka_pipeline.claimx.schemas import TABLES
from kafka_pipeline.delta import DeltaTableWriter, clock_table_uri, table_uri
from kafka_pipeline.maintenance.loop import MaintenancePolicy, TableMaintainer, table_labels
from kafka_pipeline.maintenance.policy import layout_properties
from kafka_pipeline.maintenance.table_layout import ENTITY_FILE_BYTES, TARGET_SIZE_PROPERTY, UPDATED_FILE_BYTES, table_properties, writer_properties
from tests.fixtures.tables import P0, batch

SPEC = TABLES["claimx_projects"]
PER_FLUSH = 100


def files(uri: str) -> dict[str, int]:
    """path -> size of the table's live data files."""
    actions = pa.table(DeltaTable(uri).get_add_actions(flatten=True))
    return dict(zip(actions["path"].to_pylist(), actions["size_bytes"].to_pylist(), strict=True))


def project(key: int, rng: random.Random, **values: str) -> dict[str, str]:
    # a description that does not compress, so the table outgrows its file size within seconds
    return {"project_id": f"{key:07d}", "status": "OPEN", "loss_description": rng.randbytes(150).hex(), **values}


class Table:
    """claimx_projects written the way the entity writer does, with its maintenance loop."""

    def __init__(self, root: str) -> None:
        self.root = root
        entity, clocks = table_properties(SPEC.name)
        self.writer = DeltaTableWriter(SPEC, root, writer_properties=writer_properties(), configuration=entity, clock_configuration=clocks)
        labels = table_labels([SPEC.name], lambda n: table_uri(root, n), lambda n: clock_table_uri(root, n))
        self.maintainer = TableMaintainer(labels, MaintenancePolicy(backoff_base_s=0.01), properties=layout_properties([SPEC.name]),
                                          writer_properties=writer_properties())
        self.offset = 0
        self.hour = 0

    def write(self, rows: list[dict[str, str]]) -> None:
        self.hour += 1
        tagged = [("claimx_projects", row, self.hour, f"t{self.offset + n}", self.offset + n) for n, row in enumerate(rows)]
        self.offset += len(rows)
        self.writer.write(batch(tagged)["claimx_projects"], {P0: self.offset - 1})

    def rewritten_by(self, rows: list[dict[str, str]]) -> int:
        """Bytes of data files one write adds to the table and its clock table."""
        uris = (table_uri(self.root, SPEC.name), clock_table_uri(self.root, SPEC.name))
        before = [files(uri) for uri in uris]
        self.write(rows)
        return sum(size for uri, held in zip(uris, before, strict=True) for path, size in files(uri).items() if path not in held)

    def size(self) -> int:
        return sum(files(table_uri(self.root, SPEC.name)).values())


def test_an_update_rewrites_a_bounded_amount_however_old_the_table_and_the_row(tmp_path: Path) -> None:
    rng = random.Random(24)
    table = Table(str(tmp_path))
    costs: dict[str, list[int]] = {"oldest": [], "recent": []}
    sizes = []
    created = 0
    for age in (10, 40):  # flushes of new projects (each also updating a recent one), then the two updates
        while created < age * PER_FLUSH:
            table.write([project(created + n, rng) for n in range(PER_FLUSH)] + [project(created - 7, rng, status="CLOSED")] * (created > 0))
            created += PER_FLUSH
            if created % (5 * PER_FLUSH) == 0:
                assert not table.maintainer.run_once().errors
        costs["oldest"].append(table.rewritten_by([project(0, rng, status=f"AGE{age}")]))
        costs["recent"].append(table.rewritten_by([project(created - 50, rng, status=f"AGE{age}")]))
        sizes.append(table.size())
    # the old table is many files of the bounded size: a layout whose files grow with the table
    # (the 2 MiB target before) rewrites it whole on these updates
    assert sizes[1] > 5 * UPDATED_FILE_BYTES and sizes[1] > 3 * sizes[0], sizes
    bound = 3 * UPDATED_FILE_BYTES  # table + clock table, a file each, a file may overshoot its target by half
    for which, (young, old) in costs.items():
        assert 0 < young <= bound and 0 < old <= bound, (which, costs, sizes)
    rows = DeltaTable(table_uri(table.root, SPEC.name)).to_pyarrow_table(columns=["project_id", "status"]).to_pylist()
    assert len(rows) == created and {"project_id": "0000000", "status": "AGE40"} in rows


def test_tables_created_before_the_layout_take_it_up_at_the_next_maintenance_pass(tmp_path: Path) -> None:
    root = str(tmp_path)
    old = str(ENTITY_FILE_BYTES)
    writer = DeltaTableWriter(SPEC, root, configuration={TARGET_SIZE_PROPERTY: old}, clock_configuration={TARGET_SIZE_PROPERTY: old})
    writer.write(batch([("claimx_projects", {"project_id": "1", "status": "OPEN"}, 1, "t0", 0)])["claimx_projects"], {P0: 0})
    labels = table_labels([SPEC.name], lambda n: table_uri(root, n), lambda n: clock_table_uri(root, n))
    TableMaintainer(labels, MaintenancePolicy(), properties=layout_properties([SPEC.name])).run_once()
    for uri in (table_uri(root, SPEC.name), clock_table_uri(root, SPEC.name)):
        assert DeltaTable(uri).metadata().configuration[TARGET_SIZE_PROPERTY] == str(UPDATED_FILE_BYTES)
    # the writer's open snapshots are older than the property change: its next write still lands
    writer.write(batch([("claimx_projects", {"project_id": "1", "status": "CLOSED"}, 2, "t1", 1)])["claimx_projects"], {P0: 1})
    assert DeltaTable(table_uri(root, SPEC.name)).to_pyarrow_table(columns=["status"]).to_pylist() == [{"status": "CLOSED"}]
