"""Where each tensor's bytes lie in a torch zip or safetensors file, read from metadata only.

torch zip: `data.pkl` names, for each tensor, a storage key, an element offset and strides; the
storage's bytes are the zip member `<archive>/data/<key>`, which torch stores uncompressed. A
C-contiguous tensor is then one byte range of the file (its member's data offset + its own
offset), whether or not other tensors view the same storage. Strided views and compressed
members get a `load()` that rebuilds just that tensor.

safetensors: the JSON header gives each tensor's byte range after the header.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from registry.errors import CheckpointError
from registry.readers import CheckpointInfo, DEFAULT_LIMITS
from registry.readers.dtypes import ELEMENT_BYTES, SAFETENSORS_DTYPES
from registry.readers.folders import RESTORED_EMPTY
from registry.readers.records import TensorRecord
from registry.schema import Schema, TensorEntry
from registry.sharded_load import SHARDED_FORMATS

from .lazy import LazyTensor, NotStreamable


def lazy_tensors(info: CheckpointInfo, *, allow_unsafe: bool = False) -> dict[str, LazyTensor]:
    """Every tensor of the checkpoint `info` describes, by name (wrapper stripped), bytes not read.

    Raises `NotStreamable` for what only a real loader reads (legacy torch files, big-endian
    storages, tensors without storage, sub-byte dtypes, empty tensors a folder's registry.json restores) and `CheckpointError` when the file no
    longer holds the schema read before (it changed in between).
    """
    if info.format in SHARDED_FORMATS:  # shards a reader assembles (registry.sharded_load)
        from registry.sharded_load import sharded_lazy_tensors

        return sharded_lazy_tensors(info)
    if info.metadata.get(RESTORED_EMPTY):  # empty tensors from registry.json: in no file, made in memory
        raise NotStreamable("it holds empty tensors restored from registry.json")
    tensors: dict[str, LazyTensor] = {}
    for file in info.files:
        found = safetensors_tensors(file) if file.endswith(".safetensors") else torch_zip_tensors(
            file, info.container, allow_unsafe=allow_unsafe)
        for name, tensor in found.items():
            if info.wrapper and name.startswith(info.wrapper):
                name = name[len(info.wrapper):]
            tensors[name] = tensor.renamed(name)
    schema = Schema(TensorEntry(t.name, t.shape, t.dtype) for t in tensors.values())
    if schema.fingerprint != info.fingerprint:
        raise CheckpointError(f"{info.path}: its tensors differ from the schema read before; did the file change?")
    return tensors


def safetensors_tensors(file: str) -> dict[str, LazyTensor]:
    """The tensors of a safetensors file (whose header `read_checkpoint` has validated)."""
    with open(file, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    start = 8 + length
    tensors = {}
    for name, entry in header.items():
        dtype, _bits = SAFETENSORS_DTYPES[entry["dtype"]]
        begin, end = entry["data_offsets"]
        tensor = LazyTensor.of(name, tuple(entry["shape"]), dtype, file=file, offset=start + begin)
        if tensor.nbytes != end - begin:
            raise NotStreamable(f"{name}: {entry['dtype']} elements are not whole bytes")
        tensors[name] = tensor
    return tensors


def torch_zip_tensors(file: str, container: str | None, *, allow_unsafe: bool = False) -> dict[str, LazyTensor]:
    """The tensors of the state dict at `container` (`outer/inner`, None: top level) of a torch zip."""
    from registry.readers.checkpoint import read_file
    from registry.readers.layout import as_mapping
    from registry.readers.zipdir import FileView, read_directory

    fmt, raw, _size = read_file(file, allow_unsafe=allow_unsafe, limits=DEFAULT_LIMITS)
    if fmt != "torch-zip":
        raise NotStreamable(f"{file} is {fmt}, read by torch.load only")
    state: Any = raw.root
    for key in container.split("/") if container else []:
        state = (as_mapping(state) or {}).get(key)
    state = as_mapping(state)
    if state is None:
        raise CheckpointError(f"{file}: container {container!r} not found while loading")
    fd = os.open(file, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        members = read_directory(FileView(fd, os.fstat(fd).st_size), DEFAULT_LIMITS)
    finally:
        os.close(fd)
    root = next(iter(members)).split("/", 1)[0] + "/"
    byteorder = members.get(f"{root}byteorder")
    if byteorder is not None and _member_bytes(file, byteorder) != b"little":
        raise NotStreamable(f"{file} stores big-endian tensors")
    return {name: _zip_tensor(file, name, record, members, root)
            for name, record in state.items() if type(record) is TensorRecord}


def _zip_tensor(file: str, name: str, record: TensorRecord, members: dict, root: str) -> LazyTensor:
    if record.storage is None:
        raise NotStreamable(f"{name} has no storage in the file")
    element = ELEMENT_BYTES.get(record.dtype)
    if not element:
        raise NotStreamable(f"{name}: dtype {record.dtype} has no whole-byte elements")
    member = members[f"{root}data/{record.storage.key}"]
    if member.method == 0 and (0 in record.shape or _contiguous(record.shape, record.stride)):
        return LazyTensor.of(name, record.shape, record.dtype, file=file,
                             offset=member.data_offset + record.offset * element)

    def load() -> Any:  # a strided view, or a compressed member: rebuild this one tensor with torch
        import torch

        storage = bytearray(_member_bytes(file, member))
        flat = torch.frombuffer(storage, dtype=getattr(torch, record.dtype)) if storage else torch.empty(
            0, dtype=getattr(torch, record.dtype))
        return flat.as_strided(record.shape, record.stride, record.offset).contiguous()

    return LazyTensor.of(name, record.shape, record.dtype, load=load)


def _contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """C-contiguous: the elements are one run in row-major order (size-1 dimensions' strides ignored)."""
    if len(shape) != len(stride):
        return False
    expected = 1
    for size, step in zip(reversed(shape), reversed(stride)):
        if size != 1 and step != expected:
            return False
        expected *= size
    return True


def _member_bytes(file: str, member: Any) -> bytes:
    from registry.readers.zipdir import FileView, read_member

    fd = os.open(file, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        view = FileView(fd, os.fstat(fd).st_size)
        return read_member(view, member, cap=member.usize)
    finally:
        os.close(fd)
