"""The reference trainer (DESIGN §8): any registered variant, synthetic data, AdamW, resumable.

`train(spec)` is the library entry point `registry train` calls. Rank 0 (the only process when
run alone) resolves the build through the registry, records the run and writes every checkpoint;
under `torchrun` the other ranks build what rank 0 broadcasts and wait at a barrier while it
writes. A checkpoint at step `s` holds the state after `s` optimizer steps, and the batch of step
`s` is drawn from a generator seeded by (seed, step, rank), so a resumed run sees the same data
the uninterrupted run would have.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from registry.errors import RegistryError, UsageError
from registry.lineage import embedded_record

from . import distributed
from .checkpoints import remove_interrupted_writes, write_training_checkpoint
from .environment import RankInfo
from .recording import record_run, record_written_checkpoint
from .resume import PartialLoad, ResumePlan, ResumeRefused, load_plan, plan_resume
from .signals import EXIT_PREEMPTED, StopRequest, stop_on_preemption

COMPLETED, PREEMPTED, UP_TO_DATE = "completed", "preempted", "up-to-date"
# Between checkpoints a progress line at most this often: a sign of life on a terminal, at most
# 360 lines an hour in a batch job's log (a line per step would flood it).
PROGRESS_SECONDS = 10.0


@dataclass(frozen=True)
class TrainSpec:
    """What to train. `steps` is the step to stop at (not a count), so a requeued job given the
    same command line finishes where the original would have. `every=0` checkpoints only at the end."""

    out_dir: str
    steps: int
    every: int = 0
    variant: str | None = None
    family: str | None = None
    resume: str | None = None  # a checkpoint path, or "latest" (the newest in out_dir, if any)
    allow_partial: bool = False
    batch_size: int = 2
    lr: float = 1e-3
    seed: int = 0
    allow_unsafe: bool = False


@dataclass
class TrainResult:
    status: str  # completed | preempted | up-to-date
    variant: str
    family: str
    start_step: int
    step: int
    run_id: str | None = None
    resumed_from: str | None = None
    conversion: dict[str, Any] | None = None
    partial: PartialLoad | None = None
    checkpoints: list[str] = field(default_factory=list)
    signal: str | None = None
    rank: int = 0  # under torchrun only rank 0 reports

    @property
    def exit_code(self) -> int:
        return EXIT_PREEMPTED if self.status == PREEMPTED else 0

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "partial"}
        out["partial"] = None if self.partial is None else {"not_loaded": self.partial.not_loaded,
                                                            "ignored": self.partial.ignored}
        out["exit_code"] = self.exit_code
        return out


@dataclass
class _Start:
    """Rank 0's decision, broadcast to every rank."""

    variant: str
    family: str
    config: dict[str, Any]
    schema_version_id: int
    fingerprint: str
    step: int
    run_id: str | None = None
    optimizer: dict[str, Any] | None = None
    family_source: str | None = None  # so every rank builds a class family with its config class


def _plan(reg: Any, spec: TrainSpec, log: Callable[[str], None]) -> ResumePlan | None:
    kwargs = dict(family=spec.family, variant=spec.variant, allow_partial=spec.allow_partial,
                  allow_unsafe=spec.allow_unsafe)
    if spec.resume is None:
        return None
    if spec.resume != "latest":
        if not Path(spec.resume).exists():
            raise UsageError(f"--resume {spec.resume}: no such file or folder")
        return plan_resume(reg, spec.resume, **kwargs)
    from registry.latest import open_latest

    plan = open_latest(spec.out_dir, lambda found: plan_resume(reg, str(found.path), **kwargs), log)
    if plan is None:
        log(f"no checkpoint in {spec.out_dir} yet: starting a new run")
    return plan


def _fresh_variant(reg: Any, spec: TrainSpec) -> tuple[Any, Any]:
    if spec.variant is None:
        raise UsageError("nothing to resume and no --variant: name the build to start",
                         hint="e.g. registry train --variant ctvit/tiny --out runs/ctvit --steps 100")
    variant = reg.require_variant(spec.variant)
    if spec.family is not None and variant.family != spec.family:
        raise UsageError(f"variant {spec.variant} is a {variant.family}, not a {spec.family}")
    version = reg.latest_schema_version(spec.variant)
    if version is None:
        raise UsageError(f"variant {spec.variant} has no schema version yet", hint="run `registry init`")
    return variant, version


def _build(family: Any, config: dict[str, Any], seed: int) -> Any:
    import torch

    from registry.families import make_config

    torch.manual_seed(seed)
    return family.build(make_config(family, config))


def _decide(reg: Any, spec: TrainSpec, ranks: RankInfo, log: Callable[[str], None]) -> tuple[_Start, ResumePlan | None, Any]:
    """Rank 0: what to build, its loaded model and optimizer state; the run is recorded here."""
    from registry.families import family_of_variant
    from registry.schema import schema_of_module

    for leftover in remove_interrupted_writes(Path(spec.out_dir)):
        log(f"removed {leftover.name}, left by an interrupted checkpoint write")
    plan = _plan(reg, spec, log)
    if plan is None:
        variant, version = _fresh_variant(reg, spec)
        start = _Start(variant.name, variant.family, variant.config, version.id, version.fingerprint, 0,
                       family_source=variant.family_source)
    else:
        start = _Start(plan.variant, plan.family, plan.config, plan.schema_version_id, "", plan.step,
                       optimizer=plan.training.optimizer, family_source=plan.family_source)
    family = family_of_variant(start)
    if family.make_batch is None or family.compute_loss is None:  # a class family: the user's trainer trains it
        raise UsageError(f"registry train needs synthetic batches and a loss, and family {family.name} declares "
                         "neither (make_batch, compute_loss hooks); nothing was trained",
                         hint="train it with your own trainer: registry.resume(...) and registry.start_run(...)")
    model = _build(family, start.config, spec.seed)
    start.fingerprint = schema_of_module(model).fingerprint
    if plan is None and start.fingerprint != reg.get_schema_version(start.schema_version_id).fingerprint:
        raise ResumeRefused(f"the current code builds {start.variant} differently from its registered schema",
                            hint="`registry check` shows what moved; `registry variants bump` records the new layout")
    if plan is not None:
        load_plan(model, plan)
        if plan.training.rng is not None:
            import torch

            torch.set_rng_state(plan.training.rng)
        _describe(plan, log)
    if start.step < spec.steps:
        start.run_id = record_run(reg, variant=start.variant, schema_version_id=start.schema_version_id,
                                  config=start.config, ranks=ranks, plan=plan)
    return start, plan, model


def _describe(plan: ResumePlan, log: Callable[[str], None]) -> None:
    how = f"converted in memory by {plan.conversion['method']}" if plan.conversion else f"evidence: {plan.match.evidence}"
    if plan.partial is not None:
        how = f"WARM START: {len(plan.partial.not_loaded)} tensors of the build were not loaded"
    log(f"resuming {plan.variant} from {plan.source} at step {plan.step} ({how})")
    if plan.conversion and plan.training.optimizer is None:
        log("the optimizer state could not be carried across the conversion: AdamW starts fresh")
    elif plan.partial is None and plan.training.optimizer is None:
        log("the checkpoint holds no optimizer state: AdamW starts fresh")
    if plan.partial is not None:
        for name in plan.partial.not_loaded:
            shapes = plan.partial.shape_mismatch.get(name)
            log(f"  not loaded: {name}" + (f" (checkpoint {list(shapes[0])}, build {list(shapes[1])})" if shapes else ""))
        for name in plan.partial.ignored:
            log(f"  ignored from checkpoint: {name}")


def _loss_module(family: Any, model: Any) -> Any:
    """A module whose `forward` is the family's loss, so DistributedDataParallel sees (and syncs)
    it; alone, it simply computes the loss."""
    import torch

    class LossModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, batch: Any) -> Any:
            return family.compute_loss(self.model, batch)

    return LossModule()


def train(spec: TrainSpec, *, db: str | None = None, log: Callable[[str], None] = print) -> TrainResult:
    """Train (or resume) as `spec` says; returns what happened.

    Raises `ResumeRefused` (exit 1) when the checkpoint matches no registered build (nothing is
    written), `UsageError`, `CheckpointError` or `DatabaseError` as the library does. On
    SIGTERM/SIGUSR1 it writes a checkpoint and returns status `preempted` (`exit_code` 75).
    """
    if spec.steps < 0 or spec.every < 0 or spec.batch_size < 1:
        raise UsageError("--steps and --every must be ≥ 0 and --batch-size ≥ 1")
    ranks = RankInfo.from_environment()
    distributed.init(ranks)
    reg = None
    try:
        if ranks.is_leader:
            from registry.store import open_registry

            reg = open_registry(db)
        # Signals are caught from the start, so a pre-emption during set-up still ends cleanly.
        with stop_on_preemption() as stop:
            return _train(spec, reg, ranks, log if ranks.is_leader else (lambda _msg: None), stop)
    finally:
        if reg is not None:
            reg.close()
        distributed.shutdown(ranks)


def _train(spec: TrainSpec, reg: Any, ranks: RankInfo, log: Callable[[str], None], stop: StopRequest) -> TrainResult:
    import torch

    from registry.families import family_of_variant, make_config

    decided = None
    try:
        decided = _decide(reg, spec, ranks, log) if ranks.is_leader else None
    finally:
        # Every rank waits for rank 0's decision; None tells them rank 0 failed (and says why).
        start = distributed.broadcast(ranks, decided[0] if decided else None)
    if start is None:
        raise RegistryError("rank 0 could not resolve the build; see its log")
    plan, model = (decided[1], decided[2]) if decided else (None, None)
    family = family_of_variant(start)
    if model is None:
        model = _build(family, start.config, spec.seed)
    result = TrainResult(UP_TO_DATE, start.variant, start.family, start.step, start.step, start.run_id,
                         resumed_from=plan.source if plan else None, conversion=plan.conversion if plan else None,
                         partial=plan.partial if plan else None, rank=ranks.rank)
    if start.step >= spec.steps:
        log(f"{start.variant} is already at step {start.step} (--steps {spec.steps}): nothing to train")
        return result

    log(f"training {start.variant} from step {start.step} to {spec.steps} (run {start.run_id}, {ranks.world_size} process"
        f"{'es' if ranks.world_size > 1 else ''})")
    parameters = list(model.named_parameters())
    optimizer = torch.optim.AdamW([p for _, p in parameters], lr=spec.lr)
    if start.optimizer is not None:
        optimizer.load_state_dict(start.optimizer)
    trained = distributed.wrap(ranks, _loss_module(family, model))
    config = make_config(family, start.config)
    step, last_saved = start.step, start.step
    reported_at, reported_step = time.monotonic(), step

    def save(reason: str) -> None:
        if ranks.is_leader:
            metadata = embedded_record(variant=start.variant, family=start.family, config=start.config,
                                       fingerprint=start.fingerprint, run_id=start.run_id, step=step, prefix="")
            path = write_training_checkpoint(Path(spec.out_dir), step, model.state_dict(), metadata,
                                             optimizer.state_dict(), [n for n, _ in parameters], torch.get_rng_state())
            record_written_checkpoint(reg, path, fingerprint=start.fingerprint, step=step,
                                      schema_version_id=start.schema_version_id, run_id=start.run_id)
            result.checkpoints.append(str(path))
            log(f"{reason} → {path}")
        distributed.barrier(ranks)

    try:
        while step < spec.steps:
            generator = torch.Generator().manual_seed(spec.seed * 1_000_003 + step * 101 + ranks.rank)
            batch = family.make_batch(config, spec.batch_size, generator)
            loss = trained(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            result.step = step
            if step == spec.steps or (spec.every and step % spec.every == 0):
                save(f"step {step}/{spec.steps} loss {loss.item():.4f}")
                last_saved = step
                reported_at, reported_step = time.monotonic(), step
            elif time.monotonic() - reported_at >= PROGRESS_SECONDS:
                now = time.monotonic()
                log(f"step {step}/{spec.steps} loss {loss.item():.4f} "
                    f"({(step - reported_step) / max(now - reported_at, 1e-9):.2f} steps/s)")
                reported_at, reported_step = now, step
            if distributed.any_rank(ranks, stop.requested):
                result.signal = stop.signal_name or "SIGTERM"
                if step != last_saved:
                    save(f"{result.signal}: checkpoint at step {step}")
                result.status = PREEMPTED
                break
        else:
            result.status = COMPLETED
    except KeyboardInterrupt:
        _end_after_error(reg, start.run_id, "cancelled")
        raise
    except BaseException:
        _end_after_error(reg, start.run_id, "failed")
        raise
    _end(reg, start.run_id, result.status)
    return result


def _end(reg: Any, run_id: str | None, status: str) -> None:
    if reg is not None and run_id is not None:
        reg.end_run(run_id, status)


def _end_after_error(reg: Any, run_id: str | None, status: str) -> None:
    """Record the end of a failed run without hiding the error that ended it."""
    try:
        _end(reg, run_id, status)
    except RegistryError:
        pass
