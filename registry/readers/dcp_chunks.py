"""What a DCP `.metadata` says about one tensor, checked: dtype, global shape, and chunks that tile it.

A chunk is `ChunkStorageMetadata(offsets, sizes)`: the box one rank wrote. The chunks of a tensor
must lie inside its global shape and cover every element exactly once, or the global shape the
fingerprint is made of is a lie (and torch's loader would read garbage or fail mid-resume).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from itertools import product
from typing import Any

from .limits import FormatError, LimitError
from .records import Global, Instance

MAX_CHUNKS_PER_TENSOR = 65_536  # a tensor's chunks: one per rank and mesh cell; far above any cluster
MAX_TILING_CELLS = 4_000_000  # work spent proving that the chunks of all tensors tile their shapes


def fields_of(value: Any, expected: str, what: str) -> dict:
    """The attributes a DCP dataclass instance was pickled with (its BUILD state); FormatError
    when `value` is not a record of the DCP class `expected`."""
    if type(value) is not Instance or value.cls is None or value.cls.name != expected:
        raise FormatError(f"{what} is a {kind_of(value)}, not a DCP {expected}")
    state = value.state
    if type(state) is tuple and len(state) == 2 and (state[0] is None or type(state[0]) is dict):
        state = {**(state[0] or {}), **(state[1] if type(state[1]) is dict else {})}  # slots
    if type(state) is not dict:
        raise FormatError(f"{what}: a malformed {expected} record")
    return state


def kind_of(value: Any) -> str:
    """What a value is, for an error message."""
    if type(value) is Instance:
        return value.type_name
    if type(value) is Global:
        return value.path
    return type(value).__name__


def _dims(value: Any, what: str) -> tuple[int, ...]:
    if type(value) not in (tuple, list) or len(value) > 64 or any(type(d) is not int for d in value):
        raise FormatError(f"{what} is not a list of integers")
    if any(d < 0 for d in value):
        raise FormatError(f"{what} {list(value)[:8]} has a negative size")
    return tuple(value)


def _dtype(properties: Any, fqn: str) -> str:
    from .dtypes import ELEMENT_BYTES

    if type(properties) is not Instance or properties.cls is None or properties.cls.name != "TensorProperties":
        raise FormatError(f"tensor {fqn[:80]!r} has no TensorProperties")
    state = properties.state
    dtype = state[0] if type(state) is tuple and state else state.get("dtype") if type(state) is dict else None
    name = dtype.value if type(dtype) is Global else None
    if type(name) is not str or name not in ELEMENT_BYTES:
        raise FormatError(f"tensor {fqn[:80]!r} has an unknown dtype {kind_of(dtype)}")
    return name


def check_tensor(fqn: str, fields: dict, budget: list[int]) -> tuple[str, tuple[int, ...], int]:
    """(dtype, global shape, chunk count) of one tensor; its chunks must tile the shape exactly."""
    what = f"tensor {fqn[:80]!r}"
    dtype = _dtype(fields.get("properties"), fqn)
    shape = _dims(fields.get("size"), f"{what}: the global shape")
    chunks = fields.get("chunks")
    if type(chunks) is not list:
        raise FormatError(f"{what} has no list of chunks")
    if len(chunks) > MAX_CHUNKS_PER_TENSOR:
        raise LimitError(f"{what} is split into {len(chunks):,} chunks, more than {MAX_CHUNKS_PER_TENSOR:,}")
    boxes = []
    for chunk in chunks:
        parts = fields_of(chunk, "ChunkStorageMetadata", f"a chunk of {what}")
        offsets = _dims(parts.get("offsets"), f"{what}: chunk offsets")
        sizes = _dims(parts.get("sizes"), f"{what}: chunk sizes")
        if len(offsets) != len(shape) or len(sizes) != len(shape):
            raise FormatError(f"{what} has shape {list(shape)} but a chunk of {len(sizes)} dimensions")
        for offset, size, dim in zip(offsets, sizes, shape):
            if offset + size > dim:
                raise FormatError(f"{what}: a chunk at {list(offsets)} of size {list(sizes)} lies outside its "
                                  f"global shape {list(shape)}")
        boxes.append((offsets, sizes))
    _check_tiling(what, shape, boxes, budget)
    return dtype, shape, len(chunks)


def _check_tiling(what: str, shape: tuple[int, ...], boxes: list, budget: list[int]) -> None:
    """Every element of the global shape lies in exactly one chunk (a shape lie is refused).

    The chunk edges cut each dimension into intervals; each cell of that grid must be covered
    once. Work is bounded by the grid's size, which for real sharding is the chunk count.
    """
    volume = math.prod(shape)
    covered = sum(math.prod(sizes) for _offsets, sizes in boxes)
    if covered != volume:
        raise FormatError(f"{what}: its chunks hold {covered:,} elements but its global shape {list(shape)} has "
                          f"{volume:,}; the chunks do not tile the shape")
    if volume == 0 or len(boxes) == 1:
        return  # one chunk inside the shape with the full volume is the whole tensor
    cuts = []
    for axis, dim in enumerate(shape):
        edges = {0, dim}
        for offsets, sizes in boxes:
            edges.add(offsets[axis])
            edges.add(offsets[axis] + sizes[axis])
        cuts.append(sorted(edges))
    cells = math.prod(len(edges) - 1 for edges in cuts)
    budget[0] -= cells
    if budget[0] < 0:
        raise LimitError(f"{what}: its chunks cut the tensor into {cells:,} pieces; too fragmented to check")
    seen = bytearray(cells)
    for offsets, sizes in boxes:
        if 0 in sizes:
            continue
        ranges = [range(bisect_left(edges, offsets[axis]), bisect_left(edges, offsets[axis] + sizes[axis]))
                  for axis, edges in enumerate(cuts)]
        for cell in product(*ranges):
            index = 0
            for axis, position in enumerate(cell):
                index = index * (len(cuts[axis]) - 1) + position
            if seen[index]:
                raise FormatError(f"{what}: two chunks overlap; the chunks do not tile its global shape {list(shape)}")
            seen[index] = 1
