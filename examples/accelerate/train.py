"""A small Accelerate training loop that saves and resumes through the registry.

    python examples/accelerate/train.py --out runs/unet --steps 8 --model ldm
    accelerate launch --multi_gpu --num_processes 2 examples/accelerate/train.py \
        --out runs/unet --steps 12 --model diffusers --resume latest

(Two processes on CPU: `--multi_gpu` selects torchrun's launcher, and `Accelerator(cpu=True)` keeps
the processes on the CPU with gloo; `--cpu --num_processes 2` would start a single process.)

The second command is the second incident with the registry in the loop: the team switched from
the hand-written LDM UNet to diffusers' UNet. `resolve` finds the LDM checkpoint, says which
diffusers config rebuilds it, and `load` converts it in memory (AdamW's moments too), so training
continues at the saved step instead of starting over. The registry lines are marked `# registry`.
"""

from __future__ import annotations

import argparse
import sys

import torch
from accelerate import Accelerator

from registry.catalog import get_builtin_variant
from registry.errors import RegistryError, report
from registry.families import get_family, make_config
from registry.integrations.accelerate import AccelerateCheckpoints  # registry

FAMILIES = {"ldm": ("ldm-unet", "ldm-unet/tiny"), "diffusers": ("diffusers-unet", "diffusers-unet/tiny")}


def dump_outputs(model, family, config, path):
    """The model's outputs on a fixed input (what the tests compare across a conversion)."""
    model.eval()
    with torch.no_grad():
        torch.save(family.probe(model, config, torch.Generator().manual_seed(0)), path)
    model.train()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder of checkpoint-N/ folders")
    parser.add_argument("--steps", type=int, required=True, help="the step to stop at")
    parser.add_argument("--every", type=int, default=2, help="save every K steps")
    parser.add_argument("--resume", choices=["latest"], help="continue from the newest checkpoint in --out")
    parser.add_argument("--model", choices=sorted(FAMILIES), default="diffusers")
    parser.add_argument("--db", help="registry database (default: REGISTRY_DB, then the default file)")
    parser.add_argument("--dump-on-resume", help="write the resumed model's outputs on a fixed input here")
    parser.add_argument("--dump-at-end", help="write the final model's outputs on a fixed input here")
    args = parser.parse_args()

    accelerator = Accelerator(cpu=True)
    family_name, default_variant = FAMILIES[args.model]
    family = get_family(family_name)
    checkpoints = AccelerateCheckpoints(accelerator, family=family_name, variant=default_variant, db=args.db)  # registry
    resolved = checkpoints.resolve(args.out) if args.resume else None  # registry
    values = resolved.config_dict if resolved else get_builtin_variant(default_variant).config  # registry
    config = make_config(family, values)

    torch.manual_seed(0)
    model = family.build(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    step = checkpoints.load(model)  # registry: 0 for a new run
    if resolved:
        accelerator.print(f"resumed {resolved.variant} at step {step} from {resolved.path}"
                          + (f" (converted: {resolved.conversion['method']})" if resolved.converted else ""))
        if args.dump_on_resume and accelerator.is_main_process:
            dump_outputs(accelerator.unwrap_model(model), family, config, args.dump_on_resume)

    generator = torch.Generator().manual_seed(1000 * accelerator.process_index + step)
    status = "failed"
    try:
        while step < args.steps:
            batch = family.make_batch(config, 2, generator)
            loss = family.compute_loss(model, batch)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step % args.every == 0 or step == args.steps:
                checkpoints.save(f"{args.out}/checkpoint-{step:08d}", step=step)  # registry
                accelerator.print(f"step {step}: loss {loss.item():.4f}, saved")
        status = "completed"
    finally:
        checkpoints.end(status)  # registry
    if args.dump_at_end and accelerator.is_main_process:
        dump_outputs(accelerator.unwrap_model(model), family, config, args.dump_at_end)
    accelerator.wait_for_everyone()
    # Destroys the process group: a rank that exits with its gloo group alive can abort
    # ("terminate called without an active exception") while the other is still shutting down.
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RegistryError as exc:  # one line and the documented exit code, as the registry command prints
        sys.exit(report(exc))
