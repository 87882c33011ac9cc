"""Plain frozen dataclasses that the store returns (never ORM rows).

`as_dict()` gives the JSON form the command line prints; its field names are stable because
scripts on clusters depend on them. Times are timezone-aware UTC (ISO 8601 in JSON).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class _Record:
    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (datetimes as ISO 8601 strings)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class VariantRecord(_Record):
    id: int
    name: str
    family: str
    config: dict[str, Any]
    config_json: str
    description: str
    is_default: bool
    created_at: datetime
    created_by: str | None
    latest_version: int | None = None
    latest_fingerprint: str | None = None
    family_source: str | None = None


@dataclass(frozen=True)
class SchemaVersionRecord(_Record):
    id: int
    variant: str
    family: str
    version: int
    fingerprint: str
    signature_hash: str
    entry_count: int
    numel: int
    code_revision: str | None
    package_versions: dict[str, str]
    created_at: datetime
    created_by: str | None
    behaviour: dict[str, Any] | None = None


@dataclass(frozen=True)
class CheckpointRecord(_Record):
    id: int
    path: str
    size: int
    mtime: float
    content_digest: str | None
    format: str
    container: str | None
    wrapper: str | None
    prefix: str | None
    fingerprint: str
    step: int | None
    schema_version_id: int | None
    variant: str | None
    run_id: str | None
    created_at: datetime


@dataclass(frozen=True)
class RunRecord(_Record):
    id: str
    variant: str
    family: str
    schema_version_id: int | None
    config: dict[str, Any]
    host: str
    user: str
    scheduler_job_id: str | None
    world_size: int
    code_revision: str | None
    started_at: datetime
    ended_at: datetime | None
    status: str
    resumed_from_checkpoint_id: int | None
    parent_run_id: str | None


@dataclass(frozen=True)
class EventRecord(_Record):
    id: int
    at: datetime
    who: str
    host: str
    action: str
    subject: str
    variant: str | None
    details: dict[str, Any]


@dataclass(frozen=True)
class RegistryInfo(_Record):
    """What `registry info` shows."""

    url: str
    source: str  # "--db", "REGISTRY_DB" or "default"
    backend: str
    revision: str | None
    head: str
    status: str  # "current", "behind", "newer" or "missing" (no SQLite file yet)
    counts: dict[str, int]
