"""Which source bytes become which target tensor: learned once from the converter itself.

A state-dict converter (diffusers' `convert_ldm_unet_checkpoint` behind ours) is run on meta
tensors - one per source entry, no data - and its output is traced back: a target that *is* a
source tensor is a rename; a contiguous view of one (a 1x1 conv weight reshaped to a linear
weight, a squeeze, a slice of a fused q/k/v) is a byte range of that source under a new shape.
Anything else (a cast, arithmetic, a concatenation) is computed, so the conversion is not a
plan of byte copies and `NotStreamable` sends it down the in-memory path.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from .lazy import LazyTensor, NotStreamable


def trace_conversion(convert: Callable[[Mapping[str, Any], Any], Mapping[str, Any]],
                     tensors: Mapping[str, LazyTensor], config: Any) -> list[LazyTensor]:
    """The target tensors `convert(state_dict, config)` would produce from `tensors`, as byte ranges
    of them, in the converter's output order. Raises `NotStreamable` when a target is computed."""
    import torch

    placeholders = {name: torch.empty(t.shape, dtype=getattr(torch, t.dtype), device="meta")
                    for name, t in tensors.items()}
    source_of = {id(p): name for name, p in placeholders.items()}
    out = convert(placeholders, config)
    targets = []
    for target_name, value in out.items():
        if not isinstance(value, torch.Tensor):
            raise NotStreamable(f"the converter puts a {type(value).__name__} at {target_name}")
        base = value if id(value) in source_of else value._base
        source = source_of.get(id(base)) if base is not None else None
        if source is None or value.dtype != base.dtype or not value.is_contiguous():
            raise NotStreamable(f"the converter computes {target_name} instead of renaming or reshaping a source")
        element = value.element_size()
        start, nbytes = value.storage_offset() * element, value.numel() * element
        if start + nbytes > tensors[source].nbytes:
            raise NotStreamable(f"{target_name} reaches past its source {source}")
        shape = tuple(value.shape)
        whole = start == 0 and nbytes == tensors[source].nbytes
        targets.append(tensors[source].renamed(target_name, shape) if whole
                       else tensors[source].part(target_name, shape, start, nbytes))
    return targets


def rename_tensors(tensors: Mapping[str, LazyTensor], rename: Callable[[str], str | None]) -> list[LazyTensor]:
    """`tensors` under new names (`rename` returns None to drop one); ValueError when two collide."""
    out: dict[str, LazyTensor] = {}
    for name, tensor in tensors.items():
        new = rename(name)
        if new is None:
            continue
        if new in out:
            raise ValueError(f"maps two entries onto {new!r}")
        out[new] = tensor.renamed(new)
    return list(out.values())
