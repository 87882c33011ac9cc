"""PyTorch Lightning: a callback that records runs, labels every checkpoint and resolves resumes.

    from registry.integrations.lightning import RegistryCallback

    trainer = Trainer(callbacks=[ModelCheckpoint(save_last=True), RegistryCallback(model_attr="model")])
    trainer.fit(LitModel(config=today_s_default), ckpt_path="last")

- Every checkpoint `ModelCheckpoint` writes carries the registry record (`ckpt["registry"]`:
  variant, config, fingerprint, run, step) and is recorded as the run's once written.
- On `fit(ckpt_path=...)` (a path or "last") the checkpoint is matched before Lightning loads it.
  When it was trained with another config than the module was built with, the callback rebuilds
  `pl_module.<model_attr>` from the checkpoint's variant (before the optimizers exist), so the
  resume picks the checkpoint's config. When only a converter makes it loadable (an LDM UNet into
  a diffusers UNet), the weights and AdamW's moments are converted as the file is read. When no
  registered build loads it, `ResumeRefused` stops the fit with the grouped diff.
- The run is recorded on fit start and ended with its outcome; only global rank 0 writes.

`model_for_checkpoint(path)` builds and loads the inner model a checkpoint holds (to evaluate it,
or to construct the LightningModule around it).
"""

from __future__ import annotations

from typing import Any

from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch.callbacks import Callback


class RegistryCheckpointIO(CheckpointIO):
    """Wraps the strategy's checkpoint IO: recording after each save, registry resolution at load."""

    def __init__(self, inner: CheckpointIO, callback: "RegistryCallback"):
        self.inner = inner
        self.callback = callback

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)
        if self.callback.run is not None:
            self.callback.run.log_checkpoint(path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Any = None) -> dict[str, Any]:
        self.callback.resolve(path)  # refuses before Lightning reads a byte of a checkpoint nothing loads
        checkpoint = self.inner.load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        return self.callback.apply(checkpoint)

    def remove_checkpoint(self, path: Any) -> None:
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        self.inner.teardown()


class RegistryCallback(Callback):
    """Registry resolution, labelling and recording for a LightningModule whose network is the
    attribute `model_attr` (a registered variant's build). `family` restricts which builds may load
    a checkpoint; `variant` names what the module builds for a new run (needed where several
    variants share its schema; a resume takes the checkpoint's). `db` is a URL or an open
    `Registry` (default: REGISTRY_DB, the pyproject's `db`, then the default file)."""

    def __init__(self, *, model_attr: str = "model", family: str | None = None, variant: str | None = None,
                 db: Any = None):
        self.model_attr = model_attr
        self.family = family
        self.variant = variant
        self.db = db
        self.run: Any = None
        self.plan: Any = None
        self._module: Any = None

    @property
    def prefix(self) -> str:
        return f"{self.model_attr}."

    # --- hooks ---------------------------------------------------------------------------------

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._module = pl_module
        if not isinstance(trainer.strategy.checkpoint_io, RegistryCheckpointIO):
            trainer.strategy.checkpoint_io = RegistryCheckpointIO(trainer.strategy.checkpoint_io, self)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        from registry.lineage import start_run

        self.run = start_run(self._inner(pl_module), variant=self.variant, resumed=self._resumed(pl_module),
                             db=self.db) if trainer.is_global_zero else None

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if self.run is not None:
            checkpoint["registry"] = self.run.checkpoint_metadata(self._inner(pl_module), step=trainer.global_step,
                                                                  prefix=self.prefix)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.run is not None:
            self.run.end("completed")

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self.run is not None:
            self.run.end("cancelled" if isinstance(exception, KeyboardInterrupt) else "failed")

    # --- resolution ----------------------------------------------------------------------------

    def _inner(self, pl_module: Any) -> Any:
        from registry.errors import UsageError

        inner = getattr(pl_module, self.model_attr, None)
        if inner is None:
            raise UsageError(f"{type(pl_module).__name__} has no attribute {self.model_attr!r}",
                             hint="pass RegistryCallback(model_attr=...) naming the module that holds the network")
        return inner

    def resolve(self, path: Any) -> None:
        """Match the checkpoint; raises `ResumeRefused` (exit 1) with the diff when nothing loads it."""
        from registry.resuming import opened_registry
        from registry.training.resume import plan_resume

        with opened_registry(self.db, readonly=True) as reg:  # Lightning reads an exact match's file itself, once
            self.plan = plan_resume(reg, str(path), family=self.family, load_tensors=False)

    def apply(self, checkpoint: dict[str, Any]) -> dict[str, Any]:
        """Rebuild the inner model from the checkpoint's config where the module's differs; put the
        converted weights (and carried optimizer state) into `checkpoint` when it was converted."""
        from registry.families import family_of_variant, make_config
        from registry.schema import schema_of_module

        plan, module = self.plan, self._module
        if plan.match.prefix not in ("", self.prefix):
            from registry.errors import UsageError

            raise UsageError(f"{plan.source} holds the {plan.variant} build under {plan.match.prefix!r}, not under "
                             f"{self.prefix!r}", hint="pass RegistryCallback(model_attr=...) naming that attribute")
        wanted = plan.schema.fingerprint
        if schema_of_module(self._inner(module)).fingerprint != wanted:
            family = family_of_variant(plan)
            setattr(module, self.model_attr, family.build(make_config(family, plan.config)))
            module.print(f"registry: {plan.source} was trained as {plan.variant}; rebuilt `{self.model_attr}` "
                         "from its config")
        if plan.conversion is not None:
            state = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(self.prefix)}
            state.update({self.prefix + k: v for k, v in plan.state_dict.items()})
            checkpoint["state_dict"] = state
            carried = plan.training.extra.get("optimizer_states")
            if carried is not None:
                checkpoint["optimizer_states"] = carried
            for note in plan.warnings:
                module.print(f"registry: {note}")
        plan.release()
        return checkpoint

    def _resumed(self, pl_module: Any) -> Any:
        if self.plan is None:
            return None
        from registry.resuming import Resumed

        plan = self.plan
        return Resumed(variant=plan.variant, family=plan.family, config=plan.config, config_dict=plan.config,
                       model=self._inner(pl_module), step=plan.step, extra={}, path=plan.source, match=plan.match,
                       conversion=plan.conversion, run_id=plan.parent_run_id, plan=plan)


def model_for_checkpoint(path: Any, *, family: str | None = None, variant: str | None = None, db: Any = None) -> Any:
    """The network a Lightning checkpoint holds, built from its matched variant and loaded strictly
    (a `registry.Resumed`: `.model`, `.config`, `.step`). Raises `ResumeRefused` (exit 1)."""
    from registry.resuming import resume

    return resume(path, family=family, variant=variant, db=db)
