"""Decide what a resumed job builds and loads: match → build → strict load, or refuse with the diff.

The trainer never starts from scratch behind the user's back (the second incident): a checkpoint
that no registered build loads exactly, and no converter turns into one, stops the job with the
diff. `allow_partial=True` is the one explicit way to warm-start from the tensors that fit, and
every tensor that was not loaded is listed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from registry.errors import RegistryError, UsageError
from registry.matching import AMBIGUOUS, CONVERTIBLE, EXACT, INFERRED, MatchResult, match_checkpoint
from registry.readers import CheckpointInfo, read_checkpoint

from .checkpoints import TrainingState, training_state_of


class ResumeRefused(RegistryError):
    """No registered build loads the checkpoint as it is: a negative answer (exit 1).

    `details` holds the diff and the suggested commands, one line each.
    """

    exit_code = 1

    def __init__(self, message: str, *, details: list[str] | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.details = details or []


@dataclass
class PartialLoad:
    """What `--allow-partial` did: the build's entries left at their fresh initialisation."""

    not_loaded: list[str]  # entries of the model not taken from the checkpoint (missing or shape differs)
    ignored: list[str]  # entries of the checkpoint the model has no place for
    shape_mismatch: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)


@dataclass
class ResumePlan:
    """Everything a trainer needs to continue from a checkpoint.

    The checkpoint is read at most once (`contents`): an exact match's weights are read when
    `load_plan` (or `state_dict`) asks for them, straight into the model; a torch file is unpickled
    once for its weights and its other entries (`training`). `loaded` holds tensors already in
    memory (converted, or a warm start's).
    """

    source: str
    info: CheckpointInfo
    match: MatchResult
    variant: str
    family: str
    config: dict[str, Any]
    schema_version_id: int
    step: int
    contents: Any = field(repr=False)  # registry.tensors.CheckpointContents
    loaded: dict[str, Any] | None = field(default=None, repr=False)
    conversion: dict[str, Any] | None = None  # converter, exact, source fingerprint (in-memory conversion)
    partial: PartialLoad | None = None
    parent_run_id: str | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. optimizer state that could not be carried
    family_source: str | None = None  # the variant's recorded source: `family_of_variant(plan)` builds it

    _training: TrainingState | None = field(default=None, repr=False)
    _released: bool = field(default=False, repr=False)
    _schema: Any = field(default=None, repr=False)

    @property
    def strict(self) -> bool:
        return self.partial is None

    @property
    def training(self) -> TrainingState:
        """The checkpoint's other entries (optimizer, RNG, `extra`); a torch file's are unpickled on
        first use (the unpickle the weights come from too). Raises `CheckpointError`."""
        if self._training is None:
            self._training = training_state_of(self.contents.payload(), self.info.container)
            if self.match.prefix:  # a sub-model's optimizer state is not ours to take (the user's stays in extra)
                self._training = TrainingState(None, None, self._training.rng, self._training.extra)
        return self._training

    @property
    def state_dict(self) -> dict[str, Any]:
        """The tensors the model loads, by its names (an exact match's are read on first use; {}
        once `release`d)."""
        if self._released:
            return {}
        return self.loaded if self.loaded is not None else self.contents.state_dict(self.match.prefix)

    @property
    def schema(self) -> Any:
        """The schema of what the model loads (`registry.schema.Schema`), without reading a tensor."""
        from registry.schema import schema_of_state_dict

        if self._schema is None:
            self._schema = (schema_of_state_dict(self.loaded) if self.loaded is not None
                            else self.contents.schema(self.match.prefix))
        return self._schema

    def release(self) -> None:
        """Forget the tensors once the model holds them (`training` and `schema` stay)."""
        self.schema  # noqa: B018  (computed from tensors about to be dropped)
        if self.contents.payload_read:
            self.training  # noqa: B018  (the entries of the payload about to be dropped)
        self.contents.release()
        self.loaded, self._released = None, True


def _refuse(info: CheckpointInfo, match: MatchResult) -> ResumeRefused:
    details = match.diff.lines(limit=8) if match.diff else []
    details += [f"suggestion: {s}" for s in match.suggestions]
    if match.status == AMBIGUOUS:
        names = ", ".join(sorted({c.variant for c in match.candidates}))
        return ResumeRefused(f"{info.path}: several variants build this checkpoint ({names}); nothing was trained",
                             details=details, hint="choose one with --variant")
    if match.status == INFERRED:
        return ResumeRefused(
            f"{info.path}: an unregistered {match.family} config rebuilds this checkpoint; nothing was trained",
            details=details, hint="register it with the suggested `registry variants add`, then resume again",
        )
    best = f" (nearest: {match.candidates[0].variant})" if match.candidates else ""
    return ResumeRefused(
        f"{info.path}: no registered build loads this checkpoint{best}; nothing was trained",
        details=details, hint="convert it (see the suggestion), or pass --allow-partial to warm-start from the tensors that fit",
    )


def _parent_run(reg: Any, info: CheckpointInfo) -> str | None:
    """The run that wrote the checkpoint: its embedded run id, else the registry's record of the file."""
    run_id = info.embedded_run_id
    if run_id is not None and reg.get_run(run_id) is not None:
        return run_id
    stat = os.stat(info.path)
    record = reg.find_checkpoint(os.path.abspath(info.path), stat.st_size, stat.st_mtime)
    return record.run_id if record is not None else None


def _parameter_names(family_name: str, config: Any) -> list[str]:
    """`model.parameters()` order of a build, by name (built on the meta device)."""
    from registry.families import build_on_meta, family_of_variant, make_config

    family = family_of_variant(family_name)  # loaded by the match that chose the converter
    if isinstance(config, dict):
        config = make_config(family, config)
    return [name for name, _ in build_on_meta(family, config).named_parameters()]


def _converted(contents: Any, match: MatchResult, training: TrainingState):
    """The converted state dict, the conversion record, the training state carried across, and warnings.

    The source tensors are loaded once and serve both the weights and the optimizers' moments
    (ours and the user's: see `carried_state`).
    """
    from registry.convert import matched_converter

    from .carried_state import converted_optimizers

    info = contents.info
    converter, source_config = matched_converter(match)
    source = contents.state_dict(match.prefix)
    state = converter.convert_state_dict(source, source_config)
    conversion = {"method": converter.name, "exact": converter.exact, "source": os.path.abspath(info.path),
                  "source_fingerprint": info.schema.fingerprint, "in_memory": True}
    extra, warnings = converted_optimizers(
        training.extra,
        source_names=lambda: _parameter_names(converter.source_family, source_config),
        source_state=source,
        convert=(lambda moments: converter.convert_state_dict(moments, source_config)) if converter.exact else None,
        target_names=lambda: _parameter_names(match.family, match.config),
    )
    optimizer = extra.get("optimizer") if training.optimizer is not None else None
    names = extra.get("optimizer_param_names") if optimizer is not None else None
    return state, conversion, TrainingState(optimizer, names, training.rng, extra), warnings


def _partial(reg: Any, contents: Any, match: MatchResult, variant: str | None) -> tuple[Any, dict, PartialLoad]:
    """The target variant's record, the tensors that fit it, and what was left out."""
    info = contents.info
    target = variant or (match.candidates[0].variant if match.candidates else None)
    if target is None:
        raise ResumeRefused(f"{info.path}: --allow-partial needs a build to warm-start, and no registered schema is near",
                            hint="name one with --variant")
    record = reg.require_variant(target)
    expected = reg.load_schema(reg.latest_schema_version(target).id)
    wanted = {e.name: e.shape for e in expected}
    state = contents.state_dict()
    fits = {name: t for name, t in state.items() if name in wanted and tuple(t.shape) == tuple(wanted[name])}
    mismatch = {name: (tuple(state[name].shape), tuple(shape)) for name, shape in wanted.items()
                if name in state and name not in fits}
    partial = PartialLoad(
        not_loaded=sorted(set(wanted) - set(fits)),
        ignored=sorted(set(state) - set(wanted)),
        shape_mismatch=mismatch,
    )
    return record, fits, partial


def plan_resume(
    reg: Any,
    path: str,
    *,
    family: str | None = None,
    variant: str | None = None,
    allow_partial: bool = False,
    allow_unsafe: bool = False,
    map_location: Any = "cpu",
    load_tensors: bool = True,
) -> ResumePlan:
    """Match `path` and prepare what to build and load; nothing is written.

    `family`/`variant` restrict which builds may load it (a diffusers-UNet job asks for
    `family="diffusers-unet"`, so an LDM checkpoint is converted in memory). Raises
    `ResumeRefused` (exit 1) when no registered build loads it exactly or through an exact
    converter — unless `allow_partial`, which warm-starts the named (or nearest) variant from the
    tensors that fit, at step 0 with a fresh optimizer. Raises `CheckpointError` (exit 3) for an
    unreadable file.

    `plan.training.extra` holds the checkpoint's other top-level entries (the user's
    `optimizer_state_dict`, scheduler, epoch, ...) untouched, except optimizer state after a
    conversion (carried into the new layout, or removed: see `carried_state`) and after a partial
    warm start (removed); each removal is in `plan.warnings`. `map_location` places them.

    The checkpoint is read once: a torch file is unpickled once (memory-mapped where its format
    allows) for its weights and its other entries. `load_tensors=False` reads nothing more than
    the metadata for an exact match: `load_plan` reads the weights straight into the model, or a
    framework that loads the checkpoint itself (Lightning, Accelerate) skips them; the other
    entries are unpickled when `plan.training` is first used. The default reads them here, so a
    checkpoint that does not load fails here (`open_latest` then tries the one before it).
    """
    from registry.tensors import CheckpointContents

    if variant is not None:
        known = reg.require_variant(variant)
        if family is not None and known.family != family:
            raise UsageError(f"variant {variant} is a {known.family}, not a {family}")
    info = read_checkpoint(path, allow_unsafe=allow_unsafe)
    match = match_checkpoint(reg, info, family=family, variant=variant)
    contents = CheckpointContents(info, map_location=map_location)
    step = info.step or 0
    training = state = conversion = partial = None
    warnings: list[str] = []
    if match.status == EXACT:
        pass  # the plan reads the weights and the other entries when they are asked for
    elif match.status == CONVERTIBLE:
        entries = training_state_of(contents.payload(), info.container)
        state, conversion, training, warnings = _converted(contents, match, entries)
    elif allow_partial and match.status not in (AMBIGUOUS, INFERRED):
        from .carried_state import without_optimizers

        entries = training_state_of(contents.payload(), info.container)
        record, state, partial = _partial(reg, contents, match, variant)
        match.variant, match.family, match.config = record.name, record.family, record.config
        match.schema_version_id = reg.latest_schema_version(record.name).id
        extra, warnings = without_optimizers(entries.extra, "a warm start trains another layout")
        training, step = TrainingState(None, None, None, extra), 0
    else:
        raise _refuse(info, match)
    plan = ResumePlan(
        source=os.path.abspath(path), info=info, match=match, variant=match.variant, family=match.family,
        config=match.config, schema_version_id=match.schema_version_id, step=step, contents=contents, loaded=state,
        conversion=conversion, partial=partial, parent_run_id=_parent_run(reg, info),
        warnings=warnings, family_source=_family_source(reg, match.variant), _training=training,
    )
    if load_tensors:
        plan.training, plan.state_dict  # noqa: B018  (read now: a checkpoint that does not load fails here)
    return plan


def _family_source(reg: Any, variant: str | None) -> str | None:
    record = reg.get_variant(variant) if variant else None
    return record.family_source if record is not None else None


def load_plan(model: Any, plan: ResumePlan) -> None:
    """Load the plan's tensors into `model` (built from `plan.family`/`plan.config`), strictly unless
    the plan is a declared partial warm start.

    Raises `ResumeRefused` when today's code builds the variant differently from the schema the
    checkpoint matched (drift), and `RegistryError` when a warm start loaded other tensors than planned.
    """
    from registry.diff import diff_schemas
    from registry.schema import schema_of_module

    built, loaded = schema_of_module(model), plan.schema
    if plan.strict and built.fingerprint != loaded.fingerprint:
        # The variant's recorded schema matched, but today's code builds it differently (drift).
        lines = diff_schemas(built, loaded, missing_label="missing in checkpoint",
                             unexpected_label="unexpected in checkpoint").lines(limit=8)
        raise ResumeRefused(f"the current code builds {plan.variant} differently from {plan.source}; nothing was trained",
                            details=lines, hint="`registry check` shows what moved")
    if plan.loaded is None:  # an exact match: read once, straight into the model
        plan.contents.load_into(model, plan.match.prefix)
        plan.release()
        return
    result = model.load_state_dict(plan.loaded, strict=plan.strict)
    plan.release()
    # The list printed for a warm start must be exactly what stayed at its fresh initialisation.
    if plan.partial is not None and (sorted(result.missing_keys) != plan.partial.not_loaded or result.unexpected_keys):
        raise RegistryError(f"warm start loaded other tensors than planned: {sorted(result.missing_keys)[:5]}")
