"""Read-only queries for browsing a big registry (the web view): pages, links and counts.

`Registry`'s own list methods build one record at a time, with a query or two each; that is right
for the command line and too slow for 100,000 checkpoints. These functions answer one page, or
the few columns a whole graph needs, in a handful of joined queries, and return plain
dataclasses and dicts (never ORM rows). The field names follow the command line's `--json`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from sqlalchemy import func, or_, select
from sqlalchemy.orm import aliased

from .orm import CheckpointRow, EventRow, FamilyRow, RunRow, SchemaRow, SchemaVersionRow, VariantRow
from .records import CheckpointRecord, RunRecord
from .tracking import checkpoint_record, run_record

CONVERT_ACTION = "checkpoint.convert"
# SQLite binds at most 32,766 parameters per statement; stay far below for IN (...) lists.
_IN_CHUNK = 900


@dataclass(frozen=True)
class Page:
    """One page of a list: `items`, the 1-based `number`, `size` per page and the `total` count."""

    items: list[Any]
    number: int
    size: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))


@dataclass(frozen=True)
class VariantOverview:
    """A row of the variants page."""

    id: int
    name: str
    family: str
    family_source: str | None
    description: str
    latest_version: int | None
    latest_fingerprint: str | None
    runs: int
    checkpoints: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(slots=True)  # not frozen: frozen dataclasses cost ~3x to build, and 10,000 are built per graph
class RunLink:
    """The few columns of a run that the lineage graph needs."""

    id: str
    parent_run_id: str | None  # the explicit parent, else the run that wrote the resumed checkpoint
    resumed_from_checkpoint_id: int | None
    variant: str
    family: str
    user: str
    scheduler_job_id: str | None
    status: str
    started_at: datetime


def _page_bounds(number: int, size: int) -> tuple[int, int]:
    number = max(1, number)
    return number, (number - 1) * size


def variants_overview(reg: Any, *, page: int = 1, size: int = 100) -> Page:
    """Variants sorted by name, each with its latest schema version and its run and checkpoint counts."""
    number, offset = _page_bounds(page, size)
    latest = (select(SchemaVersionRow.variant_id, func.max(SchemaVersionRow.version).label("version"))
              .group_by(SchemaVersionRow.variant_id).subquery())
    runs = select(RunRow.variant_id, func.count().label("n")).group_by(RunRow.variant_id).subquery()
    checkpoints = (select(SchemaVersionRow.variant_id, func.count().label("n"))
                   .join(CheckpointRow, CheckpointRow.schema_version_id == SchemaVersionRow.id)
                   .group_by(SchemaVersionRow.variant_id).subquery())
    query = (
        select(VariantRow, FamilyRow.name, latest.c.version, SchemaVersionRow.fingerprint, runs.c.n, checkpoints.c.n)
        .join(FamilyRow, FamilyRow.id == VariantRow.family_id)
        .outerjoin(latest, latest.c.variant_id == VariantRow.id)
        .outerjoin(SchemaVersionRow, (SchemaVersionRow.variant_id == VariantRow.id)
                   & (SchemaVersionRow.version == latest.c.version))
        .outerjoin(runs, runs.c.variant_id == VariantRow.id)
        .outerjoin(checkpoints, checkpoints.c.variant_id == VariantRow.id)
        .order_by(VariantRow.name).offset(offset).limit(size)
    )
    with reg._read() as session:
        total = session.scalar(select(func.count()).select_from(VariantRow)) or 0
        items = [
            VariantOverview(row.id, row.name, family, row.family_source, row.description, version, fingerprint,
                            n_runs or 0, n_checkpoints or 0)
            for row, family, version, fingerprint, n_runs, n_checkpoints in session.execute(query)
        ]
    return Page(items, number, size, total)


def run_links(reg: Any) -> list[RunLink]:
    """Every run's lineage columns, oldest first: one query, whatever the number of runs."""
    source = aliased(CheckpointRow)
    query = (
        select(RunRow.id, RunRow.parent_run_id, RunRow.resumed_from_checkpoint_id, source.run_id, VariantRow.name,
               FamilyRow.name, RunRow.user, RunRow.scheduler_job_id, RunRow.status, RunRow.started_at)
        .join(VariantRow, VariantRow.id == RunRow.variant_id)
        .join(FamilyRow, FamilyRow.id == VariantRow.family_id)
        .outerjoin(source, source.id == RunRow.resumed_from_checkpoint_id)
        .order_by(RunRow.started_at, RunRow.id)
    )
    with reg._read() as session:
        return [
            RunLink(run_id, parent if parent is not None else (writer if writer != run_id else None), resumed,
                    variant, family, user, job, status, started)
            for run_id, parent, resumed, writer, variant, family, user, job, status, started
            in session.execute(query)
        ]


def _run_query():
    return (select(RunRow, VariantRow.name, FamilyRow.name)
            .join(VariantRow, VariantRow.id == RunRow.variant_id)
            .join(FamilyRow, FamilyRow.id == VariantRow.family_id))


def _chunks(values: Iterable[Any]) -> Iterable[list[Any]]:
    values = list(values)
    for start in range(0, len(values), _IN_CHUNK):
        yield values[start:start + _IN_CHUNK]


def runs_by_id(reg: Any, run_ids: Iterable[str]) -> dict[str, RunRecord]:
    """The runs with these ids (unknown ids are left out)."""
    found: dict[str, RunRecord] = {}
    with reg._read() as session:
        for chunk in _chunks(set(run_ids)):
            for row, variant, family in session.execute(_run_query().where(RunRow.id.in_(chunk))):
                found[row.id] = run_record(row, variant, family)
    return found


def _checkpoint_query():
    by_version = aliased(VariantRow)
    by_run = aliased(VariantRow)
    return (
        select(CheckpointRow, func.coalesce(by_version.name, by_run.name))
        .outerjoin(SchemaVersionRow, SchemaVersionRow.id == CheckpointRow.schema_version_id)
        .outerjoin(by_version, by_version.id == SchemaVersionRow.variant_id)
        .outerjoin(RunRow, RunRow.id == CheckpointRow.run_id)
        .outerjoin(by_run, by_run.id == RunRow.variant_id)
    )


def checkpoints_by_id(reg: Any, ids: Iterable[int]) -> dict[int, CheckpointRecord]:
    """The checkpoints with these ids (unknown ids are left out)."""
    found: dict[int, CheckpointRecord] = {}
    with reg._read() as session:
        for chunk in _chunks(set(ids)):
            for row, variant in session.execute(_checkpoint_query().where(CheckpointRow.id.in_(chunk))):
                found[row.id] = checkpoint_record(row, variant)
    return found


def checkpoints_by_path(reg: Any, paths: Iterable[str]) -> dict[str, CheckpointRecord]:
    """The newest checkpoint recorded at each of these paths (unknown paths are left out)."""
    found: dict[str, CheckpointRecord] = {}
    with reg._read() as session:
        for chunk in _chunks(set(paths)):
            query = _checkpoint_query().where(CheckpointRow.path.in_(chunk)).order_by(CheckpointRow.id)
            for row, variant in session.execute(query):
                found[row.path] = checkpoint_record(row, variant)
    return found


def runs_resumed_from(reg: Any, checkpoint_id: int) -> list[str]:
    """Ids of the runs that resumed from this checkpoint, oldest first."""
    with reg._read() as session:
        return list(session.scalars(select(RunRow.id).where(RunRow.resumed_from_checkpoint_id == checkpoint_id)
                                    .order_by(RunRow.started_at, RunRow.id)))


def checkpoints_of_runs(reg: Any, run_ids: Iterable[str]) -> dict[str, list[CheckpointRecord]]:
    """Each run's checkpoints, by step then id."""
    out: dict[str, list[CheckpointRecord]] = {}
    with reg._read() as session:
        for chunk in _chunks(set(run_ids)):
            query = _checkpoint_query().where(CheckpointRow.run_id.in_(chunk)).order_by(CheckpointRow.step,
                                                                                        CheckpointRow.id)
            for row, variant in session.execute(query):
                out.setdefault(row.run_id, []).append(checkpoint_record(row, variant))
    return out


def checkpoints_page(reg: Any, *, page: int = 1, size: int = 100, unmatched: bool = False,
                     path_contains: str | None = None, fingerprint_prefix: str | None = None) -> Page:
    """Checkpoints, newest first; `unmatched` keeps those recorded with no matching build."""
    number, offset = _page_bounds(page, size)
    conditions = []
    if unmatched:
        conditions.append(CheckpointRow.schema_version_id.is_(None))
    if path_contains:
        conditions.append(CheckpointRow.path.contains(path_contains, autoescape=True))
    if fingerprint_prefix:
        conditions.append(CheckpointRow.fingerprint.startswith(fingerprint_prefix, autoescape=True))
    with reg._read() as session:
        total = session.scalar(select(func.count()).select_from(CheckpointRow).where(*conditions)) or 0
        query = _checkpoint_query().where(*conditions).order_by(CheckpointRow.id.desc()).offset(offset).limit(size)
        items = [checkpoint_record(row, variant) for row, variant in session.execute(query)]
    return Page(items, number, size, total)


@dataclass(frozen=True)
class UnmatchedGroup:
    """Unmatched checkpoints that share one schema: how many, where, and one path to read it from."""

    fingerprint: str
    checkpoints: int
    bytes: int
    example_path: str
    newest_id: int


def unmatched_groups(reg: Any, *, page: int = 1, size: int = 50) -> Page:
    """Checkpoints with no matching build, one group per fingerprint, the biggest groups first."""
    number, offset = _page_bounds(page, size)
    unmatched = CheckpointRow.schema_version_id.is_(None)
    query = (select(CheckpointRow.fingerprint, func.count(), func.sum(CheckpointRow.size), func.max(CheckpointRow.id))
             .where(unmatched).group_by(CheckpointRow.fingerprint)
             .order_by(func.count().desc(), CheckpointRow.fingerprint).offset(offset).limit(size))
    with reg._read() as session:
        total = session.scalar(select(func.count(func.distinct(CheckpointRow.fingerprint))).where(unmatched)) or 0
        rows = session.execute(query).all()
        paths = dict(session.execute(select(CheckpointRow.id, CheckpointRow.path)
                                     .where(CheckpointRow.id.in_([r[3] for r in rows]))).all()) if rows else {}
    items = [UnmatchedGroup(fp, count, int(total_bytes or 0), paths.get(newest, ""), newest)
             for fp, count, total_bytes, newest in rows]
    return Page(items, number, size, total)


def conversion_events(reg: Any) -> list[dict[str, Any]]:
    """Every `checkpoint.convert` event, oldest first, as the audit reads them (at, subject, details)."""
    query = (select(EventRow.at, EventRow.subject, EventRow.variant, EventRow.details, EventRow.who, EventRow.host)
             .where(EventRow.action == CONVERT_ACTION).order_by(EventRow.id))
    with reg._read() as session:
        return [{"at": at, "subject": subject, "variant": variant, "details": dict(details or {}), "who": who,
                 "host": host} for at, subject, variant, details, who, host in session.execute(query)]


def search(reg: Any, text: str, *, limit: int = 50) -> dict[str, list[Any]]:
    """Variants whose name contains `text`, schema versions and checkpoints whose fingerprint starts
    with it (full `sha256:...` or the short hex form), and checkpoints whose path contains it."""
    text = text.strip()
    if not text:
        return {"variants": [], "schema_versions": [], "checkpoints": []}
    fingerprint = text if text.startswith("sha256:") else f"sha256:{text}"
    hexish = all(c in "0123456789abcdef" for c in fingerprint.removeprefix("sha256:")) and len(text) >= 4
    with reg._read() as session:
        variants = [name for (name,) in session.execute(
            select(VariantRow.name).where(VariantRow.name.contains(text, autoescape=True))
            .order_by(VariantRow.name).limit(limit))]
        versions = []
        if hexish:
            versions = [{"variant": name, "schema_version": version, "fingerprint": fp, "variant_id": vid}
                        for name, version, fp, vid in session.execute(
                            select(VariantRow.name, SchemaVersionRow.version, SchemaVersionRow.fingerprint,
                                   VariantRow.id)
                            .join(VariantRow, VariantRow.id == SchemaVersionRow.variant_id)
                            .where(SchemaVersionRow.fingerprint.startswith(fingerprint, autoescape=True))
                            .order_by(VariantRow.name, SchemaVersionRow.version).limit(limit))]
        match = CheckpointRow.path.contains(text, autoescape=True)
        if hexish:
            match = or_(match, CheckpointRow.fingerprint.startswith(fingerprint, autoescape=True))
        checkpoints = [checkpoint_record(row, variant) for row, variant in session.execute(
            _checkpoint_query().where(match).order_by(CheckpointRow.id.desc()).limit(limit))]
    return {"variants": variants, "schema_versions": versions, "checkpoints": checkpoints}


def variant_id(reg: Any, name: str) -> int | None:
    with reg._read() as session:
        return session.scalar(select(VariantRow.id).where(VariantRow.name == name))


def variant_name(reg: Any, variant_id_: int) -> str | None:
    with reg._read() as session:
        return session.scalar(select(VariantRow.name).where(VariantRow.id == variant_id_))


def schema_entry_counts(reg: Any, schema_version_ids: Iterable[int]) -> dict[int, int]:
    """Entry count per schema version id."""
    with reg._read() as session:
        return dict(session.execute(
            select(SchemaVersionRow.id, SchemaRow.entry_count).join(SchemaRow, SchemaRow.id == SchemaVersionRow.schema_id)
            .where(SchemaVersionRow.id.in_(list(schema_version_ids)))).all())


__all__ = ["Page", "VariantOverview", "RunLink", "UnmatchedGroup", "variants_overview", "run_links", "runs_by_id",
           "checkpoints_by_id", "checkpoints_by_path", "runs_resumed_from", "checkpoints_of_runs", "checkpoints_page", "unmatched_groups", "conversion_events",
           "search", "variant_id", "variant_name", "schema_entry_counts"]
