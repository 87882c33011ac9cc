"""Loading the real tensors of a sharded training checkpoint, after a match (DESIGN §4).

- torch.distributed.checkpoint folders load through torch's own DCP loader in this one process
  (no process group): every model FQN is allocated at its global shape and dtype, and DCP fills
  it from whichever shards hold its chunks. torch reads `.metadata` with `pickle.load`, so the
  reader handed to it unpickles the very bytes our interpreter checked, with an unpickler that
  can only build DCP's metadata classes.
- DeepSpeed ZeRO 0-2 folders hold the full state dict under `module`, loaded with
  `torch.load(weights_only=True)`. A ZeRO-3 folder keeps its weights partitioned in the
  optimizer files; those are reassembled the way DeepSpeed's `zero_to_fp32.py` does, from
  `weights_only` loads, and the result is checked against the recorded shapes.
"""

from __future__ import annotations

import functools
import io
import math
import os
import pickle
from typing import Any

from .errors import CheckpointError
from .readers import CheckpointInfo

SHARDED_FORMATS = ("dcp-folder", "deepspeed-folder")


def load_sharded(info: CheckpointInfo) -> dict[str, Any]:
    """The model's tensors of a DCP or DeepSpeed checkpoint, named as in `info.schema`.

    Raises `CheckpointError` when the folder changed since it was read or cannot be loaded.
    """
    if info.format == "dcp-folder":
        return load_dcp(os.path.dirname(info.files[0]))
    return load_deepspeed(info)


# --- torch.distributed.checkpoint --------------------------------------------------------------


@functools.cache
def _allowed() -> frozenset[tuple[str, str]]:
    """The globals a real `.metadata` unpickle may import: the DCP records our reader allows, and
    the plain ones (torch.Size, OrderedDict, paths) every reader takes as data."""
    from .readers.dcp import DCP_GLOBALS

    return DCP_GLOBALS | {("torch", "Size"), ("collections", "OrderedDict"), ("pathlib", "PosixPath"),
                          ("pathlib", "WindowsPath"), ("pathlib", "Path"), ("pathlib._local", "PosixPath"),
                          ("pathlib._local", "WindowsPath")}


class _MetadataOnly(pickle.Unpickler):
    """Builds DCP's metadata classes, torch.Size and dtypes; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        import torch

        if (module, name) in _allowed():
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not DCP metadata")


def _reader(folder: str, data: bytes):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class CheckedReader(FileSystemReader):
        """torch's reader, with `.metadata` taken from the bytes already checked."""

        def read_metadata(self, *args: Any, **kwargs: Any):
            metadata = _MetadataOnly(io.BytesIO(data)).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return CheckedReader(folder)


class DcpFolder:
    """A DCP folder checked once: the model's FQNs (`by_name`: schema name -> FQN), their dtypes
    and global shapes, and the checked `.metadata` bytes torch's loader is handed (read once, so
    torch unpickles exactly what was checked)."""

    def __init__(self, folder: str):
        from .readers.dcp import parse_metadata, split_other_state
        from .readers.layout import find_layout
        from .readers.limits import DEFAULT_LIMITS, FormatError

        self.folder = folder
        try:
            parsed = parse_metadata(folder, allow_unsafe=False, limits=DEFAULT_LIMITS)
            layout = find_layout(split_other_state(parsed.tree)[0], DEFAULT_LIMITS)
        except (FormatError, OSError) as exc:
            raise CheckpointError(f"{folder}: cannot load it ({getattr(exc, 'message', exc)})") from None
        container = tuple(layout.container.split("/")) if layout.container else ()
        cut = len(layout.wrapper or "")
        self.by_name = {path[-1][cut:]: fqn for path, fqn in parsed.names.items()
                        if path[:-1] == container and type(path[-1]) is str}
        self.tensors = parsed.tensors  # FQN -> (dtype, global shape)
        self.data = parsed.data

    def load(self, names: list[str], into: dict[str, Any] | None = None) -> dict[str, Any]:
        """The tensors `names` (schema names), read by torch's DCP loader in this process: into the
        tensors `into` gives by name where its dtype and shape are the checkpoint's (a model's own
        parameters: nothing is allocated or copied twice), else into new ones."""
        import warnings

        import torch
        import torch.distributed.checkpoint as dcp

        state = {}
        for name in names:
            dtype, shape = self.tensors[self.by_name[name]]
            target = (into or {}).get(name)
            if target is None or target.dtype != getattr(torch, dtype) or tuple(target.shape) != tuple(shape):
                target = torch.empty(shape, dtype=getattr(torch, dtype))
            state[self.by_name[name]] = target
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
                dcp.load(state, storage_reader=_reader(self.folder, self.data))
        except pickle.UnpicklingError as exc:
            raise CheckpointError(f"{self.folder}: .metadata changed since it was checked ({exc})") from None
        except Exception as exc:  # torch's loader raises bare exceptions (CheckpointException, RuntimeError)
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{self.folder}: torch's DCP loader failed ({first})") from None
        return {name: state[self.by_name[name]] for name in names}


def load_dcp_into(info: CheckpointInfo, model: Any, prefix: str = "") -> None:
    """Read the DCP folder's tensors under `prefix` straight into `model`'s own parameters and
    buffers (one read, no second copy), strictly: every entry of the model's state dict is loaded,
    and nothing else. Raises `CheckpointError`."""
    import torch

    source = DcpFolder(os.path.dirname(info.files[0]))
    targets = {name: tensor for name, tensor in model.state_dict().items() if isinstance(tensor, torch.Tensor)}
    wanted = sorted(name for name in source.by_name if name.startswith(prefix))
    if sorted(name[len(prefix):] for name in wanted) != sorted(targets):
        raise CheckpointError(f"{source.folder}: holds other tensors under {prefix!r} than the model has; "
                              "did the folder change since it was read?")
    loaded = source.load(wanted, into={prefix + name: tensor for name, tensor in targets.items()})
    copies = {name[len(prefix):]: tensor for name, tensor in loaded.items() if tensor is not targets[name[len(prefix):]]}
    if copies:  # another dtype than the model's: loaded apart, then cast into it (the names were checked above)
        model.load_state_dict(copies, strict=False)


def load_dcp(folder: str) -> dict[str, Any]:
    """The model tensors of the DCP folder, named as `read_checkpoint` names them (container and
    wrappers stripped). Raises `CheckpointError`."""
    source = DcpFolder(folder)
    return source.load(list(source.by_name))


BATCH_BYTES = 64 << 20  # what one streamed DCP read holds in memory at most (beyond one bigger tensor)


def sharded_lazy_tensors(info: CheckpointInfo) -> dict[str, Any]:
    """`registry.streaming` LazyTensors of a DCP or DeepSpeed checkpoint, for a streaming convert.

    DCP: tensors are read through torch's DCP loader a batch of up to `BATCH_BYTES` at a time, in
    the order they are asked for, so memory stays flat. DeepSpeed ZeRO 0-2: the model-states
    file's `module`, streamed as any torch zip. Raises `NotStreamable` for ZeRO-3 (its weights
    must be reassembled from every rank's partition: the in-memory path does that).
    """
    from .readers.dtypes import ELEMENT_BYTES
    from .streaming import LazyTensor, NotStreamable

    if info.format == "deepspeed-folder":
        if info.metadata.get("deepspeed", {}).get("zero_stage") == 3:
            raise NotStreamable("a ZeRO-3 checkpoint's weights are partitioned across its optimizer files")
        from .streaming.sources import torch_zip_tensors

        return torch_zip_tensors(info.files[0], "module")
    source = DcpFolder(os.path.dirname(info.files[0]))
    names = sorted(source.by_name)
    described = {name: source.tensors[source.by_name[name]] for name in names}  # (dtype, global shape)
    sizes = {name: math.prod(shape) * (ELEMENT_BYTES.get(dtype) or 1) for name, (dtype, shape) in described.items()}
    batch: dict[str, Any] = {}

    def loader(name: str):
        def load() -> Any:
            if name not in batch:  # read it and the names after it, up to BATCH_BYTES, in one DCP load
                batch.clear()
                total, wanted = 0, []
                for other in names[names.index(name):]:
                    if wanted and total + sizes[other] > BATCH_BYTES:
                        break
                    wanted.append(other)
                    total += sizes[other]
                batch.update(source.load(wanted))
            return batch.pop(name)
        return load

    return {name: LazyTensor.of(name, shape, dtype, load=loader(name)) for name, (dtype, shape) in described.items()}


# --- DeepSpeed ----------------------------------------------------------------------------------


class _DeepSpeedObject:
    """Stands in for DeepSpeed's own objects in its optimizer files (`ZeroStageEnum(3)`, a
    `LossScaler`): keeps what it was given, runs nothing, imports nothing."""

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _torch_load(path: str) -> Any:
    """`torch.load(weights_only=True)`, with DeepSpeed's own globals (and only those) read as
    inert `_DeepSpeedObject`s instead of refused."""
    import torch

    try:
        names = [name for name in torch.serialization.get_unsafe_globals_in_checkpoint(path)
                 if name.startswith("deepspeed.")]
        with torch.serialization.safe_globals([(_DeepSpeedObject, name) for name in names]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, pickle.UnpicklingError, OSError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot load it with torch.load(weights_only=True) ({first})") from None


def load_deepspeed(info: CheckpointInfo) -> dict[str, Any]:
    """The model tensors of a DeepSpeed checkpoint (ZeRO-3: reassembled from its partitions).

    Raises `CheckpointError` when a file cannot be loaded, and when frozen parameters the reader
    found in `frozen_param_shapes` were left out of the save (`exclude_frozen_parameters`).
    """
    from collections.abc import Mapping

    model_states = info.files[0]
    payload = _torch_load(model_states)
    module = payload.get("module") if isinstance(payload, dict) else None
    if not isinstance(module, dict):
        raise CheckpointError(f"{model_states}: no `module` state dict")
    stage = info.metadata.get("deepspeed", {}).get("zero_stage")
    if stage == 3:
        return _zero3_state_dict(os.path.dirname(model_states), payload, module)
    state = {name: tensor for name, tensor in module.items() if hasattr(tensor, "shape")}
    frozen = payload.get("frozen_param_shapes")
    missing = [name for name in frozen if name not in state] if isinstance(frozen, Mapping) else []
    if missing:
        listed = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise CheckpointError(f"{model_states}: the frozen parameters {listed} were not saved "
                              "(save_checkpoint(exclude_frozen_parameters=True)); load them from the base model")
    return state


def _zero3_state_dict(folder: str, payload: dict, module: dict) -> dict[str, Any]:
    """ZeRO-3: each rank's optimizer file holds `fp32_flat_groups` (one flat partition per
    parameter group); parameter p of numel n takes ceil(n / world) elements from every rank's
    partition, in `param_shapes` order, and the concatenation trimmed to n is p.

    Raises `CheckpointError` when the partitions are missing, malformed or do not add up."""
    from collections.abc import Mapping

    import torch

    from .readers.deepspeed import OPTIM_STATES, buffer_names, shared_pairs

    files = sorted((int(m["dp"]), n) for n in os.listdir(folder)
                   if (m := OPTIM_STATES.match(n)) and int(m["mp"]) == 0)
    world = len(files)
    if world == 0 or [rank for rank, _ in files] != list(range(world)):
        raise CheckpointError(f"{folder}: the ZeRO-3 optimizer partitions are incomplete (ranks {[r for r, _ in files]})")
    flats = []
    for _rank, name in files:
        loaded = _torch_load(os.path.join(folder, name))
        optim = loaded.get("optimizer_state_dict") if isinstance(loaded, Mapping) else None
        groups = optim.get("fp32_flat_groups") if isinstance(optim, Mapping) else None
        if (not isinstance(groups, list) or not groups or not all(isinstance(g, torch.Tensor) for g in groups)
                or optim.get("partition_count", world) != world):
            raise CheckpointError(f"{folder}/{name}: not a ZeRO-3 partition of {world} ranks")
        flats.append(torch.cat([g.flatten() for g in groups]))
    if len({flat.numel() for flat in flats}) != 1:
        raise CheckpointError(f"{folder}: the ZeRO-3 partitions differ in size "
                              f"({', '.join(str(flat.numel()) for flat in flats)} elements)")
    state: dict[str, Any] = {}
    offset = 0
    for group in payload.get("param_shapes") or []:
        for name, shape in group.items():
            numel = math.prod(shape)
            part = math.ceil(numel / world)
            if offset + part > flats[0].numel():
                raise CheckpointError(f"{folder}: the ZeRO-3 partitions are smaller than param_shapes says")
            whole = torch.cat([flat.narrow(0, offset, part) for flat in flats])
            state[name] = whole.narrow(0, 0, numel).view(tuple(shape)).detach().clone()
            offset += part
    if offset != flats[0].numel():
        raise CheckpointError(f"{folder}: param_shapes cover {offset * world:,} of the {flats[0].numel() * world:,} "
                              "elements the ZeRO-3 partitions hold")
    if payload.get("frozen_param_shapes"):
        raise CheckpointError(f"{folder}: frozen parameters of a ZeRO-3 checkpoint are not loaded here; "
                              "run DeepSpeed's zero_to_fp32.py in a trusted environment")
    buffers = buffer_names(payload)
    for name, tensor in module.items():
        if name in buffers:
            state[name] = tensor
    shared = payload.get("shared_params")
    for alias, original in shared_pairs(dict(shared) if isinstance(shared, Mapping) else shared):
        if alias not in state and original in state:
            state[alias] = state[original]
    return state
