"""A small PyTorch Lightning run whose checkpoints the registry labels, records and resolves.

    python examples/lightning/train.py --out runs/vit --steps 6
    python examples/lightning/train.py --out runs/vit --steps 12 --resume latest --default ctvit/tiny-rmsnorm

The second command is the first incident with the registry in the loop: the code's default moved
to RMSNorm, but the checkpoint was trained with the LayerNorm build. `RegistryCallback` sees that
when Lightning opens `last.ckpt`, rebuilds the module's network from the checkpoint's config, and
training continues at the saved step. The registry lines are marked `# registry`.
"""

from __future__ import annotations

import argparse
import sys

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from registry.catalog import get_builtin_variant
from registry.errors import RegistryError, report
from registry.families import get_family, make_config
from registry.integrations.lightning import RegistryCallback  # registry


class VideoTokenizer(L.LightningModule):
    """A CTViT trained on synthetic volumes; the network is `self.model`."""

    def __init__(self, variant: str):
        super().__init__()
        self.family = get_family("ctvit")
        self.model = self.family.build(make_config(self.family, get_builtin_variant(variant).config))

    def training_step(self, batch, batch_index):
        loss = self.family.compute_loss(self.model, batch)
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class SyntheticVolumes(torch.utils.data.IterableDataset):
    def __init__(self, config):
        self.config = config

    def __iter__(self):
        generator = torch.Generator().manual_seed(0)
        family = get_family("ctvit")
        while True:
            yield family.make_batch(self.config, 1, generator)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the checkpoints (last.ckpt, epoch=E-step=S.ckpt)")
    parser.add_argument("--steps", type=int, required=True, help="the step to stop at")
    parser.add_argument("--resume", choices=["latest"], help="continue from the newest checkpoint in --out")
    parser.add_argument("--default", default="ctvit/tiny", help="the variant the code builds by default")
    parser.add_argument("--every", type=int, default=2, help="save every K steps")
    parser.add_argument("--db", help="registry database (default: REGISTRY_DB, then the default file)")
    args = parser.parse_args()

    torch.manual_seed(0)
    module = VideoTokenizer(args.default)
    data = torch.utils.data.DataLoader(SyntheticVolumes(module.model.config), batch_size=1)
    trainer = L.Trainer(
        max_steps=args.steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=args.out, every_n_train_steps=args.every, save_last=True, save_top_k=-1),
                   RegistryCallback(model_attr="model", family="ctvit", variant=args.default, db=args.db)],  # registry
    )
    trainer.fit(module, train_dataloaders=data, ckpt_path="last" if args.resume else None)
    print(f"stopped at step {trainer.global_step}; the network was built as "
          f"{'RMSNorm' if module.model.config.use_rms_norm else 'LayerNorm'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RegistryError as exc:  # one line and the documented exit code, as the registry command prints
        sys.exit(report(exc))
