"""Train the project's VideoViT on synthetic clips; `--resume latest` continues through the registry.

    python train.py --config configs/base_config.yaml --out runs/vit --steps 10
    python train.py --config configs/optimized.yaml --out runs/vit --steps 20 --resume latest

The second command resumes the baseline checkpoint even though its config now says RMSNorm: the
registry builds the config the checkpoint needs (or stops with the diff; it never starts over).
Lines marked `# registry` are all this trainer adds for the registry, besides printing its errors
(`registry.RegistryError`) at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

import registry  # registry
from src.models.vit import VideoViT

FAMILY = "src.models.vit:VideoViT"  # the class pyproject.toml's [tool.registry] variants name


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML with model.image_encoder and training")
    parser.add_argument("--out", required=True, help="checkpoint folder")
    parser.add_argument("--steps", type=int, required=True, help="the step to stop at")
    parser.add_argument("--resume", help="`latest` (the newest checkpoint in --out) or a checkpoint path")
    return parser.parse_args()


def synthetic_clips(config: dict, batch_size: int, step: int) -> torch.Tensor:
    """The batch of `step`: the same for a resumed run as for an uninterrupted one."""
    generator = torch.Generator().manual_seed(step)
    size = config.get("image_size", 16)
    return torch.randn(batch_size, config.get("channels", 1), config.get("frames", 2), size, size, generator=generator)


def save(path: Path, checkpoint: dict) -> None:
    """Write atomically: a job killed mid-write leaves the previous checkpoint the newest."""
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save(checkpoint, temporary)
    os.replace(temporary, path)


def main() -> None:
    args = parse_args()
    settings = yaml.safe_load(Path(args.config).read_text())
    model_config, training = settings["model"]["image_encoder"], settings.get("training", {})

    resumed = None
    if args.resume:
        resumed = registry.resume(args.out if args.resume == "latest" else args.resume, family=FAMILY)  # registry
    if resumed is None:
        print(f"new run of {args.config}" + (f" (no checkpoint in {args.out} yet)" if args.resume else ""))
        model, step = VideoViT(**model_config), 0
    else:
        model, step = resumed.model, resumed.step or 0
        print(f"resuming {resumed.variant} from {resumed.path} at step {step}")
        moved = {key: value for key, value in resumed.config.items() if model_config.get(key, value) != value}
        if moved:
            print(f"  {args.config} differs from the checkpoint in {sorted(moved)}: building the checkpoint's config")
        model_config = resumed.config

    optimizer = torch.optim.AdamW(model.parameters(), lr=training.get("lr", 1e-3))
    if resumed is not None and "optimizer_state_dict" in resumed.extra:
        optimizer.load_state_dict(resumed.extra["optimizer_state_dict"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    every = training.get("every", 5)

    with registry.start_run(model, resumed=resumed) as run:  # registry
        while step < args.steps:
            step += 1
            predicted, target = model(synthetic_clips(model_config, training.get("batch_size", 4), step))
            loss = F.mse_loss(predicted, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % every == 0 or step == args.steps:
                path = out / f"step-{step}.pt"
                save(path, {"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                            "step": step, "registry": run.checkpoint_metadata(model, step=step)})  # registry
                run.log_checkpoint(path)  # registry
                print(f"step {step} loss {loss.item():.4f} -> {path}")


if __name__ == "__main__":
    try:
        main()
    except registry.RegistryError as error:  # one line (plus the diff and a hint), the registry's exit code
        print(f"error: {error.message}", file=sys.stderr)
        for line in getattr(error, "details", []):
            print(f"  {line}", file=sys.stderr)
        if error.hint:
            print(f"hint: {error.hint}", file=sys.stderr)
        sys.exit(error.exit_code)
