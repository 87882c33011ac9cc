"""`LazyTensor`: a tensor known by name, shape and dtype, whose bytes are fetched only when written."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from registry.readers.dtypes import ELEMENT_BYTES


class NotStreamable(Exception):
    """This checkpoint or converter needs the in-memory path (the reason is the message)."""


@dataclass(frozen=True, slots=True)
class LazyTensor:
    """One tensor of a checkpoint, its bytes not read yet.

    `dtype` is torch's dtype name (`float32`), `shape` the tensor's shape, `nbytes` its size in
    C-contiguous little-endian bytes. Its bytes are either `nbytes` bytes of `file` at `offset`
    (already contiguous: copied by the kernel) or what `load()` returns: a bytes-like object of
    exactly `nbytes` bytes, or a CPU torch tensor of this shape and dtype (made contiguous here).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    file: str | None = None
    offset: int = 0
    load: Callable[[], Any] | None = None

    def __post_init__(self) -> None:
        if (self.file is None) == (self.load is None):
            raise ValueError(f"{self.name}: give either file/offset or load, not both or neither")

    @classmethod
    def of(cls, name: str, shape: tuple[int, ...], dtype: str, *, file: str | None = None, offset: int = 0,
           load: Callable[[], Any] | None = None) -> "LazyTensor":
        """A LazyTensor whose `nbytes` is computed from shape and dtype (NotStreamable for sub-byte dtypes)."""
        return cls(name, tuple(shape), dtype, nbytes_of(shape, dtype), file, offset, load)

    def renamed(self, name: str, shape: tuple[int, ...] | None = None) -> "LazyTensor":
        """The same bytes under another name (and, for a byte-identical reshape, another shape)."""
        return replace(self, name=name, shape=self.shape if shape is None else tuple(shape))

    def part(self, name: str, shape: tuple[int, ...], start: int, nbytes: int) -> "LazyTensor":
        """A contiguous byte range [start, start + nbytes) of this tensor as a tensor of its own."""
        if self.file is not None:
            return LazyTensor(name, tuple(shape), self.dtype, nbytes, self.file, self.offset + start)
        load = self.load

        def load_part() -> Any:
            return memoryview(as_bytes(load(), self))[start:start + nbytes]

        return LazyTensor(name, tuple(shape), self.dtype, nbytes, load=load_part)


def nbytes_of(shape: tuple[int, ...], dtype: str) -> int:
    element = ELEMENT_BYTES.get(dtype)
    if not element:
        raise NotStreamable(f"dtype {dtype} has no whole-byte elements")
    count = 1
    for size in shape:
        count *= size
    return count * element


def as_bytes(value: Any, tensor: LazyTensor) -> memoryview:
    """`load()`'s result as `tensor.nbytes` contiguous bytes; ValueError when the size is wrong."""
    if hasattr(value, "untyped_storage"):  # a torch tensor
        import torch

        value = value.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
    view = memoryview(value).cast("B")
    if view.nbytes != tensor.nbytes:
        raise ValueError(f"{tensor.name}: {view.nbytes:,} bytes loaded, {tensor.nbytes:,} expected")
    return view
