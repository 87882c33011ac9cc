"""Write real torch.distributed.checkpoint folders with two CPU processes (gloo): `python dcp_writer.py OUT`.

Each rank builds the same model (same seed), FSDP2 `fully_shard`s it, takes one AdamW step and
`dcp.save`s `{"model": ..., "optim": ...}` (torch's `get_state_dict` names) into `OUT/<name>/step-1`.
Rank 0 also trains an unsharded twin (same seed, same step: the gradients FSDP averages over two
identical ranks are the twin's) and writes its state dict to `OUT/<name>.pt`, the single-file twin.
`plain` is saved without FSDP in torchtitan's flat layout (model FQNs at the top beside
`optimizer.`), so each rank writes the replicated tensors once between them.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

MODELS = {"ctvit": "ctvit/tiny", "unet": "ldm-unet/tiny"}


def build(variant_name: str):
    from registry.catalog import get_builtin_variant
    from registry.families import get_family, make_config

    variant = get_builtin_variant(variant_name)
    family = get_family(variant.family)
    return family.build(make_config(family, variant.config))


def plain_model():
    import torch

    net = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.LayerNorm(10), torch.nn.Linear(10, 3))
    net.register_buffer("scale", torch.ones(3))
    return net


def shard_units(model) -> list:
    """The model's children with parameters, the items of a ModuleList (which has no forward) instead of it."""
    import torch

    units = []
    for child in model.children():
        items = list(child) if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential)) else [child]
        units.extend(item for item in items if not isinstance(item, (torch.nn.ModuleList, torch.nn.ModuleDict))
                     and any(True for _ in item.parameters()))
    return units


def step(model) -> object:
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = sum((p.float() ** 2).sum() for p in model.parameters())
    loss.backward()
    optimizer.step()
    return optimizer


def worker(rank: int, out: str, store: str) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.fsdp import fully_shard

    # The ranks meet through a file, not a port picked beforehand: a port found free by the parent
    # can be taken by another socket before the children bind it.
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=2)
    root = Path(out)
    for name, variant in MODELS.items():
        torch.manual_seed(0)
        model = build(variant)
        for child in shard_units(model):  # per block as well as at the root, as FSDP2 trainers do
            fully_shard(child)
        fully_shard(model)
        optimizer = step(model)
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(root / name / "step-1"))
        if rank == 0:
            torch.manual_seed(0)
            twin = build(variant)
            step(twin)
            torch.save(twin.state_dict(), root / f"{name}.pt")
    torch.manual_seed(0)
    model = plain_model()
    optimizer = step(model)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({**model_sd, "optimizer": optim_sd}, checkpoint_id=str(root / "plain" / "checkpoint-1"))
    if rank == 0:
        torch.save(model.state_dict(), root / "plain.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    import torch.multiprocessing as mp

    rendezvous = Path(tempfile.mkdtemp(prefix="dcp-writer-"))
    try:
        mp.spawn(worker, args=(sys.argv[1], (rendezvous / "store").as_uri()), nprocs=2, join=True)
    finally:
        shutil.rmtree(rendezvous, ignore_errors=True)
