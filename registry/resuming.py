"""`registry.resume`: your own trainer resumes through the registry in one call.

    resumed = registry.resume("runs/vit", family="src.models.vit:VideoViT")   # newest checkpoint
    if resumed is None:                      # the folder holds no checkpoint yet: a new run
        model, step = VideoViT(**config), 0
    else:
        model, step = resumed.model, resumed.step
        optimizer.load_state_dict(resumed.extra["optimizer_state_dict"])

The registry matches the checkpoint (embedded metadata, then its record, then the fingerprint,
then converters), builds the variant that loads it — whatever config your YAML now says — and
loads it strictly. A checkpoint no registered build loads raises `ResumeRefused` (exit 1) with the
grouped diff: it never starts over behind your back.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from registry.matching import MatchResult
    from registry.training.resume import PartialLoad, ResumePlan


class ResumeWarning(UserWarning):
    """Something a resume left out that your trainer must know about (an optimizer state that could
    not be carried across a conversion, a newest checkpoint that did not read)."""


@dataclass
class Resumed:
    """A checkpoint resumed through the registry.

    - `model`: the variant built by its family and loaded strictly (conversions applied); its
      train/eval mode is the build's own, on `map_location`.
    - `config`: what the family builds from — its config dataclass for a registered family; for a
      class family the constructor's keyword arguments as a dict (`Class(**resumed.config)`), or
      the class's config object when its constructor takes one. `config_dict`: the canonical JSON
      form (every default filled in), as the registry stores it.
    - `step`: the step the checkpoint records (`step`, `global_step`, the registry record), else
      the step in its name (`step-120.pt`, `checkpoint-120/`); None when neither says; 0 after a
      partial warm start.
    - `extra`: every other top-level entry of the checkpoint, untouched (your
      `optimizer_state_dict`, scheduler, epoch, ...), except optimizer state after an in-memory
      conversion (carried into the new layout, or removed with a warning) and after a partial
      warm start (removed). Empty for a bare state dict, a safetensors file and a checkpoint
      folder (restore an accelerate folder's optimizer with `accelerator.load_state(resumed.path)`).
    - `path`: the file or folder actually resumed (the newest one when you passed a folder).
    - `run_id`: the registered run that wrote it, if any: `registry.start_run(resumed=...)` links
      the new run to it.
    """

    variant: str
    family: str
    config: Any
    config_dict: dict[str, Any]
    model: Any
    step: int | None
    extra: dict[str, Any]
    path: str
    match: "MatchResult"
    conversion: dict[str, Any] | None = None
    partial: "PartialLoad | None" = None
    warnings: list[str] = field(default_factory=list)
    run_id: str | None = None
    plan: "ResumePlan | None" = field(default=None, repr=False)


@contextlib.contextmanager
def opened_registry(db: Any, *, readonly: bool = False) -> Iterator[Any]:
    """An open registry from `db`: a URL (None: `REGISTRY_DB`, then the default) or an open `Registry`
    (left open)."""
    if db is not None and not isinstance(db, (str, os.PathLike)):
        yield db
        return
    from registry.store import open_registry

    with open_registry(None if db is None else os.fspath(db), readonly=readonly) as reg:
        yield reg


def user_config(family: Any, config: Any) -> Any:
    """The config in the form the family's own code takes (see `Resumed.config`): the config
    dataclass of a registered family as it is; for a class family named `pkg.module:Class`, the
    constructor's keyword arguments as a dict, or the config object its constructor takes."""
    import dataclasses
    import inspect

    origin = getattr(family, "origin", None)
    if getattr(origin, "kind", None) != "class" or not dataclasses.is_dataclass(config):
        return config
    from registry.class_family import import_target

    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    cls = import_target(origin.module)
    names = {p.name for p in inspect.signature(cls).parameters.values()
             if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}
    if names <= set(fields):  # keyword arguments are the config (none at all for `Class()`)
        return fields
    config_type = import_target(origin.config_class) if origin.config_class else _single_annotation(cls)
    if config_type is None or isinstance(config, config_type):
        return config
    return config_type(**fields)  # a plain (non-dataclass) config class, built from its fields


def _single_annotation(cls: type) -> type | None:
    import typing

    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001  (an annotation only importable under TYPE_CHECKING)
        return None
    types = [t for name, t in hints.items() if name != "return" and isinstance(t, type)]
    return types[0] if len(types) == 1 else None


def resume(
    path_or_dir: str | os.PathLike[str],
    *,
    family: str | None = None,
    variant: str | None = None,
    db: Any = None,
    allow_partial: bool = False,
    map_location: Any = "cpu",
) -> Resumed | None:
    """Resume `path_or_dir` through the registry; returns a `Resumed`, or None for a folder that
    holds no checkpoint at all (or does not exist yet): start a new run there.

    A folder means its newest checkpoint (`registry.latest`: `step-N.pt`, accelerate
    `checkpoint-N/`, Lightning `epoch=E-step=S.ckpt` and `last.ckpt`, DCP `step-N/`, DeepSpeed's
    `latest` tag); a newest one that does not read is skipped with a warning. `family`/`variant` restrict which builds may load it (a
    diffusers-UNet trainer passes `family="diffusers-unet"`, so an LDM checkpoint is converted in
    memory). `db`: a database URL or an open `Registry` (default: `REGISTRY_DB`, then the `db` of
    the nearest `[tool.registry]` table, then the default SQLite file). `map_location` ("cpu", "cuda:0", a torch.device) places the model and `extra`.

    Raises `ResumeRefused` (exit 1) when no registered build loads the checkpoint (its `details`
    hold the grouped diff and the suggested fix) or several do (pass `variant`); `allow_partial`
    instead warm-starts the named or nearest variant from the tensors that fit (`partial` lists
    the rest). Raises `CheckpointError` (exit 3) for an unreadable file, `UsageError` (exit 2) for a
    missing file or a folder whose checkpoint names tell nothing, `DatabaseError` (exit 4).
    """
    from registry.families import family_of_variant, make_config
    from registry.latest import latest_checkpoint, open_latest
    from registry.training.resume import load_plan, plan_resume

    if latest_checkpoint(path_or_dir) is None:  # before opening the database: a first run may have none yet
        return None

    def loaded(found: Any) -> tuple[Any, Any, Any, Any, Any]:
        """The checkpoint read once, into the build it needs: the plan reads only metadata, then the
        one unpickle of a torch file gives the other entries and the weights (a DCP folder's go
        straight into the model). Inside `open_latest`, so a newest checkpoint that does not load
        is skipped."""
        plan = plan_resume(reg, str(found.path), family=family, variant=variant, allow_partial=allow_partial,
                           map_location=map_location, load_tensors=False)
        plan.training  # noqa: B018  (the other entries: the unpickle the weights come from too)
        built_family = family_of_variant(plan)  # its family source names a class family's config class
        config = make_config(built_family, plan.config)
        model = built_family.build(config)
        load_plan(model, plan)  # and the plan lets go of the tensors: no second copy stays alive
        return found, plan, built_family, config, model

    skipped: list[str] = []
    with opened_registry(db, readonly=True) as reg:
        done = open_latest(path_or_dir, loaded, skipped.append)
        if done is None:
            return None
        found, plan, built_family, config, model = done
    import torch

    if isinstance(map_location, (str, torch.device)):  # torch.load's dict and function forms place tensors only
        model.to(map_location)
    step = 0 if plan.partial is not None else (plan.info.step if plan.info.step is not None else found.step)
    notes = [*skipped, *plan.warnings]
    for note in notes:
        warnings.warn(note, ResumeWarning, stacklevel=2)
    return Resumed(
        variant=plan.variant, family=plan.family, config=user_config(built_family, config), config_dict=plan.config,
        model=model, step=step, extra=plan.training.extra, path=plan.source, match=plan.match,
        conversion=plan.conversion, partial=plan.partial, warnings=notes, run_id=plan.parent_run_id, plan=plan,
    )
