"""Every ORM class of the registry database (SQLAlchemy 2.0 declarative style).

Layout, and why:
- `schemas` and `module_signatures` are content-addressed: a schema (entries compressed into one
  blob, see `codec.py`) is stored once however many variants or versions share it. Measured in
  `benchmarks/bench_store.py` (2,000 synthetic versions, ~550 entries each): a child table of
  entries (names interned, WITHOUT ROWID) takes ~6x the bytes of the blob (13.5 vs 2.2 kB per
  version) and ~6x the time to load one schema, and nothing needs to query single entries.
- `schema_versions.fingerprint` is a denormalised, indexed copy of the schema's fingerprint, so
  the exact lookup is one index probe without a join.
- `schema_sketch_bands` is the nearest-match index: one row per (LSH band bucket, schema)
  (see `sketch.py`).
- `events` is append-only; the API writes one row in the same transaction as every change.

Timestamps are timezone-aware UTC (`UTCDateTime`); JSON documents use the portable `JSON` type
except variant configs, which are kept as canonical JSON text because their text is compared.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Constraint names are fixed by this convention so that SQLite batch migrations (which rebuild
# tables) and `alembic check` see the same names on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """A timestamp stored as UTC and always returned timezone-aware (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the registry stores timezone-aware UTC times")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class FamilyRow(Base):
    __tablename__ = "families"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class VariantRow(Base):
    __tablename__ = "variants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(300), unique=True)
    family_id: Mapped[int] = mapped_column(ForeignKey("families.id"), index=True)
    config_json: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(200))
    # Where the family came from at registration (added by 0004_sources_and_behaviour).
    family_source: Mapped[str | None] = mapped_column(String(500))


class SchemaRow(Base):
    """One distinct schema (entries with dtypes), shared by every version that produced it."""

    __tablename__ = "schemas"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(80), unique=True)
    fingerprint: Mapped[str] = mapped_column(String(80), index=True)
    entry_count: Mapped[int] = mapped_column(Integer)
    numel: Mapped[int] = mapped_column(BigInteger)
    entries: Mapped[bytes] = mapped_column(LargeBinary)
    # MinHash sketch of the similarity features (added by 0003_nearest_match_index).
    sketch: Mapped[bytes | None] = mapped_column(LargeBinary)


class ModuleSignatureRow(Base):
    __tablename__ = "module_signatures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    hash: Mapped[str] = mapped_column(String(80), unique=True)
    module_count: Mapped[int] = mapped_column(Integer)
    modules: Mapped[bytes] = mapped_column(LargeBinary)


class SchemaVersionRow(Base):
    __tablename__ = "schema_versions"
    __table_args__ = (UniqueConstraint("variant_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    variant_id: Mapped[int] = mapped_column(ForeignKey("variants.id"))
    version: Mapped[int] = mapped_column(Integer)
    schema_id: Mapped[int] = mapped_column(ForeignKey("schemas.id"), index=True)
    fingerprint: Mapped[str] = mapped_column(String(80), index=True)
    signature_id: Mapped[int] = mapped_column(ForeignKey("module_signatures.id"), index=True)
    signature_hash: Mapped[str] = mapped_column(String(80))
    code_revision: Mapped[str | None] = mapped_column(String(200))
    package_versions: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(200))
    # The behaviour digest (DESIGN §11; added by 0004_sources_and_behaviour); None without a probe.
    behaviour: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class SchemaSketchBandRow(Base):
    """Nearest-match index: schema `schema_id` falls in LSH bucket `bucket` (band folded in)."""

    __tablename__ = "schema_sketch_bands"

    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    schema_id: Mapped[int] = mapped_column(ForeignKey("schemas.id"), primary_key=True, autoincrement=False)


class RunRow(Base):
    __tablename__ = "runs"

    # 16 hex digits of a UUID4: unique across databases, so a run id embedded in a checkpoint
    # stays meaningful when the file moves from a laptop's SQLite file to the cluster database.
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    variant_id: Mapped[int] = mapped_column(ForeignKey("variants.id"), index=True)
    schema_version_id: Mapped[int | None] = mapped_column(ForeignKey("schema_versions.id"))
    config_json: Mapped[str] = mapped_column(Text)
    host: Mapped[str] = mapped_column(String(300))
    user: Mapped[str] = mapped_column("username", String(200))
    scheduler_job_id: Mapped[str | None] = mapped_column(String(200))
    world_size: Mapped[int] = mapped_column(Integer, default=1)
    code_revision: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(40), default="running")
    # runs <-> checkpoints reference each other; this side is added after both tables exist.
    resumed_from_checkpoint_id: Mapped[int | None] = mapped_column(
        ForeignKey("checkpoints.id", use_alter=True)
    )
    parent_run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id"))


class CheckpointRow(Base):
    """A registered file or folder, unique per (path, size, mtime): the stat identity of its content."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("path", "size", "mtime"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String(4000))
    size: Mapped[int] = mapped_column(BigInteger)
    mtime: Mapped[float] = mapped_column(Double)
    content_digest: Mapped[str | None] = mapped_column(String(80), index=True)
    format: Mapped[str] = mapped_column(String(60))
    container: Mapped[str | None] = mapped_column(String(200))
    wrapper: Mapped[str | None] = mapped_column(String(200))
    prefix: Mapped[str | None] = mapped_column(String(400))
    fingerprint: Mapped[str] = mapped_column(String(80), index=True)
    step: Mapped[int | None] = mapped_column(BigInteger)
    schema_version_id: Mapped[int | None] = mapped_column(ForeignKey("schema_versions.id"), index=True)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class EventRow(Base):
    """Append-only audit log: one row per change, written in the change's own transaction."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_variant_at", "variant", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    who: Mapped[str] = mapped_column(String(200))
    host: Mapped[str] = mapped_column(String(300))
    action: Mapped[str] = mapped_column(String(60))
    subject: Mapped[str] = mapped_column(String(4000))
    variant: Mapped[str | None] = mapped_column(String(300))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
