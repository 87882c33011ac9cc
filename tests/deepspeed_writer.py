"""Write real DeepSpeed checkpoints with two CPU processes (gloo): `python deepspeed_writer.py OUT`.

For ZeRO stages 2 and 3, each rank wraps the same small MLP (`mlp()`: the test family's layout at
width 5, odd sizes so ZeRO-3 pads its partitions) in a DeepSpeed engine, trains one step and
`save_checkpoint`s into `OUT/zero<stage>/` (`latest`, `global_step1/`). Then DeepSpeed's own
`zero_to_fp32` turns each folder into `OUT/zero<stage>.pt`: the reference the registry's loader
must reproduce. (A CTViT under ZeRO-3 on CPU takes minutes on two cores; the layout is the same.)
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

WIDTH, DEPTH = 5, 2


def mlp():
    """`tests/conftest.py`'s tiny family at width 5, depth 2: (Linear, LayerNorm) x 2."""
    from torch import nn

    return nn.Sequential(*[layer for _ in range(DEPTH) for layer in (nn.Linear(WIDTH, WIDTH), nn.LayerNorm(WIDTH))])


def worker(rank: int, out: str, store: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", DS_ACCELERATOR="cpu")
    import deepspeed
    import torch

    # The ranks meet through a file, not a port picked beforehand (another socket could take it
    # before the children bind it); DeepSpeed uses the group it finds initialised.
    torch.distributed.init_process_group("gloo", init_method=store, rank=rank, world_size=2)

    for stage in (2, 3):
        torch.manual_seed(0)
        model = mlp()
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config={
            "train_batch_size": 2, "train_micro_batch_size_per_gpu": 1,
            "zero_optimization": {"stage": stage},
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}},
        })
        batch = torch.randn(3, WIDTH, generator=torch.Generator().manual_seed(rank))
        engine.backward(engine(batch).square().sum())
        engine.step()
        engine.save_checkpoint(str(Path(out) / f"zero{stage}"))
        del engine
    # Leaving with the gloo group alive aborted a rank about one run in six ("terminate called
    # without an active exception": its worker threads were still joinable at exit).
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    import torch.multiprocessing as mp

    out = sys.argv[1]
    rendezvous = Path(tempfile.mkdtemp(prefix="deepspeed-writer-"))
    try:
        mp.spawn(worker, args=(out, (rendezvous / "store").as_uri()), nprocs=2, join=True)
    finally:
        shutil.rmtree(rendezvous, ignore_errors=True)
    os.environ["DS_ACCELERATOR"] = "cpu"
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    for stage in (2, 3):
        state = get_fp32_state_dict_from_zero_checkpoint(str(Path(out) / f"zero{stage}"))
        torch.save({name: tensor.contiguous() for name, tensor in state.items()}, Path(out) / f"zero{stage}.pt")
