"""The few collective operations the trainer needs under `torchrun` (CPU: the gloo backend).

Rank 0 resolves the build and owns the registry and the checkpoint folder; it broadcasts its
decision, and the other ranks build the same model (DDP copies rank 0's weights at wrap time).
Alone (no `torchrun`), every function here is a no-op.
"""

from __future__ import annotations

from typing import Any

from .environment import RankInfo


def init(ranks: RankInfo) -> None:
    if ranks.distributed:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")


def shutdown(ranks: RankInfo) -> None:
    """Leave the process group; the trainer calls it from a `finally`, so on every way out.

    On a normal way out (completed, pre-empted, nothing to train) every rank first waits at a
    barrier, so that no rank tears down its gloo connections, or exits, while a peer is still
    recording or using them: a rank that left alone aborted at exit now and then ("terminate
    called without an active exception", SIGABRT). With an exception on its way out (seen from
    the `finally`), the peers may be anywhere, so the group is destroyed at once: waiting for a
    peer that never comes would hang the job instead of failing it.
    """
    if not ranks.distributed:
        return
    import sys

    import torch.distributed as dist

    if not dist.is_initialized():
        return
    failing = sys.exc_info()[0] is not None
    try:
        if not failing:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def broadcast(ranks: RankInfo, value: Any) -> Any:
    """Rank 0's `value` on every rank (pickled over gloo; rank 0's own value is returned as is)."""
    if not ranks.distributed:
        return value
    import torch.distributed as dist

    box = [value if ranks.is_leader else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ranks: RankInfo) -> None:
    if ranks.distributed:
        import torch.distributed as dist

        dist.barrier()


def any_rank(ranks: RankInfo, flag: bool) -> bool:
    """True on every rank if `flag` is true on any: all ranks stop at the same step."""
    if not ranks.distributed:
        return flag
    import torch
    import torch.distributed as dist

    value = torch.tensor([1 if flag else 0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def wrap(ranks: RankInfo, model: Any) -> Any:
    """`model` in DistributedDataParallel when distributed (weights broadcast from rank 0), else as is."""
    if not ranks.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    for parameter in model.parameters():  # DDP's gradient buckets assume contiguous parameters
        if not parameter.is_contiguous():
            parameter.data = parameter.data.contiguous()

    # Not every parameter takes part in every loss (e.g. the GAN parts of a CTViT without a GAN loss).
    return DistributedDataParallel(model, find_unused_parameters=True)
