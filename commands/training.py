"""`registry train`: the reference trainer, with `--resume PATH|latest`."""

from __future__ import annotations

import click

from ._output import db_url, emit_json, json_option


@click.command("train")
@click.option("--variant", help="The build to train (e.g. ctvit/tiny); with --resume, the only build it may load.")
@click.option("--family", help="With --resume: load only into a build of this family (converting if needed).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the checkpoints (step-NNNNNNNN.pt).")
@click.option("--steps", required=True, type=click.IntRange(min=0), help="The step to stop at (not a count): a requeued job repeats the same command.")
@click.option("--every", default=0, show_default=True, type=click.IntRange(min=0), help="Checkpoint every N steps (0: only at the end).")
@click.option("--resume", metavar="PATH|latest", help="Continue from a checkpoint, or from the newest one in --out (none yet: start at step 0).")
@click.option("--allow-partial", is_flag=True, help="Warm-start from the tensors that fit when no build loads the checkpoint exactly; lists every tensor not loaded.")
@click.option("--batch-size", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=1e-3, show_default=True, type=float, help="AdamW learning rate.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seeds the initialisation and the synthetic batches.")
@click.option("--allow-unsafe", is_flag=True, help="Read a checkpoint whose pickle would run code (it is still loaded with weights_only).")
@json_option
@click.pass_context
def train_command(ctx: click.Context, variant: str | None, family: str | None, out_dir: str, steps: int, every: int,
                  resume: str | None, allow_partial: bool, batch_size: int, lr: float, seed: int,
                  allow_unsafe: bool, as_json: bool) -> None:
    """Train a registered variant on synthetic data, or resume a checkpoint into the build that loads it.

    With --resume the registry picks the build from the checkpoint (embedded metadata, then the
    fingerprint); a checkpoint that only a converter makes loadable is converted in memory. When
    no registered build loads it, nothing is written and the diff is printed (exit 1) — unless
    --allow-partial. Every run and checkpoint is recorded in the registry.

    Exit codes: 0 done; 1 no build loads the checkpoint; 2 usage; 3 unreadable checkpoint;
    4 database; 75 pre-empted (SIGTERM/SIGUSR1: a checkpoint was written; requeue the job and
    --resume latest continues at the same step).

    \b
    Examples:
      registry train --variant ctvit/tiny --out runs/ctvit --steps 100 --every 20
      registry train --family ctvit --out runs/ctvit --steps 200 --every 20 --resume latest
      registry train --family diffusers-unet --out runs/unet --steps 50 --resume runs/ldm/step-00000020.pt
    """
    from registry.training import TrainSpec, train

    _check_out_dir(out_dir)
    spec = TrainSpec(out_dir=out_dir, steps=steps, every=every, variant=variant, family=family, resume=resume,
                     allow_partial=allow_partial, batch_size=batch_size, lr=lr, seed=seed, allow_unsafe=allow_unsafe)
    log = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    result = train(spec, db=db_url(ctx), log=log)
    if result.rank == 0:  # under torchrun, rank 0 speaks for the job
        _report(result, as_json)
    ctx.exit(result.exit_code)


def _check_out_dir(out_dir: str) -> None:
    """Refuse an --out that cannot hold checkpoints before anything is recorded (exit 2); the
    folder itself is created by the first checkpoint, so a failed run leaves none behind."""
    import os

    from registry.errors import UsageError

    existing = os.path.abspath(out_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    problem = ("is not a folder" if not os.path.isdir(existing)
               else "is not writable" if not os.access(existing, os.W_OK | os.X_OK) else None)
    if problem:
        where = "" if existing == os.path.abspath(out_dir) else f" ({existing} {problem})"
        raise UsageError(f"cannot write checkpoints to {out_dir}{where or ': it ' + problem}",
                         hint="name a folder you can write to with --out")


def _report(result, as_json: bool) -> None:
    if as_json:
        emit_json(result.to_json())
    elif result.status == "completed":
        click.echo(f"done: {result.variant} at step {result.step} (run {result.run_id})")
    elif result.status == "preempted":
        click.echo(f"pre-empted by {result.signal} at step {result.step}: checkpoint written; "
                   f"requeue with --resume latest (exit {result.exit_code})")
