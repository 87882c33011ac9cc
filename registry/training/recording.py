"""What the trainer writes to the registry (rank 0 only): the run, its checkpoints, its end.

Kept apart from the loop so the loop reads as training, and so another trainer that calls the
library can record its runs the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from registry.errors import RegistryError
from registry.store.provenance import code_revision

from .environment import RankInfo, current_user, host_name, scheduler_job_id
from .resume import ResumePlan


def register_source(reg: Any, plan: ResumePlan) -> int:
    """The registry id of the checkpoint a run resumes from (insert-or-get: ours are already there)."""
    info, match = plan.info, plan.match
    stat = os.stat(info.path)
    if plan.conversion is None and plan.partial is None:
        schema_version_id = match.schema_version_id
    else:  # the file is in the source layout: name its schema version only when exactly one is known
        known = reg.find_by_fingerprint(info.fingerprint)
        schema_version_id = known[0].id if len(known) == 1 else None
    record = reg.register_checkpoint(
        os.path.abspath(info.path), size=stat.st_size, mtime=stat.st_mtime, format=info.format,
        container=info.container, wrapper=info.wrapper, prefix=match.prefix if plan.partial is None else "",
        fingerprint=info.fingerprint, step=info.step, schema_version_id=schema_version_id,
        run_id=plan.parent_run_id,
    )
    return record.id


def _family_revision(reg: Any, variant: str) -> str | None:
    """The revision of the code that builds `variant` (a user's repository for their own family)."""
    from registry.families import family_of_variant

    record = reg.require_variant(variant)
    try:
        return code_revision(family_of_variant(record.family, record.family_source))
    except RegistryError:  # the family is not loaded here: the run still records, without a revision
        return None


def record_run(reg: Any, *, variant: str, schema_version_id: int, config: dict[str, Any], ranks: RankInfo,
               plan: ResumePlan | None) -> str:
    """Record the run (status `running`) with where it runs and what it resumed; returns its id."""
    details: dict[str, Any] = {}
    if plan is not None and plan.conversion is not None:
        details["conversion"] = dict(plan.conversion, target=variant)
    if plan is not None and plan.partial is not None:
        details["warm_start"] = {"source": plan.source, "not_loaded": len(plan.partial.not_loaded),
                                 "ignored": len(plan.partial.ignored)}
    run = reg.start_run(
        variant, schema_version_id=schema_version_id, config=config, host=host_name(), user=current_user(),
        scheduler_job_id=scheduler_job_id(), world_size=ranks.world_size, code_revision=_family_revision(reg, variant),
        resumed_from_checkpoint_id=register_source(reg, plan) if plan is not None else None,
        parent_run_id=plan.parent_run_id if plan is not None else None,
        resume_details=details or None,
    )
    return run.id


def record_written_checkpoint(reg: Any, path: Path, *, fingerprint: str, step: int, schema_version_id: int,
                              run_id: str) -> None:
    """Record a checkpoint the trainer has just written (`step-N.pt`, model under `model`): its
    identity is known, so nothing is read back (`registry.scan.record_checkpoint` reads a file)."""
    stat = os.stat(path)
    reg.register_checkpoint(
        os.path.abspath(path), size=stat.st_size, mtime=stat.st_mtime, format="torch-zip", container="model",
        wrapper=None, prefix="", fingerprint=fingerprint, step=step, schema_version_id=schema_version_id,
        run_id=run_id,
    )
