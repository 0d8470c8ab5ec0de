"""Delta Lake writing: the merge rule, exactly-once table merges, table maintenance."""

from kafka_pipeline.delta.merge_rule import TableContract, clock_schema, combine, merge_expressions, resolve
from kafka_pipeline.delta.table_writer import (
    CommitConflict,
    DeltaTableWriter,
    TableSchemaError,
    TableWriteResult,
    clock_table_uri,
    open_table,
    read_delta_table,
    table_uri,
)

__all__ = [
    "CommitConflict",
    "DeltaTableWriter",
    "TableContract",
    "TableSchemaError",
    "TableWriteResult",
    "clock_schema",
    "clock_table_uri",
    "combine",
    "merge_expressions",
    "open_table",
    "read_delta_table",
    "resolve",
    "table_uri",
]
