"""What the Accelerate and Lightning integrations add to a save and to a resume.

One process on CPU, a diffusers UNet of about 100 MB registered as a variant in a throwaway SQLite
registry. Each figure is the median of --repeat runs, measured in the same run as the plain call
it is compared with:

- Accelerate: `accelerator.save_state(dir)` vs `AccelerateCheckpoints.save(dir, step=...)` (plus the
  registry record and the recorded checkpoint); `accelerator.load_state(dir)` vs `resolve(dir)` +
  `load(model)` (match, strict load, the run recorded).
- Lightning: `trainer.save_checkpoint(path)` and `trainer.fit(ckpt_path=path)` (restore only:
  max_steps is the saved step) without and with `RegistryCallback`.

    python benchmarks/bench_integrations.py [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

CONFIG = {"block_out_channels": [64, 128, 256, 256], "cross_attention_dim": 256, "attention_head_dim": 8,
          "sample_size": 32, "layers_per_block": 2}


def _median(action, repeat: int) -> float:
    times = []
    for index in range(repeat):
        began = time.perf_counter()
        action(index)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def _accelerate(folder: Path, db: str, repeat: int) -> dict[str, float]:
    import torch
    from accelerate import Accelerator

    from registry.families import get_family, make_config
    from registry.integrations.accelerate import AccelerateCheckpoints

    family = get_family("diffusers-unet")
    accelerator = Accelerator(cpu=True)
    model = family.build(make_config(family, CONFIG))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    checkpoints = AccelerateCheckpoints(accelerator, family="diffusers-unet", variant="bench/unet", db=db)
    checkpoints.load(model)  # a new run
    plain_save = _median(lambda i: accelerator.save_state(str(folder / f"plain-{i}")), repeat)
    registry_save = _median(lambda i: checkpoints.save(folder / f"checkpoint-{i}", step=i), repeat)
    plain_load = _median(lambda i: accelerator.load_state(str(folder / f"plain-{i}")), repeat)

    def registry_load(index: int) -> None:
        resumer = AccelerateCheckpoints(accelerator, family="diffusers-unet", db=db)
        resumer.resolve(folder / f"checkpoint-{index}")
        resumer.load(model)
        resumer.end()

    registry_resume = _median(registry_load, repeat)
    checkpoints.end()
    return {"save_plain": plain_save, "save_registry": registry_save, "resume_plain": plain_load,
            "resume_registry": registry_resume}


def _lightning(folder: Path, db: str, repeat: int) -> dict[str, float]:
    import lightning as L
    import torch

    from registry.families import get_family, make_config
    from registry.integrations.lightning import RegistryCallback

    family = get_family("diffusers-unet")
    config = make_config(family, CONFIG)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.model = family.build(config)

        def training_step(self, batch, index):
            return family.compute_loss(self.model, family.make_batch(config, 1, torch.Generator().manual_seed(index)))

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-4)

    data = torch.utils.data.DataLoader(list(range(100)), batch_size=1)

    def trainer(with_registry: bool, steps: int) -> L.Trainer:
        callbacks = [RegistryCallback(model_attr="model", family="diffusers-unet", variant="bench/unet", db=db)] \
            if with_registry else []
        return L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, callbacks=callbacks)

    figures = {}
    for label, with_registry in (("plain", False), ("registry", True)):
        fitted = trainer(with_registry, 1)
        fitted.fit(Module(), train_dataloaders=data)
        if with_registry:  # the callback's run ended with fit; saving labels and records under a live run
            fitted.callbacks[0].on_fit_start(fitted, fitted.lightning_module)
        figures[f"save_{label}"] = _median(lambda i: fitted.save_checkpoint(folder / f"{label}-{i}.ckpt"), repeat)
        figures[f"resume_{label}"] = _median(
            lambda i: trainer(with_registry, 1).fit(Module(), train_dataloaders=data,
                                                    ckpt_path=str(folder / f"{label}-{i}.ckpt")), repeat)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    from registry.families import get_family, make_config
    from registry.store import open_registry
    from registry.store.variants import add_variant

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        db = f"sqlite:///{folder / 'registry.db'}"
        family = get_family("diffusers-unet")
        with open_registry(db, upgrade=True) as reg:
            add_variant(reg, "bench/unet", "diffusers-unet", make_config(family, CONFIG))
        os.environ["REGISTRY_DB"] = db
        accelerate = _accelerate(folder / "accelerate", db, args.repeat)
        lightning = _lightning(folder / "lightning", db, args.repeat)
        size = sum(p.stat().st_size for p in (folder / "accelerate" / "plain-0").iterdir())
    rows = []
    for framework, figures in (("accelerate", accelerate), ("lightning", lightning)):
        for action in ("save", "resume"):
            plain, registry = figures[f"{action}_plain"], figures[f"{action}_registry"]
            rows.append({"framework": framework, "action": action, "plain_seconds": round(plain, 4),
                         "registry_seconds": round(registry, 4), "ratio": round(registry / plain, 3)})
    if args.json:
        print(json.dumps({"checkpoint_bytes": size, "rows": rows}, indent=2))
        return
    print(f"checkpoint: {size / 1e6:.0f} MB (a diffusers UNet, weights and AdamW state), medians of {args.repeat}")
    print(f"{'framework':<11} {'action':<7} {'plain':>9} {'registry':>9} {'ratio':>7}")
    for row in rows:
        print(f"{row['framework']:<11} {row['action']:<7} {row['plain_seconds']:>8.3f}s {row['registry_seconds']:>8.3f}s "
              f"{row['ratio']:>6.2f}x")


if __name__ == "__main__":
    sys.exit(main())
