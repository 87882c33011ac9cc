"""safetensors: the JSON header only, validated the way the reference loader validates it.

File layout: an 8-byte little-endian header length N, N bytes of JSON
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`, then the
tensor bytes. Offsets are relative to the end of the header; tensors must tile the data section
exactly (no holes, no overlap, nothing past the end). A file that is not safetensors is never
read as anything else.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from .dtypes import SAFETENSORS_DTYPES
from .limits import FormatError, LimitError, Limits
from .records import TensorRecord
from .torch_pickle import RawCheckpoint
from .zipdir import FileView


def read_safetensors(view: FileView, display: str, *, limits: Limits) -> RawCheckpoint:
    """Tensor records by name and the `__metadata__` strings of a safetensors file.

    Raises FormatError (corrupt header, offsets outside the data) or LimitError (header too big).
    """
    if view.size < 8:
        raise FormatError(f"it is {view.size} bytes long, too short for a safetensors file")
    (length,) = struct.unpack("<Q", view.read(0, 8, "the header length"))
    if length > view.size - 8:
        raise FormatError(f"its header length field claims {length:,} bytes but only {view.size - 8:,} follow "
                          "(truncated, or not a safetensors file)")
    if length > limits.max_header_bytes:
        raise LimitError(f"its header is {length:,} bytes, over the {limits.max_header_bytes:,}-byte cap")
    raw = view.read(8, length, "the header")
    if not raw.startswith(b"{"):
        raise FormatError("its header is not a JSON object")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"its header is not valid JSON ({str(exc).splitlines()[0][:100]})") from None
    metadata = header.pop("__metadata__", None) or {}
    if type(metadata) is not dict or any(type(v) is not str for v in metadata.values()):
        raise FormatError("its __metadata__ is not a mapping of strings to strings")
    tensors = _tensors(header, view.size - 8 - length)
    return RawCheckpoint(root=tensors, files=[display], metadata=metadata)


def _tensors(header: dict[str, Any], data_size: int) -> dict[str, TensorRecord]:
    records: dict[str, TensorRecord] = {}
    spans = []
    for name, info in header.items():
        if type(info) is not dict:
            raise FormatError(f"tensor {name!r} has no dtype/shape/data_offsets record")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        known = SAFETENSORS_DTYPES.get(dtype) if type(dtype) is str else None
        if known is None:
            raise FormatError(f"tensor {name!r} has unknown dtype {dtype!r}")
        if type(shape) is not list:
            raise FormatError(f"tensor {name!r} has an invalid shape {shape!r}")
        numel = 1
        for dim in shape:
            if type(dim) is not int or dim < 0:
                raise FormatError(f"tensor {name!r} has an invalid shape {shape!r}")
            numel *= dim
        if type(offsets) is not list or len(offsets) != 2:
            raise FormatError(f"tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        if type(begin) is not int or type(end) is not int or not 0 <= begin <= end:
            raise FormatError(f"tensor {name!r} has invalid data_offsets {offsets!r}")
        torch_name, bits = known
        if (numel * bits) % 8 or end - begin != numel * bits // 8:
            raise FormatError(f"tensor {name!r} ({dtype} {shape}) spans {end - begin:,} bytes; "
                              f"its shape needs {numel * bits / 8:,.0f}")
        records[name] = TensorRecord(torch_name, tuple(shape))
        spans.append((begin, end, name))
    spans.sort()
    position = 0
    for begin, end, name in spans:
        if begin != position:
            problem = "overlaps another tensor" if begin < position else "leaves a hole before it"
            raise FormatError(f"tensor {name!r} {problem} in the data section (offsets are corrupt)")
        position = end
    if position != data_size:
        where = "runs past the end of the file" if position > data_size else "leaves bytes unaccounted for"
        raise FormatError(f"the tensor data {where} ({position:,} bytes declared, {data_size:,} present)")
    return records


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    mapping = dict(pairs)
    if len(mapping) != len(pairs):
        seen = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise FormatError(f"its header names {duplicate!r} twice")
    return mapping
