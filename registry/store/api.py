"""The `Registry`: the store's public API. Every method returns plain records (`records.py`).

Writes are insert-or-get where the issue asks for idempotence, each runs in one transaction
(`session.py`), and each change appends one event in that same transaction, so an event exists
exactly when its change landed. Nothing here updates or deletes an event.
"""

from __future__ import annotations

import getpass
import json
import socket
from datetime import datetime
from typing import Any, Iterable

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, aliased

from registry.behaviour_digest import digests_match
from registry.errors import DatabaseError, UsageError
from registry.schema import ModuleSignature, Schema

from . import codec, nearest
from .engine import backend, display_url
from .migrate import HEAD_REVISION, RevisionState
from .orm import (
    CheckpointRow,
    EventRow,
    FamilyRow,
    ModuleSignatureRow,
    RunRow,
    SchemaRow,
    SchemaSketchBandRow,
    SchemaVersionRow,
    VariantRow,
    utcnow,
)
from .records import EventRecord, RegistryInfo, SchemaVersionRecord, VariantRecord
from .session import SessionFactory
from .tracking import RUN_STATUSES, TrackingMixin, canonical_json  # noqa: F401  (re-exported)


def _current_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001  (no passwd entry in some containers)
        return "unknown"


class Registry(TrackingMixin):
    """An open registry database. Use as a context manager, or call `close()`.

    Variants, schema versions and events are here; runs and checkpoints are in `TrackingMixin`.
    """

    def __init__(self, engine: Engine, url: str, *, source: str, state: RevisionState, readonly: bool):
        self.engine = engine
        self.url = url
        self.url_display = display_url(url)
        self.source = source
        self.backend = backend(url)
        self.revision = state.revision
        self.upgraded_from = state.upgraded_from
        self.migrated = state.upgraded
        self.readonly = readonly
        self.user = _current_user()
        self.host = socket.gethostname()
        self._sessions = SessionFactory(engine, display=self.url_display)

    # --- lifecycle and overview -----------------------------------------------------------

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.url_display}, revision={self.revision})"

    def counts(self) -> dict[str, int]:
        """Rows per table: families, variants, schema_versions, schemas, checkpoints, runs, events."""
        tables = {
            "families": FamilyRow, "variants": VariantRow, "schema_versions": SchemaVersionRow,
            "schemas": SchemaRow, "checkpoints": CheckpointRow, "runs": RunRow, "events": EventRow,
        }
        with self._read() as session:
            return {name: session.scalar(select(func.count()).select_from(row)) or 0 for name, row in tables.items()}

    def info(self) -> RegistryInfo:
        """URL (password hidden), where it came from, backend, revision and counts."""
        return RegistryInfo(self.url_display, self.source, self.backend, self.revision, HEAD_REVISION, "current",
                            self.counts())

    # --- variants -------------------------------------------------------------------------

    def register_variant(
        self, name: str, family: str, config: dict[str, Any], description: str = "", is_default: bool = False,
        family_source: str | None = None,
    ) -> VariantRecord:
        """Insert-or-get a variant; returns it. `family_source` says where its family was loaded
        from (`Family.source`), so `check` can say which plugin or class to load.

        Raises `UsageError` when `name` is registered with another family or canonical config (the
        message names both values of every differing key).
        """
        config_json = canonical_json(config)

        def work(session: Session) -> VariantRecord:
            row = session.scalars(select(VariantRow).where(VariantRow.name == name)).one_or_none()
            if row is not None:
                registered_family = session.get(FamilyRow, row.family_id).name
                if registered_family != family or row.config_json != config_json:
                    raise _variant_conflict(name, registered_family, json.loads(row.config_json), family, config)
                return self._variant_record(session, row)
            family_row = session.scalars(select(FamilyRow).where(FamilyRow.name == family)).one_or_none()
            if family_row is None:
                family_row = FamilyRow(name=family, created_at=utcnow())
                session.add(family_row)
                session.flush()
            row = VariantRow(
                name=name, family_id=family_row.id, config_json=config_json, description=description,
                is_default=is_default, created_at=utcnow(), created_by=self.user, family_source=family_source,
            )
            session.add(row)
            session.flush()
            self._event(session, "variant.add", f"variant {name}", name, family=family, config=config,
                        description=description, is_default=is_default)
            return self._variant_record(session, row)

        return self._write(work)

    def get_variant(self, name: str) -> VariantRecord | None:
        """The variant called `name`, or None."""
        with self._read() as session:
            row = session.scalars(select(VariantRow).where(VariantRow.name == name)).one_or_none()
            return None if row is None else self._variant_record(session, row)

    def require_variant(self, name: str) -> VariantRecord:
        """The variant called `name`; raises `UsageError` (exit 2) if it is not registered."""
        record = self.get_variant(name)
        if record is None:
            raise _unknown_variant(name)
        return record

    def list_variants(self, family: str | None = None) -> list[VariantRecord]:
        """Every variant (of `family` if given), sorted by name."""
        with self._read() as session:
            query = select(VariantRow).join(FamilyRow, FamilyRow.id == VariantRow.family_id).order_by(VariantRow.name)
            if family is not None:
                query = query.where(FamilyRow.name == family)
            return [self._variant_record(session, row) for row in session.scalars(query)]

    # --- schema versions ------------------------------------------------------------------

    def record_schema_version(
        self,
        variant_name: str,
        schema: Schema,
        signature: ModuleSignature,
        *,
        code_revision: str | None,
        package_versions: dict[str, str],
        created_by: str | None = None,
        behaviour: dict[str, Any] | None = None,
    ) -> SchemaVersionRecord:
        """Record what `variant_name` builds now as its next version (latest + 1); returns it.

        Idempotent: when the latest version has the same fingerprint and signature hash, and the
        given `behaviour` digest (if any) matches its digest within tolerance, that version is
        returned and nothing is written (a latest version without a digest gets a new version that
        has one). Raises `UsageError` for an unknown variant.
        """

        def work(session: Session) -> SchemaVersionRecord:
            variant = self._variant_row(session, variant_name)
            latest = session.scalars(
                select(SchemaVersionRow).where(SchemaVersionRow.variant_id == variant.id)
                .order_by(SchemaVersionRow.version.desc()).limit(1)
            ).first()
            if (latest is not None and latest.fingerprint == schema.fingerprint
                    and latest.signature_hash == signature.hash
                    and (behaviour is None or digests_match(latest.behaviour, behaviour))):
                return self._version_by_id(session, latest.id)
            row = SchemaVersionRow(
                variant_id=variant.id,
                version=latest.version + 1 if latest else 1,
                schema_id=_schema_id(session, schema),
                fingerprint=schema.fingerprint,
                signature_id=_signature_id(session, signature),
                signature_hash=signature.hash,
                code_revision=code_revision,
                package_versions=dict(package_versions),
                created_at=utcnow(),
                created_by=created_by or self.user,
                behaviour=behaviour,
            )
            session.add(row)
            session.flush()
            self._event(
                session, "schema.record", f"variant {variant_name} version {row.version}", variant_name,
                version=row.version, fingerprint=row.fingerprint, signature_hash=row.signature_hash,
                previous_fingerprint=latest.fingerprint if latest else None, code_revision=code_revision,
                package_versions=dict(package_versions),
            )
            return self._version_by_id(session, row.id)

        return self._write(work)

    def latest_schema_version(self, variant_name: str) -> SchemaVersionRecord | None:
        """The variant's newest schema version; None if it has none. `UsageError` if unknown."""
        versions = self.schema_versions(variant_name)
        return versions[-1] if versions else None

    def schema_versions(self, variant_name: str) -> list[SchemaVersionRecord]:
        """Every schema version of a variant, oldest first. Raises `UsageError` if unknown."""
        with self._read() as session:
            variant = self._variant_row(session, variant_name)
            query = _version_query().where(SchemaVersionRow.variant_id == variant.id).order_by(SchemaVersionRow.version)
            return [_version_record(row) for row in session.execute(query)]

    def get_schema_version(self, schema_version_id: int) -> SchemaVersionRecord:
        """One schema version by id; raises `UsageError` if there is none."""
        with self._read() as session:
            return self._version_by_id(session, schema_version_id)

    def find_by_fingerprint(self, fingerprint: str) -> list[SchemaVersionRecord]:
        """Every schema version (of any variant) with this fingerprint, by variant then version.

        Several variants here means schema-equivalent variants: the fingerprint alone cannot
        tell them apart. One index probe on `schema_versions.fingerprint`.
        """
        with self._read() as session:
            query = _version_query().where(SchemaVersionRow.fingerprint == fingerprint).order_by(
                VariantRow.name, SchemaVersionRow.version
            )
            return [_version_record(row) for row in session.execute(query)]

    def find_by_fingerprints(self, fingerprints: Iterable[str]) -> dict[str, list[SchemaVersionRecord]]:
        """`find_by_fingerprint` of many fingerprints in one read transaction: fingerprint → its
        schema versions (by variant then version); fingerprints nothing has are absent.

        An SD single file has ~1,000 module prefixes; one query each would cost seconds.
        """
        wanted = sorted(set(fingerprints))
        found: dict[str, list[SchemaVersionRecord]] = {}
        with self._read() as session:
            for start in range(0, len(wanted), 500):  # under SQLite's bound-parameter limit
                query = _version_query().where(SchemaVersionRow.fingerprint.in_(wanted[start:start + 500])).order_by(
                    VariantRow.name, SchemaVersionRow.version
                )
                for row in session.execute(query):
                    record = _version_record(row)
                    found.setdefault(record.fingerprint, []).append(record)
        return found

    def load_schema(self, schema_version_id: int) -> Schema:
        """The schema (entries with dtypes) of a schema version; `UsageError` if there is none."""
        with self._read() as session:
            blob = session.scalar(
                select(SchemaRow.entries).join(SchemaVersionRow, SchemaVersionRow.schema_id == SchemaRow.id)
                .where(SchemaVersionRow.id == schema_version_id)
            )
        if blob is None:
            raise _unknown_version(schema_version_id)
        return codec.decode_schema(blob)

    def load_signature(self, schema_version_id: int) -> ModuleSignature:
        """The module signature of a schema version; `UsageError` if there is none."""
        with self._read() as session:
            blob = session.scalar(
                select(ModuleSignatureRow.modules)
                .join(SchemaVersionRow, SchemaVersionRow.signature_id == ModuleSignatureRow.id)
                .where(SchemaVersionRow.id == schema_version_id)
            )
        if blob is None:
            raise _unknown_version(schema_version_id)
        return codec.decode_signature(blob)

    def nearest_candidates(self, schema: Schema, limit: int = 10) -> list[tuple[SchemaVersionRecord, float]]:
        """Schema versions whose schemas are most similar to `schema`, best first, with similarity.

        Similarity is the exact Jaccard index of the feature sets (`sketch.features`: entry names
        plus structural leaf/shape features), in [0, 1]. Candidates come from the LSH band index,
        so schemas sharing less than ~20% of features may be missed; an empty list means nothing
        registered is close.
        """
        with self._read() as session:
            ranked = nearest.rank(session, schema, limit)
            if not ranked:
                return []
            score = dict(ranked)
            query = _version_query().where(SchemaVersionRow.schema_id.in_(list(score)))
            records = [(_version_record(row), score[row[0].schema_id]) for row in session.execute(query)]
        records.sort(key=lambda pair: (-pair[1], pair[0].variant, -pair[0].version))
        return records[:limit]

    # --- events ---------------------------------------------------------------------------

    def events(self, since: datetime | None = None, variant: str | None = None) -> list[EventRecord]:
        """The audit log, oldest first, filtered by time and variant."""
        with self._read() as session:
            query = select(EventRow).order_by(EventRow.id)
            if since is not None:
                query = query.where(EventRow.at >= since)
            if variant is not None:
                query = query.where(EventRow.variant == variant)
            return [
                EventRecord(r.id, r.at, r.who, r.host, r.action, r.subject, r.variant, dict(r.details or {}))
                for r in session.scalars(query)
            ]

    # --- internals ------------------------------------------------------------------------

    def _read(self):
        return self._sessions.scope(write=False)

    def _write(self, work):
        if self.readonly:
            raise DatabaseError(f"database {self.url_display} was opened read-only")
        return self._sessions.run_write(work)

    def _event(self, session: Session, action: str, subject: str, variant: str | None, **details: Any) -> None:
        session.add(EventRow(at=utcnow(), who=self.user, host=self.host, action=action, subject=subject,
                             variant=variant, details=details))

    def _variant_row(self, session: Session, name: str) -> VariantRow:
        row = session.scalars(select(VariantRow).where(VariantRow.name == name)).one_or_none()
        if row is None:
            raise _unknown_variant(name)
        return row

    def _variant_name(self, session: Session, variant_id: int) -> str:
        return session.scalar(select(VariantRow.name).where(VariantRow.id == variant_id))

    def _variant_record(self, session: Session, row: VariantRow) -> VariantRecord:
        family = session.scalar(select(FamilyRow.name).where(FamilyRow.id == row.family_id))
        latest = session.execute(
            select(SchemaVersionRow.version, SchemaVersionRow.fingerprint)
            .where(SchemaVersionRow.variant_id == row.id).order_by(SchemaVersionRow.version.desc()).limit(1)
        ).first()
        return VariantRecord(
            id=row.id, name=row.name, family=family, config=json.loads(row.config_json), config_json=row.config_json,
            description=row.description, is_default=row.is_default, created_at=row.created_at,
            created_by=row.created_by, latest_version=latest[0] if latest else None,
            latest_fingerprint=latest[1] if latest else None, family_source=row.family_source,
        )

    def _version_by_id(self, session: Session, schema_version_id: int) -> SchemaVersionRecord:
        row = session.execute(_version_query().where(SchemaVersionRow.id == schema_version_id)).first()
        if row is None:
            raise _unknown_version(schema_version_id)
        return _version_record(row)


# --- module helpers ---------------------------------------------------------------------------


def _version_query():
    family = aliased(FamilyRow)
    return (
        select(SchemaVersionRow, VariantRow.name, family.name, SchemaRow.entry_count, SchemaRow.numel)
        .join(VariantRow, VariantRow.id == SchemaVersionRow.variant_id)
        .join(family, family.id == VariantRow.family_id)
        .join(SchemaRow, SchemaRow.id == SchemaVersionRow.schema_id)
    )


def _version_record(row: Any) -> SchemaVersionRecord:
    version, variant, family, entry_count, numel = row
    return SchemaVersionRecord(
        id=version.id, variant=variant, family=family, version=version.version, fingerprint=version.fingerprint,
        signature_hash=version.signature_hash, entry_count=entry_count, numel=numel,
        code_revision=version.code_revision, package_versions=dict(version.package_versions or {}),
        created_at=version.created_at, created_by=version.created_by, behaviour=version.behaviour,
    )


def _schema_id(session: Session, schema: Schema) -> int:
    """Id of the stored schema with these entries (dtypes included), storing it if new."""
    text = codec.schema_text(schema)
    digest = codec.content_hash(text)
    found = session.scalar(select(SchemaRow.id).where(SchemaRow.content_hash == digest))
    if found is not None:
        return found
    packed, buckets = nearest.index_entries(schema)
    row = SchemaRow(content_hash=digest, fingerprint=schema.fingerprint, entry_count=len(schema), numel=schema.numel,
                    entries=codec.encode_text(text), sketch=packed)
    session.add(row)
    session.flush()
    session.add_all(SchemaSketchBandRow(bucket=bucket, schema_id=row.id) for bucket in buckets)
    return row.id


def _signature_id(session: Session, signature: ModuleSignature) -> int:
    found = session.scalar(select(ModuleSignatureRow.id).where(ModuleSignatureRow.hash == signature.hash))
    if found is not None:
        return found
    row = ModuleSignatureRow(hash=signature.hash, module_count=len(signature.modules),
                             modules=codec.encode_text(signature.canonical_text))
    session.add(row)
    session.flush()
    return row.id


def _unknown_variant(name: str) -> UsageError:
    return UsageError(f"unknown variant {name!r}", hint="`registry variants list` shows the registered variants")


def _unknown_version(schema_version_id: int) -> UsageError:
    return UsageError(f"no schema version with id {schema_version_id}")


def _variant_conflict(name: str, old_family: str, old: dict[str, Any], new_family: str,
                      new: dict[str, Any]) -> UsageError:
    differences = []
    if old_family != new_family:
        differences.append(f"family: registered {old_family}, given {new_family}")
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            differences.append(
                f"{key}: registered {json.dumps(old.get(key, '<unset>'))}, given {json.dumps(new.get(key, '<unset>'))}"
            )
    return UsageError(
        f"variant {name!r} is already registered with a different config ({'; '.join(differences)})",
        hint=f"register the new config under another name, or see `registry variants show {name}`",
    )
