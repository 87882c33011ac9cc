"""Loading and saving real tensors: only after a match, never to fingerprint (DESIGN §4).

Loading uses `torch.load(weights_only=True)` or safetensors, so no pickle code runs; saving is
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
from .schema import schema_of_state_dict

REGISTRY_KEY = "registry"  # top-level key (torch) or __metadata__ key (safetensors) of our metadata


def _container(obj: Any, container: str | None, path: str) -> Mapping[str, Any]:
    for key in (container.split("/") if container else []):  # the reader joins nested keys with "/"
        if not isinstance(obj, Mapping) or key not in obj:
            raise CheckpointError(f"{path}: container {container!r} not found while loading")
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: the state dict is not a mapping")
    return obj


def _load_file(file: str, container: str | None) -> Mapping[str, Any]:
    if file.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(file, device="cpu")
    import torch

    try:
        obj = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        # mmap needs the zip format; legacy files load without it.
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{file}: torch's weights_only loader refuses an object in this file ({first})",
        ) from None
    return _container(obj, container, file)


def load_state_dict(info: CheckpointInfo, *, prefix: str = "") -> dict[str, Any]:
    """The real tensors of a checkpoint that `read_checkpoint` described, under `prefix` (stripped).

    Raises `CheckpointError` when loading fails or the tensors no longer match the fingerprint
    read earlier (the file changed in between).
    """
    state: dict[str, Any] = {}
    if info.format in ("dcp-folder", "deepspeed-folder"):  # sharded folders: names already as in info.schema
        from .sharded_load import load_sharded

        state = {name[len(prefix):]: value for name, value in load_sharded(info).items() if name.startswith(prefix)}
    for file in () if info.format in ("dcp-folder", "deepspeed-folder") else info.files:
        for name, value in _load_file(file, info.container).items():
            if info.wrapper and name.startswith(info.wrapper):
                name = name[len(info.wrapper):]
            if hasattr(value, "shape") and name.startswith(prefix):
                state[name[len(prefix):]] = value
    expected = info.schema.under(prefix) if prefix else info.schema
    if schema_of_state_dict(state).fingerprint != expected.fingerprint:
        raise CheckpointError(f"{info.path}: the tensors loaded differ from the schema read before; did the file change?")
    return state


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
