"""The file layout of the writer's tables: how large their data files grow, how they are encoded.

delta-rs writes every MERGE copy-on-write: it rewrites each data file that holds a matched key
(only those: files without a match survive untouched) and writes the rewritten rows, with the
inserted ones, into files of the table's `delta.targetFileSize`. Compaction packs small files
into files of that size too. So what one update costs is the size of the file holding its row,
and that size is the table's target.

- **Updated tables** (`claimx_projects`, `claimx_tasks`, `claimx_external_links`, and their
  clock tables): their rows change for their whole life (a project gets policyholder and MFN
  updates; a task is completed days after it was assigned, at any age, and its completion
  fetches the assignment again, which emits its task and external-link rows again), so their
  files stay small: an update rewrites at most about `UPDATED_FILE_BYTES` per file it touches,
  however old the table or the row. With a 2 MiB target the file holding the newest rows grew
  flush by flush up to 2 MiB and was rewritten by nearly every flush, so the bytes written per
  row grew with uptime.
- **The other entity tables** (contacts, media, templates, video collaborations) are mostly
  appended to: `ENTITY_FILE_BYTES`, their clock tables an eighth of it.
- **`claimx_events`** is insert-only and keyed by hashes (nothing prunes): few large files.

Every data file is written with zstd: about a third fewer bytes than snappy for these rows,
read by every Delta reader.
"""

from __future__ import annotations

from deltalake import WriterProperties

ENTITY_FILE_BYTES = 2 * 1024 * 1024
EVENTS_FILE_BYTES = 32 * 1024 * 1024
UPDATED_FILE_BYTES = 128 * 1024
CLOCK_FILE_RATIO = 8  # a clock row of a mostly-appended table is about an eighth of its entity row
UPDATED_TABLES = frozenset({"claimx_projects", "claimx_tasks", "claimx_external_links"})
TARGET_SIZE_PROPERTY = "delta.targetFileSize"


def table_properties(name: str) -> tuple[dict[str, str], dict[str, str]]:
    """Delta table properties (entity table, clock table) of table `name`: the writer creates
    tables with them, and the maintenance loop sets them on tables created before."""
    if name in UPDATED_TABLES:
        # a clock row of these tables is a timestamp per value column: as large as the entity row
        return {TARGET_SIZE_PROPERTY: str(UPDATED_FILE_BYTES)}, {TARGET_SIZE_PROPERTY: str(UPDATED_FILE_BYTES)}
    size = EVENTS_FILE_BYTES if name == "claimx_events" else ENTITY_FILE_BYTES
    return {TARGET_SIZE_PROPERTY: str(size)}, {TARGET_SIZE_PROPERTY: str(size // CLOCK_FILE_RATIO)}


def writer_properties() -> WriterProperties:
    """How the writer and the maintenance loop encode data files."""
    return WriterProperties(compression="ZSTD")
