"""What torch's zip and legacy formats share: storage persistent ids and storage-size checks."""

from __future__ import annotations

from typing import Any

from .dtypes import ELEMENT_BYTES
from .limits import FormatError
from .records import Global, StorageRef, TensorRecord


class RawCheckpoint:
    """What a format reader found, before layout discovery.

    `root`: the top-level value (dicts, lists, `TensorRecord`s, `Instance`s ...); `metadata`:
    format-level metadata (a safetensors `__metadata__`); `files`: the files read.
    """

    __slots__ = ("root", "files", "warnings", "metadata")

    def __init__(self, root: Any, files: list[str], warnings: list[str] | None = None,
                 metadata: dict[str, Any] | None = None):
        self.root = root
        self.files = files
        self.warnings = warnings or []
        self.metadata = metadata or {}


def storage_from_pid(pid: Any, *, legacy: bool) -> tuple[StorageRef, tuple | None]:
    """A `StorageRef` from torch's persistent id, plus the legacy view (key, offset, size) if any.

    Zip format: ('storage', storage_class, key, location, numel).
    Legacy format: ('storage', storage_class, root_key, location, numel, view_metadata).
    `numel` counts elements of the storage class's dtype (bytes for UntypedStorage).
    """
    size = 6 if legacy else 5
    if type(pid) is not tuple or len(pid) != size or pid[0] != "storage":
        raise FormatError(f"the pickle names external data {_brief(pid)} that is not a torch storage")
    storage_class, key, location, numel = pid[1:5]
    dtype = storage_class.value if type(storage_class) is Global else None
    if type(dtype) is not str or ELEMENT_BYTES.get(dtype) is None:
        raise FormatError(f"a storage has an unknown storage type {_brief(storage_class)}")
    if type(key) is not str or type(location) is not str or type(numel) is not int or numel < 0:
        raise FormatError(f"a storage has a malformed persistent id {_brief(pid)}")
    ref = StorageRef(key, dtype, numel * ELEMENT_BYTES[dtype], location)
    view = pid[5] if legacy else None
    if view is not None:
        if (type(view) is not tuple or len(view) != 3 or type(view[0]) is not str
                or any(type(v) is not int or v < 0 for v in view[1:])):
            raise FormatError(f"a storage has a malformed view {_brief(view)}")
    return ref, view


def check_views(tensors: list[TensorRecord]) -> None:
    """Every tensor fits inside the storage it views (bytes from the storage's start)."""
    for tensor in tensors:
        storage = tensor.storage
        if storage is None:
            continue
        element = ELEMENT_BYTES.get(tensor.dtype)
        if element is None:
            continue
        needed = tensor.bytes_needed(element)
        if needed > storage.nbytes:
            raise FormatError(
                f"a {tensor.dtype} tensor of shape {list(tensor.shape)} needs {needed:,} bytes of storage "
                f"{storage.key!r}, which holds {storage.nbytes:,}"
            )


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
