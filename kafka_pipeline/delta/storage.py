"""Where the Delta tables live: a local folder or an object store URI, one abstraction for both.

`TableRoot(uri, storage_options)` is the tables root every storage-touching path goes through:
it joins table URIs (`s3://bucket/prefix/claimx_projects`, `./data/delta/_clocks/...`),
carries the delta-rs storage options, and asks delta-rs, not the local file system, whether a
table exists, so nothing assumes a folder where a URI is allowed.

Safe commits. delta-rs commits version N of a table on S3 by a conditional PUT of
`_delta_log/N.json` (`If-None-Match: *`): of two writers committing the same version, exactly
one succeeds and the other sees a conflict and retries on the new version. AWS S3, MinIO and
Cloudflare R2 support it. Setting `AWS_S3_ALLOW_UNSAFE_RENAME` switches that off for a plain
overwrite-prone write, where two writers can both "commit" version N and one's rows are lost
without an error. `check_commit_safety` refuses it unless the operator acknowledged that only
one writer ever runs (`delta.single_writer_acknowledged`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from deltalake import DeltaTable

from kafka_pipeline.config import DeltaSettings
from kafka_pipeline.errors import AuthError, ConfigError, TransientError

CLOCKS_DIR = "_clocks"
UNSAFE_RENAME = "AWS_S3_ALLOW_UNSAFE_RENAME"
_TRUTHY = {"1", "true", "yes", "y", "on"}  # what delta-rs reads as true
# Windows drive letters (`C:\...`) parse as a one-letter scheme: they are local paths.
_URI_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+)://")


class UnsafeCommitConfig(ConfigError):
    """The storage options allow commits that can silently lose another writer's commit."""


class StorageUnavailable(TransientError):
    """The object store did not answer (down, unreachable, timing out): retried later."""


class StorageCredentialsRejected(AuthError):
    """The object store refused the credentials (403/401): nothing works until they are fixed."""


STORE_ERRORS = (StorageUnavailable, StorageCredentialsRejected)


def join_uri(root: str, *parts: str) -> str:
    """`root/part/...` for a folder or a URI (no doubled or dropped slashes)."""
    joined = root.rstrip("/") or "/"
    for part in parts:
        joined = f"{joined.rstrip('/')}/{part.strip('/')}"
    return joined


def scheme_of(uri: str) -> str:
    """`s3`, `gs`, `az`, `abfss`, ... for a URI; `file` for a plain path or `file://` URI."""
    found = _URI_SCHEME.match(uri)
    return found.group(1).lower() if found else "file"


@dataclass(frozen=True)
class TableRoot:
    """The tables root: `uri` plus the storage options delta-rs needs to reach it."""

    uri: str
    storage_options: Mapping[str, str] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        return scheme_of(self.uri)

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def options(self) -> dict[str, str] | None:
        """The storage options as delta-rs takes them (None when there are none)."""
        return dict(self.storage_options) or None

    def table_uri(self, name: str) -> str:
        return join_uri(self.uri, name)

    def clock_table_uri(self, name: str) -> str:
        return join_uri(self.uri, CLOCKS_DIR, name)

    def has_table(self, name: str) -> bool:
        return DeltaTable.is_deltatable(self.table_uri(name), storage_options=self.options)

    def display(self) -> str:
        """The root as a user should read it: an absolute folder, or the URI."""
        if self.is_local:
            path = self.uri.removeprefix("file://")
            return os.path.abspath(path)
        return self.uri


def unsafe_rename_source(storage_options: Mapping[str, str], environ: Mapping[str, str] | None = None) -> str | None:
    """Where `AWS_S3_ALLOW_UNSAFE_RENAME` is switched on (storage option or environment), or None.
    delta-rs reads it from both, in any letter case."""
    for key, value in storage_options.items():
        if key.upper() == UNSAFE_RENAME and str(value).strip().lower() in _TRUTHY:
            return f"storage option {key}={value}"
    environ = os.environ if environ is None else environ
    for key, value in environ.items():
        if key.upper() == UNSAFE_RENAME and value.strip().lower() in _TRUTHY:
            return f"environment variable {key}={value}"
    return None


def check_commit_safety(
    storage_options: Mapping[str, str], *, single_writer_acknowledged: bool, environ: Mapping[str, str] | None = None
) -> None:
    """Refuse unsafe-rename commits (one line) unless the operator acknowledged a single writer."""
    source = unsafe_rename_source(storage_options, environ)
    if source is None or single_writer_acknowledged:
        return
    raise UnsafeCommitConfig(
        f"config error: {source} lets two writers commit the same Delta version and silently lose one's rows; "
        f"unset it (AWS S3, MinIO and R2 support safe conditional commits) or, if exactly one writer will ever "
        f"write these tables, set delta.single_writer_acknowledged: true (KP_DELTA__SINGLE_WRITER_ACKNOWLEDGED=true)"
    )


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_S3_ERROR_CODE = re.compile(r"<Code>([^<]+)</Code>(?:\s*<Message>([^<]*)</Message>)?")
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "InvalidToken",
                     "AuthorizationHeaderMalformed", "InvalidClientTokenId"}
_UNREACHABLE_MARKERS = ("error sending request", "connection refused", "connection reset", "timed out", "dns error",
                        "connect", "broken pipe", "service unavailable", "503")


def storage_error(exc: BaseException, where: str) -> StorageUnavailable | StorageCredentialsRejected | None:
    """`exc` (from delta-rs / object_store) as one clear line, or None when it is not about
    reaching the store (a schema error, a bug: those keep their own type)."""
    text = _ANSI.sub("", str(exc))
    flat = " ".join(text.split())
    code = _S3_ERROR_CODE.search(text)
    if (code and code.group(1) in _CREDENTIAL_CODES) or "lacked the necessary privileges" in flat or " 403 Forbidden" in flat \
            or " 401 Unauthorized" in flat:
        detail = f"{code.group(1)}: {code.group(2)}" if code and code.group(2) else (code.group(1) if code else "403 Forbidden")
        return StorageCredentialsRejected(f"storage rejected the credentials for {where} ({detail})")
    lowered = flat.lower()
    from_store = isinstance(exc, OSError) or "object store error" in lowered or "generic s3 error" in lowered
    if from_store and any(marker in lowered for marker in _UNREACHABLE_MARKERS):
        reason = "cannot connect" if "(connect)" in lowered or "refused" in lowered else \
            "timed out" if "timed out" in lowered else flat[:160]
        return StorageUnavailable(f"storage unreachable at {where} ({reason})")
    return None


def table_root(delta: DeltaSettings, uri: str | None = None) -> TableRoot:
    """The tables root of the settings (`uri`, e.g. a `--tables-root` argument, replaces theirs)."""
    return TableRoot(uri or delta.tables_root, dict(delta.storage_options))
