"""Hugging Face Accelerate: resume through the registry, save with the registry record, record runs.

    from registry.integrations.accelerate import AccelerateCheckpoints

    checkpoints = AccelerateCheckpoints(accelerator, family="diffusers-unet")
    resolved = checkpoints.resolve("runs/unet")            # before building: None for a new run
    model = UNet2DConditionModel(**(resolved.config if resolved else my_config))
    model, optimizer = accelerator.prepare(model, optimizer)
    step = checkpoints.load(model)                         # 0 for a new run; records the run
    ...
    checkpoints.save(f"runs/unet/checkpoint-{step:08d}", step=step)
    checkpoints.end("completed")

`resolve` matches the newest checkpoint of a folder (or the one named) and says which variant and
config it needs; `load` checks the model you built is that build and loads it — with
`accelerator.load_state` when the layout is the checkpoint's, or converted in memory (an LDM UNet
checkpoint into a diffusers UNet, AdamW's moments included) when only a converter makes it
loadable. A checkpoint no registered build loads raises `ResumeRefused` with the grouped diff:
the incident's `try: load / except: start from scratch` has nothing to catch by accident.

`save` runs `accelerator.save_state`, writes the registry record beside the weights
(`registry.json`: variant, config, fingerprint, run, step) and records the checkpoint; only the
main process writes to the registry. accelerate's safetensors save keeps only one of a model's
empty tensors (CTViT's `null_kv` when num_null_kv=0): the record lists the others
(`empty_tensors`), so the folder still matches the build and `load` restores it strictly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from registry.errors import UsageError
from registry.readers.folders import EMPTY_TENSORS, RESTORED_EMPTY

RECORD_FILE = "registry.json"  # the registry record in a checkpoint folder (read by registry.readers)


@dataclass(frozen=True)
class Resolved:
    """What a checkpoint needs: the variant, the config to build it from, the step it holds."""

    variant: str
    family: str
    config: Any  # the family's own config form (see `registry.Resumed.config`)
    config_dict: dict[str, Any]
    step: int
    path: str
    converted: bool  # loading converts it in memory (`conversion` says how)
    conversion: dict[str, Any] | None


class AccelerateCheckpoints:
    """Registry-aware `save_state` / `load_state` for one Accelerate training loop.

    `family` restricts which builds may load a checkpoint (a diffusers-UNet trainer passes
    `family="diffusers-unet"`, so an LDM checkpoint is converted); `variant` names what the model
    builds for a new run (needed where several variants share its schema; a resume takes the
    checkpoint's). `db`: a database URL or an open `Registry` (default: REGISTRY_DB, the
    pyproject's `db`, then the default file).
    """

    def __init__(self, accelerator: Any, *, family: str | None = None, variant: str | None = None, db: Any = None):
        self.accelerator = accelerator
        self.family = family
        self.variant = variant
        self.db = db
        self.plan: Any = None
        self.resolved: Resolved | None = None
        self.run: Any = None
        self._needed: Any = None  # the schema the checkpoint's build has (the converted one's, if converted)

    # --- resuming ------------------------------------------------------------------------------

    def resolve(self, path_or_dir: str | os.PathLike[str]) -> Resolved | None:
        """Match the checkpoint (a folder's newest `checkpoint-N/`, or the one named); None when the
        folder holds none yet. Raises `ResumeRefused` (exit 1) with the diff when no registered
        build loads it, `CheckpointError` (exit 3), `DatabaseError` (exit 4)."""
        from registry.families import family_of_variant, make_config
        from registry.latest import latest_checkpoint, open_latest
        from registry.resuming import opened_registry, user_config
        from registry.training.resume import plan_resume

        if latest_checkpoint(path_or_dir) is None:
            return None
        skipped: list[str] = []
        with opened_registry(self.db, readonly=True) as reg:
            found = open_latest(path_or_dir, lambda f: (f, plan_resume(reg, str(f.path), family=self.family,
                                                                        load_tensors=False)),
                                skipped.append)  # an exact match's weights are read once, by load_state
            if found is None:
                return None
            self._needed = reg.load_schema(found[1].schema_version_id)
        latest, self.plan = found
        for note in [*skipped, *self.plan.warnings]:
            self.accelerator.print(f"registry: {note}")
        family = family_of_variant(self.plan)
        step = self.plan.info.step if self.plan.info.step is not None else (latest.step or 0)
        self.resolved = Resolved(self.plan.variant, self.plan.family,
                                 user_config(family, make_config(family, self.plan.config)), self.plan.config, step,
                                 self.plan.source, self.plan.conversion is not None, self.plan.conversion)
        return self.resolved

    def load(self, model: Any) -> int:
        """Load the resolved checkpoint into `model` (the prepared one), its optimizer and scheduler,
        and record the run (main process). Returns the step to continue from (0 when `resolve`
        found no checkpoint: a new run).

        Raises `ResumeRefused` (exit 1) when `model` is not the build the checkpoint needs (build it
        from `resolved.config`), `UnregisteredModelError` (exit 1) for a new run whose model no
        registered variant builds.
        """
        from registry.lineage import start_run
        from registry.resuming import Resumed

        unwrapped = self.accelerator.unwrap_model(model)
        if self.plan is None:
            self.run = start_run(unwrapped, variant=self.variant, db=self.db)
            return 0
        self._check_build(unwrapped)
        if self.plan.conversion is None:
            # accelerate restores everything itself, strictly; only when registry.json restored empty
            # tensors its file lacks (their names are all safetensors' strict load would miss: the
            # model matched the restored schema exactly) is it told not to be
            restored = bool(self.plan.info.metadata.get(RESTORED_EMPTY))
            self.accelerator.load_state(self.plan.source, **({"strict": False} if restored else {}))
        else:
            self._load_converted(unwrapped)
        resumed = Resumed(variant=self.plan.variant, family=self.plan.family, config=self.resolved.config,
                          config_dict=self.plan.config, model=unwrapped, step=self.resolved.step, extra={},
                          path=self.plan.source, match=self.plan.match, conversion=self.plan.conversion,
                          run_id=self.plan.parent_run_id, plan=self.plan)
        self.run = start_run(unwrapped, resumed=resumed, db=self.db)
        self.plan.release()  # loaded: keep no second copy of the weights
        return self.resolved.step

    def _check_build(self, model: Any) -> None:
        from registry.diff import diff_schemas
        from registry.schema import schema_of_module
        from registry.training.resume import ResumeRefused

        built = schema_of_module(model)
        if built.fingerprint != self._needed.fingerprint:
            lines = diff_schemas(self._needed, built, missing_label="missing in your model",
                                 unexpected_label="not in the checkpoint").lines(limit=8)
            raise ResumeRefused(
                f"the model you built is not the {self.plan.variant} build that {self.plan.source} needs; "
                "nothing was loaded", details=lines,
                hint="build the model from `resolved.config` (AccelerateCheckpoints.resolve)")

    def _load_converted(self, model: Any) -> None:
        """Weights converted in memory; AdamW state and the scheduler carried from the folder's files."""
        import torch

        from registry.convert import matched_converter
        from registry.families import build_on_meta, family_of_variant, make_config
        from registry.training.carried_state import converted_optimizers

        def parameter_names(family_name: str, config: Any) -> list[str]:
            family = family_of_variant(family_name)  # loaded by the match that chose the converter
            config = make_config(family, config) if isinstance(config, dict) else config
            return [name for name, _ in build_on_meta(family, config).named_parameters()]

        model.load_state_dict(self.plan.state_dict, strict=True)
        folder = self.plan.source
        optimizers = self.accelerator._optimizers
        files = {index: os.path.join(folder, "optimizer.bin" if index == 0 else f"optimizer_{index}.bin")
                 for index in range(len(optimizers))}
        states = {f"optimizer_{i}": torch.load(path, map_location="cpu", weights_only=True)
                  for i, path in files.items() if os.path.exists(path)}
        if states:
            converter, source_config = matched_converter(self.plan.match)
            source = self.plan.contents.state_dict(self.plan.match.prefix)  # kept from the conversion: not read again
            carried, notes = converted_optimizers(
                states, source_names=lambda: parameter_names(converter.source_family, source_config),
                source_state=source,
                convert=(lambda m: converter.convert_state_dict(m, source_config)) if converter.exact else None,
                target_names=lambda: [name for name, _ in model.named_parameters()])
            for note in notes:
                self.accelerator.print(f"registry: {note}")
            for index, optimizer in enumerate(optimizers):
                if f"optimizer_{index}" in carried:
                    optimizer.load_state_dict(carried[f"optimizer_{index}"])
        for index, scheduler in enumerate(self.accelerator._schedulers):
            path = os.path.join(folder, "scheduler.bin" if index == 0 else f"scheduler_{index}.bin")
            if os.path.exists(path):
                scheduler.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.accelerator.print(f"registry: converted {folder} in memory ({self.plan.conversion['method']}); "
                               "random-number states start fresh")

    # --- saving --------------------------------------------------------------------------------

    def save(self, output_dir: str | os.PathLike[str], *, step: int) -> str:
        """`accelerator.save_state(output_dir)`, then (main process) the registry record beside the
        weights and the checkpoint recorded as this run's. Returns the folder."""
        if self.run is None:
            raise UsageError("AccelerateCheckpoints.save before load: call load(model) once after prepare()")
        output_dir = os.fspath(output_dir)
        self.accelerator.save_state(output_dir)
        if self.accelerator.is_main_process:
            model = self.accelerator.unwrap_model(self.accelerator._models[0])
            record = self.run.checkpoint_metadata(model, step=step)
            dropped = _dropped_empty_tensors(model, output_dir)
            if dropped:
                record[EMPTY_TENSORS] = dropped
                self.accelerator.print(f"registry: accelerate's save left out {len(dropped)} empty tensor(s) it took for "
                                       f"shared storage; {RECORD_FILE} restores them")
            temporary = os.path.join(output_dir, f".{RECORD_FILE}.tmp")
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(record, handle, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, os.path.join(output_dir, RECORD_FILE))
            self.run.log_checkpoint(output_dir)
        self.accelerator.wait_for_everyone()
        return output_dir

    def end(self, status: str = "completed") -> None:
        """Record the run's end (completed, failed, preempted or cancelled); main process only."""
        if self.run is not None:
            self.run.end(status)


def _dropped_empty_tensors(model: Any, folder: str) -> dict[str, dict[str, Any]]:
    """The model's zero-element entries that the weights `save_state` wrote lack, as registry.json's
    `empty_tensors` ({name: {"shape", "dtype"}}). accelerate's safetensors save drops all but one of
    a model's empty tensors (every one has storage pointer 0 and size 0, so it takes them for shared
    storage); without them the folder would not match the model's build, nor load strictly."""
    from registry.readers import read_checkpoint
    from registry.schema import schema_of_module

    empty = [entry for entry in schema_of_module(model) if entry.numel == 0]
    if not empty:
        return {}
    info = read_checkpoint(folder)  # metadata only; an earlier record's restored names do not count
    held = set(info.schema.names) - set(info.metadata.get(RESTORED_EMPTY) or ())
    return {e.name: {"shape": list(e.shape), "dtype": e.dtype} for e in empty if e.name not in held}
