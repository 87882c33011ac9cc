"""torch's legacy (non-zip) format: `torch.save(..., _use_new_zipfile_serialization=False)`.

The file is five pickles in a row - the magic number, the protocol version (1001), a sys_info
dict, the object (tensors as persistent ids), the list of storage keys - followed by each
storage as an 8-byte element count and its raw bytes. Only the pickles and the 8-byte counts
are read (one small read per storage, to check the file holds what the pickle claims); tensor
bytes never are.
"""

from __future__ import annotations

import struct

from .dtypes import ELEMENT_BYTES
from .limits import MiB, FormatError, LimitError, Limits, NeedMoreData
from .policy import Findings
from .records import StorageRef
from .torch_pickle import RawCheckpoint, check_views, storage_from_pid
from .unpickler import MetadataUnpickler
from .zipdir import FileView

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
_FIRST_CHUNK = 1 * MiB


def read_torch_legacy(view: FileView, display: str, *, limits: Limits, allow_unsafe: bool) -> RawCheckpoint:
    """The object pickled in a legacy torch file, storages checked against the file's size.

    Raises FormatError / LimitError for a corrupt, truncated or non-torch file, and
    UnsafeCheckpointError when any of its pickles would run code.
    """
    cap = limits.max_pickle_bytes + MiB  # the five pickles together
    chunk = min(view.size, _FIRST_CHUNK)
    while True:
        data = view.read(0, chunk, "the pickle records")
        try:
            return _parse(view, data, chunk == view.size, display, limits, allow_unsafe)
        except NeedMoreData:
            if chunk >= min(view.size, cap):
                raise LimitError(f"the pickle records run past {cap:,} bytes; far more than a checkpoint's") from None
            chunk = min(view.size, cap, chunk * 4)


def _parse(view: FileView, data: bytes, complete: bool, display: str, limits: Limits,
           allow_unsafe: bool) -> RawCheckpoint:
    findings = Findings()
    storages: dict[str, StorageRef] = {}
    views: dict[str, StorageRef] = {}

    def persistent_load(pid):
        ref, view_meta = storage_from_pid(pid, legacy=True)
        root = storages.setdefault(ref.key, ref)
        if (root.nbytes, root.dtype) != (ref.nbytes, ref.dtype):
            raise FormatError(f"storage {ref.key!r} is declared twice with different types or sizes")
        if view_meta is None:
            return root
        key, offset, size = view_meta
        element = ELEMENT_BYTES[root.dtype]
        if (offset + size) * element > root.nbytes:
            raise FormatError(f"storage view {key!r} reaches past the end of storage {ref.key!r}")
        return views.setdefault(key, StorageRef(key, root.dtype, size * element, root.location, offset * element))

    def run(start: int, persistent=None):
        machine = MetadataUnpickler(data, limits=limits, findings=findings, persistent_load=persistent,
                                    complete=complete)
        try:
            value = machine.load(start)
        except FormatError:
            findings.verdict(display, allow_unsafe=allow_unsafe)  # unsafe beats corrupt
            raise
        return value, machine.stop_at, machine

    magic, pos, _ = run(0)
    if magic != MAGIC_NUMBER:
        findings.verdict(display, allow_unsafe=allow_unsafe)
        raise FormatError("it is a pickle but not a torch checkpoint (no torch magic number); "
                          "fingerprint the file torch.save wrote")
    version, pos, _ = run(pos)
    if version != PROTOCOL_VERSION:
        raise FormatError(f"unsupported legacy torch protocol version {version!r}")
    sys_info, pos, _ = run(pos)
    value, pos, machine = run(pos, persistent_load)
    keys, pos, _ = run(pos)
    warnings = findings.verdict(display, allow_unsafe=allow_unsafe)
    if type(sys_info) is dict and sys_info.get("little_endian") is False:
        warnings.append("written on a big-endian machine (shapes are unaffected)")
    _check_storages(view, pos, keys, storages)
    check_views(machine.tensors)
    return RawCheckpoint(root=value, files=[display], warnings=warnings)


def _check_storages(view: FileView, pos: int, keys, storages: dict[str, StorageRef]) -> None:
    """Walk the storage section by its 8-byte counts: every storage present, with the bytes the
    pickle declares, all inside the file."""
    if type(keys) is not list or any(type(k) is not str for k in keys):
        raise FormatError("the storage key list after the pickle is malformed")
    missing = set(storages) - set(keys)
    if missing:
        raise FormatError(f"storage {sorted(missing)[0]!r} named by the pickle is not in the file")
    for key in keys:
        storage = storages.get(key)
        if storage is None:
            raise FormatError(f"the file holds storage {key!r} that the pickle never names")
        (count,) = struct.unpack("<q", view.read(pos, 8, f"storage {key!r}"))
        nbytes = count * ELEMENT_BYTES[storage.dtype]
        if count < 0 or nbytes != storage.nbytes:
            raise FormatError(f"storage {key!r} holds {max(nbytes, 0):,} bytes; the pickle says {storage.nbytes:,}")
        pos += 8 + nbytes
        if pos > view.size:
            raise FormatError(f"the file is truncated: storage {key!r} runs past its end")
