"""Which source bytes become which target tensor: learned once from the converter itself.

A state-dict converter written as a plain function (a user plugin's, calling diffusers' functions
say) is run on meta tensors - one per source entry, no data - and its output is traced back: a target that *is* a
source tensor is a rename; a contiguous view of one (a 1x1 conv weight reshaped to a linear
weight, a squeeze, a slice of a fused q/k/v) is a byte range of that source under a new shape.
Anything else (a cast, arithmetic, a concatenation) is computed, so the conversion is not a
plan of byte copies and `NotStreamable` sends it down the in-memory path. A renaming converter
(`registry.converters.register_renaming_converter`) needs none of this: `rename_tensors` applies
its own name mapping.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

from .lazy import LazyTensor, NotStreamable


class PlanRow(NamedTuple):
    """Target `target` of shape `shape` is bytes [start, start + nbytes) of source tensor `source`."""

    target: str
    source: str
    shape: tuple[int, ...]
    start: int
    nbytes: int


def trace_plan(convert: Callable[[Mapping[str, Any], Any], Mapping[str, Any]],
               tensors: Mapping[str, LazyTensor], config: Any) -> list[PlanRow]:
    """Where each target of `convert(state_dict, config)` comes from, in the converter's output
    order, learned on meta tensors. Raises `NotStreamable` when a target is computed."""
    import torch

    placeholders = {name: torch.empty(t.shape, dtype=getattr(torch, t.dtype), device="meta")
                    for name, t in tensors.items()}
    source_of = {id(p): name for name, p in placeholders.items()}
    rows = []
    for target, value in convert(placeholders, config).items():
        if not isinstance(value, torch.Tensor):
            raise NotStreamable(f"the converter puts a {type(value).__name__} at {target}")
        base = value if id(value) in source_of else value._base
        source = source_of.get(id(base)) if base is not None else None
        if source is None or value.dtype != base.dtype or not value.is_contiguous():
            raise NotStreamable(f"the converter computes {target} instead of renaming or reshaping a source")
        element = value.element_size()
        rows.append(PlanRow(target, source, tuple(value.shape), value.storage_offset() * element,
                            value.numel() * element))
    return rows


def plan_fits(rows: list[PlanRow], tensors: Mapping[str, LazyTensor]) -> bool:
    """Every row names a source among `tensors` and a byte range inside it."""
    for row in rows:
        source = tensors.get(row.source)
        if source is None or row.start < 0 or row.nbytes < 0 or row.start + row.nbytes > source.nbytes:
            return False
    return True


def apply_plan(rows: list[PlanRow], tensors: Mapping[str, LazyTensor]) -> list[LazyTensor]:
    """The target tensors the plan describes, as byte ranges of `tensors`. Raises `NotStreamable`
    when a row does not fit its source (a plan made for other tensors)."""
    if not plan_fits(rows, tensors):
        raise NotStreamable("the plan was made for other tensors")
    targets = []
    for row in rows:
        source = tensors[row.source]
        whole = row.start == 0 and row.nbytes == source.nbytes
        targets.append(source.renamed(row.target, row.shape) if whole
                       else source.part(row.target, row.shape, row.start, row.nbytes))
    return targets


def trace_conversion(convert: Callable[[Mapping[str, Any], Any], Mapping[str, Any]],
                     tensors: Mapping[str, LazyTensor], config: Any) -> list[LazyTensor]:
    """The target tensors `convert(state_dict, config)` would produce from `tensors`, as byte ranges
    of them, in the converter's output order. Raises `NotStreamable` when a target is computed."""
    return apply_plan(trace_plan(convert, tensors, config), tensors)


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
