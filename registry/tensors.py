"""Loading and saving real tensors: only after a match, never to fingerprint (DESIGN §4).

Loading uses `torch.load(weights_only=True)`, safetensors or torch's DCP loader fed with checked
metadata, so no pickle code runs, and reads each file once (`CheckpointContents`); saving is
atomic and embeds the registry metadata that matching reads back (evidence step 1).
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Mapping

from .atomic import atomic_write
from .errors import CheckpointError
from .readers import CheckpointInfo
from .schema import Schema, schema_of_state_dict
from .sharded_load import SHARDED_FORMATS

REGISTRY_KEY = "registry"  # top-level key (torch) or __metadata__ key (safetensors) of our metadata


def _container(obj: Any, container: str | None, path: str) -> Mapping[str, Any]:
    for key in (container.split("/") if container else []):  # the reader joins nested keys with "/"
        if not isinstance(obj, Mapping) or key not in obj:
            raise CheckpointError(f"{path}: container {container!r} not found while loading")
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: the state dict is not a mapping")
    return obj


TORCH_FILE_FORMATS = ("torch-zip", "torch-legacy")  # one torch file: weights and other entries in one pickle


def _torch_load(file: str, map_location: Any) -> Any:
    """`torch.load(weights_only=True)`: no code in the file runs; memory-mapped when the file is
    torch's zip format (the tensors' bytes are read when they are used, not here)."""
    import zipfile

    import torch

    try:
        return torch.load(file, map_location=map_location, weights_only=True, mmap=zipfile.is_zipfile(file))
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{file}: torch's weights_only loader refuses an object in this file ({first})") from None
    except (RuntimeError, OSError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{file}: cannot load it with torch.load(weights_only=True) ({first})") from None


def _load_file(file: str, container: str | None) -> Mapping[str, Any]:
    if file.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(file, device="cpu")
    return _container(_torch_load(file, "cpu"), container, file)


class CheckpointContents:
    """The real contents of a checkpoint that `read_checkpoint` described, each read at most once
    (and only after a match: DESIGN §4).

    A torch file is unpickled once (`payload()`), and that payload serves both the model's tensors
    and the checkpoint's other entries (optimizer, scheduler, epoch, ...). `load_into(model)` reads
    the weights straight into the model: a DCP folder through torch's DCP loader into the model's
    own tensors, other formats from their (memory-mapped) load. `map_location` places the payload.
    """

    def __init__(self, info: CheckpointInfo, *, map_location: Any = "cpu"):
        self.info = info
        self.map_location = map_location
        self._payload: Any = _UNREAD
        self._states: dict[str, dict[str, Any]] = {}  # by prefix

    def payload(self) -> Any:
        """The whole unpickled torch file (a single `torch-zip`/`torch-legacy` file), else None.
        Raises `CheckpointError` when torch's weights_only loader cannot load it."""
        if self.info.format not in TORCH_FILE_FORMATS:
            return None
        if self._payload is _UNREAD:
            self._payload = _torch_load(self.info.files[0], self.map_location)
        return self._payload

    @property
    def payload_read(self) -> bool:
        return self._payload is not _UNREAD

    def state_dict(self, prefix: str = "") -> dict[str, Any]:
        """The model's tensors under `prefix` (stripped), checked against `info.schema`; read once
        per prefix. Raises `CheckpointError` (loading failed, or the file changed since it was read)."""
        if prefix not in self._states:
            self._states[prefix] = self._read(prefix)
        return self._states[prefix]

    def _read(self, prefix: str) -> dict[str, Any]:
        info = self.info
        state: dict[str, Any] = {}
        if info.format in SHARDED_FORMATS:  # names already as in info.schema
            from .sharded_load import load_sharded

            state = {name[len(prefix):]: value for name, value in load_sharded(info).items() if name.startswith(prefix)}
        for file in () if info.format in SHARDED_FORMATS else info.files:
            payload = self.payload()
            loaded = _container(payload, info.container, file) if payload is not None else _load_file(file, info.container)
            for name, value in loaded.items():
                if info.wrapper and name.startswith(info.wrapper):
                    name = name[len(info.wrapper):]
                if hasattr(value, "shape") and name.startswith(prefix):
                    state[name[len(prefix):]] = value
        state.update(_restored_empty(info, prefix, state))
        if schema_of_state_dict(state).fingerprint != self.schema(prefix).fingerprint:
            raise CheckpointError(f"{info.path}: the tensors loaded differ from the schema read before; did the file change?")
        return state

    def schema(self, prefix: str = "") -> Schema:
        """The schema of the tensors under `prefix`, as read from the metadata (no tensor is read)."""
        return self.info.schema.under(prefix) if prefix else self.info.schema

    def load_into(self, model: Any, prefix: str = "") -> None:
        """Read the tensors under `prefix` into `model`, strictly: the caller has checked that the
        model's schema is `schema(prefix)`. Raises `CheckpointError`."""
        if self.info.format == "dcp-folder" and prefix not in self._states:
            from .sharded_load import load_dcp_into

            load_dcp_into(self.info, model, prefix)
            return
        model.load_state_dict(self.state_dict(prefix), strict=True)
        self._states.pop(prefix, None)  # in the model now: keep no second copy

    def release(self) -> None:
        """Forget what was read (the payload and every state dict)."""
        self._payload = _UNREAD
        self._states.clear()


_UNREAD = object()


def _restored_empty(info: CheckpointInfo, prefix: str, loaded: Mapping[str, Any]) -> dict[str, Any]:
    """The empty tensors a folder's registry.json put back into `info.schema` (readers.folders), made
    here: they carry no data, only a name, a shape and a dtype. Only zero-element entries of the
    schema that the files lack are made."""
    from .readers.folders import RESTORED_EMPTY

    names = info.metadata.get(RESTORED_EMPTY)
    if not names:
        return {}
    import torch

    entries = info.schema.by_name
    made = {}
    for name in names:
        entry = entries.get(name) if type(name) is str and name.startswith(prefix) else None
        if entry is not None and entry.numel == 0 and name[len(prefix):] not in loaded:
            made[name[len(prefix):]] = torch.empty(entry.shape, dtype=getattr(torch, entry.dtype))
    return made


def load_state_dict(info: CheckpointInfo, *, prefix: str = "") -> dict[str, Any]:
    """The real tensors of a checkpoint that `read_checkpoint` described, under `prefix` (stripped).

    Raises `CheckpointError` when loading fails or the tensors no longer match the fingerprint
    read earlier (the file changed in between).
    """
    return CheckpointContents(info).state_dict(prefix)


def _unshared(state: Mapping[str, Any]) -> dict[str, Any]:
    """safetensors refuses tensors that share memory: give each shared one its own copy."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        out[name] = tensor.contiguous().clone() if key in seen or not tensor.is_contiguous() else tensor
        seen.add(key)
    return out


def save_checkpoint(path: str | Path, state: Mapping[str, Any], metadata: dict[str, Any], extra: dict[str, Any] | None = None,
                    *, before_rename: Callable[[Path], None] | None = None) -> Path:
    """Write `state` atomically with the registry `metadata` embedded; returns the path.

    `.safetensors` → tensors plus `__metadata__["registry"]` (JSON); anything else → a torch file
    `{"model": state, "registry": metadata, **extra}` (extra: optimizer state, step, ...).
    `before_rename(tmp)` runs once the data is fsynced, before the rename (e.g. to record the file):
    if it raises, the temporary file is removed and `path` is untouched.
    """
    target = Path(path)
    if target.suffix == ".safetensors":
        if extra:
            raise ValueError("safetensors holds tensors only; save optimizer state to a torch file")
        from safetensors.torch import save_file

        tensors = _unshared(state)
        return atomic_write(target, _then(lambda tmp: save_file(tensors, str(tmp), metadata={REGISTRY_KEY: json.dumps(metadata)}),
                                          before_rename))
    import torch

    payload = {"model": dict(state), REGISTRY_KEY: metadata, **(extra or {})}
    return atomic_write(target, _then(lambda tmp: torch.save(payload, tmp), before_rename))


def _then(write: Callable[[Path], None], before_rename: Callable[[Path], None] | None) -> Callable[[Path], None]:
    """`write`, then (when given) fsync and `before_rename`, all inside `atomic_write`'s cleanup."""
    if before_rename is None:
        return write

    def write_then(tmp: Path) -> None:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        before_rename(tmp)

    return write_then
