"""Runs and checkpoints: the `Registry` methods that record training jobs and their files.

A mixin of `Registry` (see `api.py`), kept apart so each file reads in one sitting; it relies on
`Registry._read`, `_write`, `_event` and `_variant_row`.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.errors import UsageError

from .orm import CheckpointRow, FamilyRow, RunRow, SchemaVersionRow, VariantRow, utcnow
from .records import CheckpointRecord, RunRecord

RUN_STATUSES = ("running", "completed", "failed", "preempted", "cancelled")


def canonical_json(value: dict[str, Any]) -> str:
    """Keys sorted, no whitespace: the text that is stored and compared for configs."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class TrackingMixin:
    # --- checkpoints ----------------------------------------------------------------------

    def register_checkpoint(
        self,
        path: str,
        *,
        size: int,
        mtime: float,
        content_digest: str | None = None,
        format: str,  # noqa: A002  (the issue's field name)
        container: str | None,
        wrapper: str | None,
        prefix: str | None,
        fingerprint: str,
        step: int | None = None,
        schema_version_id: int | None = None,
        run_id: str | None = None,
        converted_from: dict[str, Any] | None = None,
    ) -> CheckpointRecord:
        """Insert-or-get the checkpoint at `path` with this size and mtime (its content identity).

        Callers pass an absolute path. For an existing row, a missing digest, step, schema
        version or run is filled in (one `checkpoint.update` event); nothing else changes.
        `converted_from` (source path, fingerprint, method) adds a `checkpoint.convert` event in the
        same transaction, so a conversion is never recorded half.
        Raises `UsageError` when the digest given differs from the recorded one.
        """

        def work(session: Session) -> CheckpointRecord:
            row = session.scalars(
                select(CheckpointRow).where(
                    CheckpointRow.path == path, CheckpointRow.size == size, CheckpointRow.mtime == mtime
                )
            ).one_or_none()
            if row is None:
                row = CheckpointRow(
                    path=path, size=size, mtime=mtime, content_digest=content_digest, format=format,
                    container=container, wrapper=wrapper, prefix=prefix, fingerprint=fingerprint, step=step,
                    schema_version_id=schema_version_id, run_id=run_id, created_at=utcnow(),
                )
                session.add(row)
                session.flush()
                self._event(session, "checkpoint.add", f"checkpoint {path}", self._variant_of(session, row),
                            id=row.id, fingerprint=fingerprint, step=step, run_id=run_id,
                            schema_version_id=schema_version_id, size=size)
                if converted_from:
                    self._event(session, "checkpoint.convert", f"checkpoint {path}", self._variant_of(session, row),
                                id=row.id, **converted_from)
                return self._checkpoint_record(session, row)
            if content_digest and row.content_digest and row.content_digest != content_digest:
                raise UsageError(
                    f"checkpoint {path} is recorded with content digest {row.content_digest}, not {content_digest}",
                    hint="the file changed without changing size or mtime; touch it and register again",
                )
            filled = {}
            for field, value in (("content_digest", content_digest), ("step", step),
                                 ("schema_version_id", schema_version_id), ("run_id", run_id)):
                if value is not None and getattr(row, field) is None:
                    setattr(row, field, value)
                    filled[field] = value
            if filled:
                session.flush()
                self._event(session, "checkpoint.update", f"checkpoint {path}", self._variant_of(session, row),
                            id=row.id, **filled)
            return self._checkpoint_record(session, row)

        return self._write(work)

    def find_checkpoint(self, path: str, size: int, mtime: float) -> CheckpointRecord | None:
        """The checkpoint registered at `path` with this size and mtime, or None."""
        with self._read() as session:
            row = session.scalars(
                select(CheckpointRow).where(
                    CheckpointRow.path == path, CheckpointRow.size == size, CheckpointRow.mtime == mtime
                )
            ).one_or_none()
            return None if row is None else self._checkpoint_record(session, row)

    def find_checkpoint_by_digest(self, digest: str) -> CheckpointRecord | None:
        """The most recently registered checkpoint with this content digest, or None."""
        with self._read() as session:
            row = session.scalars(
                select(CheckpointRow).where(CheckpointRow.content_digest == digest)
                .order_by(CheckpointRow.id.desc()).limit(1)
            ).first()
            return None if row is None else self._checkpoint_record(session, row)

    def list_checkpoints(self, run_id: str | None = None, variant: str | None = None) -> list[CheckpointRecord]:
        """Checkpoints, oldest first; `variant` matches the matched schema version's or the run's variant."""
        with self._read() as session:
            query = select(CheckpointRow).order_by(CheckpointRow.id)
            if run_id is not None:
                query = query.where(CheckpointRow.run_id == run_id)
            if variant is not None:
                by_version = select(SchemaVersionRow.id).join(VariantRow, VariantRow.id == SchemaVersionRow.variant_id)
                by_run = select(RunRow.id).join(VariantRow, VariantRow.id == RunRow.variant_id)
                query = query.where(
                    CheckpointRow.schema_version_id.in_(by_version.where(VariantRow.name == variant))
                    | CheckpointRow.run_id.in_(by_run.where(VariantRow.name == variant))
                )
            return [self._checkpoint_record(session, row) for row in session.scalars(query)]

    # --- runs -----------------------------------------------------------------------------

    def start_run(
        self,
        variant_name: str,
        *,
        schema_version_id: int | None,
        config: dict[str, Any],
        host: str,
        user: str,
        scheduler_job_id: str | None = None,
        world_size: int = 1,
        code_revision: str | None = None,
        resumed_from_checkpoint_id: int | None = None,
        parent_run_id: str | None = None,
        resume_details: dict[str, Any] | None = None,
    ) -> RunRecord:
        """Record a new run (status `running`); returns it. Its id is 16 hex digits of a UUID4.

        `resume_details` records how the run took its weights, in the same transaction:
        `{"conversion": {...}}` (an in-memory conversion) adds a `checkpoint.convert` event,
        `{"warm_start": {...}}` (a partial load) a `run.warm_start` event.
        Raises `UsageError` for an unknown variant.
        """

        def work(session: Session) -> RunRecord:
            variant = self._variant_row(session, variant_name)
            row = RunRow(
                id=uuid.uuid4().hex[:16], variant_id=variant.id, schema_version_id=schema_version_id,
                config_json=canonical_json(config), host=host, user=user, scheduler_job_id=scheduler_job_id,
                world_size=world_size, code_revision=code_revision, started_at=utcnow(), status="running",
                resumed_from_checkpoint_id=resumed_from_checkpoint_id, parent_run_id=parent_run_id,
            )
            session.add(row)
            session.flush()
            self._event(session, "run.start", f"run {row.id}", variant_name, run_id=row.id, host=host, user=user,
                        scheduler_job_id=scheduler_job_id, world_size=world_size,
                        resumed_from_checkpoint_id=resumed_from_checkpoint_id, parent_run_id=parent_run_id)
            details = resume_details or {}
            if "conversion" in details:
                self._event(session, "checkpoint.convert", f"run {row.id}", variant_name, run_id=row.id,
                            checkpoint_id=resumed_from_checkpoint_id, **details["conversion"])
            if "warm_start" in details:
                self._event(session, "run.warm_start", f"run {row.id}", variant_name, run_id=row.id,
                            checkpoint_id=resumed_from_checkpoint_id, **details["warm_start"])
            return self._run_record(session, row)

        return self._write(work)

    def end_run(self, run_id: str, status: str) -> RunRecord:
        """Mark a run ended with `status` (completed, failed, preempted, cancelled); returns it.

        Ending an ended run again with the same status is a no-op. Raises `UsageError` for an
        unknown run, an unknown status, or a run that already ended with another status.
        """
        if status not in RUN_STATUSES or status == "running":
            raise UsageError(f"unknown run status {status!r}", hint=f"use one of: {', '.join(RUN_STATUSES[1:])}")

        def work(session: Session) -> RunRecord:
            row = session.get(RunRow, run_id)
            if row is None:
                raise UsageError(f"unknown run {run_id!r}", hint="`registry runs list` shows the runs")
            if row.ended_at is not None:
                if row.status == status:
                    return self._run_record(session, row)
                raise UsageError(f"run {run_id} already ended with status {row.status}")
            row.ended_at = utcnow()
            row.status = status
            session.flush()
            self._event(session, "run.end", f"run {run_id}", self._variant_name(session, row.variant_id),
                        run_id=run_id, status=status)
            return self._run_record(session, row)

        return self._write(work)

    def get_run(self, run_id: str) -> RunRecord | None:
        """The run with this id, or None."""
        with self._read() as session:
            row = session.get(RunRow, run_id)
            return None if row is None else self._run_record(session, row)

    def list_runs(self, variant: str | None = None, family: str | None = None,
                  since: datetime | None = None) -> list[RunRecord]:
        """Runs, oldest first, filtered by variant name, family name and start time."""
        with self._read() as session:
            query = (select(RunRow).join(VariantRow, VariantRow.id == RunRow.variant_id)
                     .join(FamilyRow, FamilyRow.id == VariantRow.family_id).order_by(RunRow.started_at, RunRow.id))
            if variant is not None:
                query = query.where(VariantRow.name == variant)
            if family is not None:
                query = query.where(FamilyRow.name == family)
            if since is not None:
                query = query.where(RunRow.started_at >= since)
            return [self._run_record(session, row) for row in session.scalars(query)]

    # --- records ---------------------------------------------------------------------------

    def _variant_of(self, session: Session, row: CheckpointRow) -> str | None:
        if row.schema_version_id is not None:
            return session.scalar(
                select(VariantRow.name).join(SchemaVersionRow, SchemaVersionRow.variant_id == VariantRow.id)
                .where(SchemaVersionRow.id == row.schema_version_id)
            )
        if row.run_id is not None:
            return session.scalar(
                select(VariantRow.name).join(RunRow, RunRow.variant_id == VariantRow.id).where(RunRow.id == row.run_id)
            )
        return None


    def _checkpoint_record(self, session: Session, row: CheckpointRow) -> CheckpointRecord:
        return checkpoint_record(row, self._variant_of(session, row))

    def _run_record(self, session: Session, row: RunRow) -> RunRecord:
        variant, family = session.execute(
            select(VariantRow.name, FamilyRow.name).join(FamilyRow, FamilyRow.id == VariantRow.family_id)
            .where(VariantRow.id == row.variant_id)
        ).one()
        return run_record(row, variant, family)


def checkpoint_record(row: CheckpointRow, variant: str | None) -> CheckpointRecord:
    """The plain record of a checkpoint row; `variant` is its matched (else its run's) variant."""
    return CheckpointRecord(
        id=row.id, path=row.path, size=row.size, mtime=row.mtime, content_digest=row.content_digest,
        format=row.format, container=row.container, wrapper=row.wrapper, prefix=row.prefix,
        fingerprint=row.fingerprint, step=row.step, schema_version_id=row.schema_version_id,
        variant=variant, run_id=row.run_id, created_at=row.created_at,
    )


def run_record(row: RunRow, variant: str, family: str) -> RunRecord:
    """The plain record of a run row, with its variant's and family's names."""
    return RunRecord(
        id=row.id, variant=variant, family=family, schema_version_id=row.schema_version_id,
        config=json.loads(row.config_json), host=row.host, user=row.user, scheduler_job_id=row.scheduler_job_id,
        world_size=row.world_size, code_revision=row.code_revision, started_at=row.started_at,
        ended_at=row.ended_at, status=row.status, resumed_from_checkpoint_id=row.resumed_from_checkpoint_id,
        parent_run_id=row.parent_run_id,
    )
