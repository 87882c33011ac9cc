"""The write side for your own trainer: record the run, embed the registry record in each
checkpoint you save, record the saved file — so `registry audit` shows your runs and their
resume chains, and `registry match` knows your checkpoints by their own label first.

    run = registry.start_run(model, resumed=resumed)          # rank 0 records; other ranks get a no-op
    ckpt = {"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(),
            "epoch": epoch, "registry": run.checkpoint_metadata(model, step=step)}
    torch.save(ckpt, path)
    run.log_checkpoint(path)
    run.end("completed")                                      # or: with registry.start_run(...) as run:

The run is identified by the model itself: its fingerprint names the registered variant it builds
(pass `variant=` when several variants share a schema). A model that no registered variant builds
is refused at `start_run`, before any step is trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import RegistryError, UsageError
from .resuming import Resumed, opened_registry
from .schema import short_form


class UnregisteredModelError(RegistryError):
    """The model a trainer runs or saves is not a registered build of the variant it claims (or of
    any variant): a negative answer (exit 1)."""

    exit_code = 1


def _unwrapped(model: Any) -> Any:
    """The user's module inside DistributedDataParallel/DataParallel (`.module`) and torch.compile
    (`._orig_mod`), whose names the readers strip too."""
    while True:
        inner = getattr(model, "_orig_mod", None) or (getattr(model, "module", None)
                                                      if type(model).__name__ in ("DistributedDataParallel", "DataParallel")
                                                      else None)
        if inner is None:
            return model
        model = inner


def _fingerprint(model: Any) -> str:
    from .schema import schema_of_module

    return schema_of_module(_unwrapped(model)).fingerprint


def _identify(reg: Any, model: Any, variant: str | None) -> tuple[Any, Any]:
    """The variant record and the schema version `model` builds; raises `UnregisteredModelError`."""
    fingerprint = _fingerprint(model) if model is not None else None
    if variant is not None:
        record = reg.require_variant(variant)
        versions = reg.schema_versions(variant)
        if fingerprint is None:
            if not versions:
                raise UsageError(f"variant {variant} has no schema version yet", hint="run `registry init`")
            return record, versions[-1]
        same = [v for v in versions if v.fingerprint == fingerprint]
        if not same:
            registered = short_form(versions[-1].fingerprint) if versions else "none"
            raise UnregisteredModelError(
                f"the model is not the registered build of {variant} (it fingerprints as {short_form(fingerprint)}, "
                f"the registered schema as {registered})",
                hint=f"`registry check {variant}` shows what moved; `registry variants bump {variant}` records an intended change",
            )
        return record, max(same, key=lambda v: v.version)
    if fingerprint is None:
        raise UsageError("start_run needs the model, a variant, or resumed=")
    found = reg.find_by_fingerprint(fingerprint)
    names = sorted({v.variant for v in found})
    if not names:
        raise UnregisteredModelError(
            f"no registered variant builds this model (fingerprint {short_form(fingerprint)})",
            hint="declare it under [tool.registry.variants] and run `registry init`, or `registry variants add`",
        )
    if len(names) > 1:
        raise UnregisteredModelError(f"several variants build this model ({', '.join(names)})",
                                     hint="name one: variant=...")
    return reg.require_variant(names[0]), max(found, key=lambda v: v.version)


@dataclass
class TrainingRun:
    """A run of your trainer, recorded in the registry. On ranks other than 0 of a `torchrun` group
    (`recording` False) every method does nothing: only rank 0 writes to the registry."""

    id: str | None
    variant: str | None
    family: str | None
    config: dict[str, Any] | None
    schema_version_id: int | None
    fingerprint: str | None
    db: Any = None
    recording: bool = True
    ended: str | None = None

    def checkpoint_metadata(self, model: Any, *, step: int, prefix: str = "") -> dict[str, Any]:
        """The registry record to store under `ckpt["registry"]` before you save (safetensors:
        `metadata={"registry": json.dumps(record)}`). `prefix`: where the model's keys sit in the
        saved state dict (`"model."` when you save a wrapper module's state).

        Raises `UnregisteredModelError` when `model` is no longer the build this run started with.
        Returns {} on ranks other than 0.
        """
        if not self.recording:
            return {}
        fingerprint = _fingerprint(model)
        if fingerprint != self.fingerprint:
            raise UnregisteredModelError(
                f"the model to save is not the {self.variant} build run {self.id} started with "
                f"(it fingerprints as {short_form(fingerprint)}, the run's as {short_form(str(self.fingerprint))})")
        return embedded_record(variant=self.variant, family=self.family, config=self.config, fingerprint=fingerprint,
                               run_id=self.id, step=step, prefix=prefix)

    def log_checkpoint(self, path: Any) -> Any:
        """Record the checkpoint you saved at `path` as this run's; see `registry.log_checkpoint`."""
        return log_checkpoint(path, run=self) if self.recording else None

    def end(self, status: str = "completed") -> None:
        """Record the end of the run: completed, failed, preempted or cancelled (once; again is a no-op)."""
        if not self.recording or self.ended is not None:
            return
        with opened_registry(self.db) as reg:
            reg.end_run(self.id, status)
        self.ended = status

    def __enter__(self) -> "TrainingRun":
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        if kind is None:
            self.end("completed")
            return
        try:  # record the end without hiding the error that ended the run
            self.end("cancelled" if issubclass(kind, KeyboardInterrupt) else "failed")
        except RegistryError:
            pass


def start_run(model: Any = None, *, variant: str | None = None, resumed: Resumed | None = None,
              db: Any = None) -> TrainingRun:
    """Record a run of your trainer (status `running`) and return its `TrainingRun`.

    The variant is `resumed.variant` when you resumed (the new run is linked to the run and the
    checkpoint it continues, and an in-memory conversion or warm start is recorded), else
    `variant`, else the one registered variant whose schema `model` builds. With `model`, its
    fingerprint is checked against that variant's registered schema before anything is written.
    Records host, user, Slurm job id and world size; under `torchrun` only rank 0 records (the
    others get a `TrainingRun` that does nothing).

    Raises `UnregisteredModelError` (exit 1) for a model no registered variant builds (or
    several: pass `variant`), `UsageError` (exit 2) for an unknown variant, `DatabaseError` (exit 4).
    """
    from .training.environment import RankInfo
    from .training.recording import record_run

    ranks = RankInfo.from_environment()
    if not ranks.is_leader:
        return TrainingRun(None, None, None, None, None, None, db=db, recording=False)
    with opened_registry(db) as reg:
        if resumed is not None and model is None:  # the schema version the checkpoint matched
            record, version = reg.require_variant(resumed.variant), reg.get_schema_version(resumed.plan.schema_version_id)
            plan = resumed.plan
        elif resumed is not None:
            record, version = _identify(reg, model, resumed.variant)
            plan = resumed.plan
        else:
            record, version = _identify(reg, model, variant)
            plan = None
        config = resumed.config_dict if resumed is not None else record.config
        run_id = record_run(reg, variant=record.name, schema_version_id=version.id, config=config, ranks=ranks,
                            plan=plan)
    return TrainingRun(run_id, record.name, record.family, config, version.id, version.fingerprint, db=db)


def checkpoint_metadata(model: Any, *, step: int, run: TrainingRun | None = None, variant: str | None = None,
                        db: Any = None, prefix: str = "") -> dict[str, Any]:
    """The registry record to embed under `ckpt["registry"]` before you save `model`'s checkpoint.

    With `run`, it names that run (see `TrainingRun.checkpoint_metadata`); without, the variant is
    `variant` or the one `model` builds, read from the registry, and no run is named. Raises
    `UnregisteredModelError` (exit 1) as `start_run` does.
    """
    if run is not None:
        return run.checkpoint_metadata(model, step=step, prefix=prefix)
    with opened_registry(db, readonly=True) as reg:
        record, version = _identify(reg, model, variant)
    return embedded_record(variant=record.name, family=record.family, config=record.config,
                           fingerprint=version.fingerprint, run_id=None, step=step, prefix=prefix)


def embedded_record(*, variant: str | None, family: str | None, config: dict[str, Any] | None, fingerprint: str,
                    run_id: str | None, step: int, prefix: str) -> dict[str, Any]:
    """The registry record a checkpoint carries under `ckpt["registry"]` (every trainer writes this
    one form): matching checks it first (`CheckpointInfo.embedded`), resume links the run it names."""
    return {"variant": variant, "family": family, "config": config, "fingerprint": fingerprint, "run_id": run_id,
            "step": step, "prefix": prefix}


def log_checkpoint(path: Any, *, run: TrainingRun | None = None, db: Any = None) -> Any:
    """Read the checkpoint you saved at `path` (metadata only, no pickle code runs), match it and
    record it (insert-or-get): its variant, step and run appear in `registry checkpoints list` and
    `registry audit`. Returns a `ScannedCheckpoint` (`status` "exact" when a registered build
    loads it, `variant`, `step`, `run_id`).

    The run is the one named by the record embedded with `checkpoint_metadata`, else `run`.
    Raises `UsageError` (exit 2) when the file names another run than `run`, `CheckpointError`
    (exit 3) for an unreadable file, `DatabaseError` (exit 4).
    """
    import os

    from .scan import record_checkpoint

    if run is not None and not run.recording:
        return None
    with opened_registry(db if run is None or db is not None else run.db) as reg:
        scanned = record_checkpoint(reg, os.fspath(path))
        if run is not None and scanned.run_id != run.id:
            if scanned.run_id is not None:
                raise UsageError(f"{path} was saved by run {scanned.run_id}, not {run.id}",
                                 hint="embed run.checkpoint_metadata(model, step=...) of the run that saves it")
            stat = os.stat(scanned.path)  # no embedded record: the file is this run's because the run says so
            reg.register_checkpoint(scanned.path, size=stat.st_size, mtime=stat.st_mtime, format=scanned.format,
                                    container=None, wrapper=None, prefix=None, fingerprint=scanned.fingerprint,
                                    run_id=run.id)
            from dataclasses import replace

            scanned = replace(scanned, run_id=run.id)
    return scanned
