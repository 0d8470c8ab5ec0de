"""Small read-only views of the Delta tables under one root (for summaries and checks)."""

from __future__ import annotations

from deltalake import DeltaTable

from kafka_pipeline.claimx.schemas import TABLES


def table_uri(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


def table_row_counts(root: str, storage_options: dict[str, str] | None = None) -> dict[str, int]:
    """Rows per existing table (tables not yet created are left out)."""
    counts: dict[str, int] = {}
    for name in TABLES:
        uri = table_uri(root, name)
        if DeltaTable.is_deltatable(uri, storage_options=storage_options or None):
            counts[name] = DeltaTable(uri, storage_options=storage_options or None).to_pyarrow_dataset().count_rows()
    return counts
