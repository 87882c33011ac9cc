"""Checkpoints that are folders or several files: sharded checkpoints (`*.index.json`), diffusers
model folders, accelerate `checkpoint-N/` folders.

Only model weight files are read: an accelerate folder's `optimizer.bin`, `scheduler.bin` and
`random_states_*.pkl` are never opened (they are pickles, and not the model).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from .checkpoint import build_info, read_file
from .info import CheckpointInfo
from .layout import as_mapping, is_state_dict
from .limits import FormatError, LimitError, Limits, read_capped
from .metadata import plain_copy
from .records import TensorRecord
from .torch_pickle import RawCheckpoint

# diffusers, transformers/accelerate; `_N` is accelerate's second, third ... model
_WEIGHTS = re.compile(
    r"^(?P<base>diffusion_pytorch_model|model|pytorch_model)(?:_(?P<n>\d+))?"
    r"(?:\.(?P<v1>[\w-]+))?\.(?P<ext>safetensors|bin)(?P<index>\.index(?:\.(?P<v2>[\w-]+))?\.json)?$"
)
_RECORD = "registry.json"
# registry.json's zero-element entries the weights file lacks: {name: {"shape": [...], "dtype": "float32"}}.
# accelerate's safetensors save keeps one of a model's empty tensors and drops the rest (they all have
# storage pointer 0 and size 0, so it takes them for shared storage); registry.integrations.accelerate
# records the dropped ones here and the reader puts them back into the schema.
EMPTY_TENSORS = "empty_tensors"
RESTORED_EMPTY = "restored_empty_tensors"  # info.metadata: the names restored (registry.tensors creates them)
_MAX_EMPTY = 10_000
_MAX_NAME = 1_000
_MAX_DIMS = 16
_MAX_DIM = 1 << 40
_ACCELERATE = re.compile(r"^(optimizer(_\d+)?\.(bin|pt)|scheduler(_\d+)?\.(bin|pt)|random_states_\d+\.pkl|scaler\.pt)$")


def read_folder(folder: str, *, allow_unsafe: bool, limits: Limits) -> CheckpointInfo:
    """A folder's model: the one weights file or sharded index it holds, chosen by name.

    Raises FormatError when it holds none, or several that would make the choice a guess.
    """
    names = sorted(os.listdir(folder))
    if "model_index.json" in names:
        parts = [n for n in names if os.path.isdir(os.path.join(folder, n))]
        raise FormatError("it is a diffusers pipeline folder (model_index.json); fingerprint one component, e.g. "
                          + os.path.join(folder, "unet" if "unet" in parts else (parts or ["unet"])[0]))
    sharded = _distributed_checkpoint(folder, names, allow_unsafe, limits)
    if sharded is not None:
        return sharded
    chosen, warnings = _choose_weights(names)
    accelerate = any(_ACCELERATE.match(n) for n in names)
    diffusers = "config.json" in names and chosen.startswith("diffusion_pytorch_model")
    extra: dict[str, Any] = {}
    if diffusers:
        config = _read_json(os.path.join(folder, "config.json"), min(limits.max_json_bytes, 1 << 20))
        plain = plain_copy(config, limits.metadata_nodes * 5, limits.metadata_depth)
        if type(plain) is dict:
            extra["config"] = plain
    declared_empty = None
    if _RECORD in names:  # the registry record written beside the weights (registry.integrations.accelerate)
        loaded = _read_json(os.path.join(folder, _RECORD), min(limits.max_json_bytes, 1 << 20))
        if type(loaded) is dict:
            declared_empty = loaded.pop(EMPTY_TENSORS, None)  # checked on its own below, not copied
        record = plain_copy(loaded, limits.metadata_nodes, limits.metadata_depth)
        if type(record) is dict:
            extra["registry"] = record
    path = os.path.join(folder, chosen)
    if chosen.endswith(".json"):
        info = read_index(path, allow_unsafe=allow_unsafe, limits=limits, display=folder)
    else:
        fmt, raw, size = read_file(path, allow_unsafe=allow_unsafe, limits=limits)
        info = build_info(folder, fmt, raw, size, limits)
    if accelerate:
        info.format = "accelerate-folder"
    elif diffusers:
        info.format = "diffusers-folder"
    info.metadata.update(extra)
    info.metadata.pop(RESTORED_EMPTY, None)  # only `_restore_empty` sets it, never a file's own metadata
    if declared_empty is not None:
        _restore_empty(info, declared_empty)
    if info.step is None:  # accelerate's `checkpoint-00005000/`: the folder name carries the step
        from .dcp import folder_step

        step = folder_step(folder)
        if step is not None:
            info.metadata["step"] = step
    info.warnings[:0] = warnings
    return info


def _restore_empty(info: CheckpointInfo, declared: Any) -> None:
    """Add registry.json's declared empty tensors to `info.schema`; a declaration that is malformed,
    names a tensor with elements or a name the weights already hold is ignored whole, with a warning."""
    problem = _empty_problem(declared, info.schema.by_name)
    if problem:
        info.warnings.append(f"{_RECORD}: ignored its {EMPTY_TENSORS} ({problem}); the schema is the weights' own")
        return
    if declared:
        from registry.schema import Schema, TensorEntry

        restored = [TensorEntry(name, tuple(spec["shape"]), spec["dtype"]) for name, spec in declared.items()]
        info.schema = Schema([*info.schema, *restored])
        info.metadata[RESTORED_EMPTY] = sorted(declared)


def _empty_problem(declared: Any, present: dict[str, Any]) -> str | None:
    """Why `declared` is not a bounded, well-formed set of new zero-element entries, or None."""
    from .dtypes import ELEMENT_BYTES

    if type(declared) is not dict:
        return "it is not a mapping of tensor names to {shape, dtype}"
    if len(declared) > _MAX_EMPTY:
        return f"it declares {len(declared):,} tensors, more than {_MAX_EMPTY:,}"
    for name, spec in declared.items():
        if not name or len(name) > _MAX_NAME or not name.isprintable():
            return f"{name[:80]!r} is not a tensor name"
        if type(spec) is not dict or set(spec) != {"shape", "dtype"}:
            return f"{name!r} is not {{\"shape\": [...], \"dtype\": ...}}"
        shape, dtype = spec["shape"], spec["dtype"]
        if (type(shape) is not list or len(shape) > _MAX_DIMS
                or not all(type(d) is int and 0 <= d <= _MAX_DIM for d in shape)):
            return f"{name!r} has no valid shape"
        if 0 not in shape:
            return f"{name!r} has shape {shape}, which holds elements: only empty tensors are restored"
        if type(dtype) is not str or not ELEMENT_BYTES.get(dtype) or dtype.startswith(("qint", "quint", "bits")):
            return f"{name!r} has no known dtype"
        if name in present:
            return f"the weights already hold {name!r}"
    return None


_FSDP_MODEL = "pytorch_model_fsdp_0"  # accelerate's SHARDED_STATE_DICT model folder (a DCP folder)


def _distributed_checkpoint(folder: str, names: list[str], allow_unsafe: bool, limits: Limits) -> CheckpointInfo | None:
    """A torch.distributed.checkpoint or DeepSpeed folder's model, or None for other folders."""
    if any(n.endswith(".distcp") for n in names):
        from .dcp import read_dcp

        return read_dcp(folder, allow_unsafe=allow_unsafe, limits=limits)  # says so when .metadata is missing
    if "latest" in names or any(n.endswith("_model_states.pt") for n in names):
        from .deepspeed import is_deepspeed_folder, read_deepspeed

        if is_deepspeed_folder(folder, names):
            return read_deepspeed(folder, allow_unsafe=allow_unsafe, limits=limits)
    inner = os.path.join(folder, _FSDP_MODEL)
    if _FSDP_MODEL in names and not any(_WEIGHTS.match(n) for n in names) and os.path.isdir(inner):
        from .dcp import folder_step, read_dcp

        info = read_dcp(inner, allow_unsafe=allow_unsafe, limits=limits)
        info.path = folder
        info.warnings.insert(0, f"read the FSDP sharded model in {_FSDP_MODEL}/ (optimizer state is not the model)")
        step = folder_step(folder)
        if step is not None:
            info.metadata.setdefault("step", step)
        return info
    return None


def _choose_weights(names: list[str]) -> tuple[str, list[str]]:
    """The weights file or index to read, and warnings naming what else looked like weights."""
    groups: dict[tuple[str, int, str], list[str]] = {}
    for name in names:
        match = _WEIGHTS.match(name)
        if match:
            base = "model" if match["base"] == "pytorch_model" else match["base"]  # transformers names both
            key = (base, int(match["n"] or 0), match["v1"] or match["v2"] or "")
            groups.setdefault(key, []).append(name)
    if not groups:
        indexes = [n for n in names if n.endswith((".safetensors.index.json", ".bin.index.json"))]
        if len(indexes) == 1:
            return indexes[0], []
        listing = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "") if names else "nothing"
        raise FormatError(
            "no model weights found (looked for diffusion_pytorch_model*, model*, pytorch_model* as "
            f".safetensors, .bin or *.index.json); it holds {listing}"
        )
    bases = sorted({base for base, _n, _v in groups})
    if len(bases) > 1:
        raise FormatError(f"it holds weights of several kinds ({', '.join(bases)}), so which one is the model "
                          "would be a guess; pass the file you mean")
    # the plain (non-variant) weights of the first model, safetensors before pickles, an index
    # (the whole sharded model) before a single file
    key = min(groups, key=lambda k: (k[2] != "", k[1], k[2]))
    chosen = min(groups[key], key=lambda n: (".safetensors" not in n, not n.endswith(".json")))
    warnings = []
    others = [n for ns in groups.values() for n in ns if n != chosen]
    if others:
        warnings.append(f"also holds {', '.join(others[:4])}{' ...' if len(others) > 4 else ''}; "
                        f"fingerprinted {chosen} (pass another file to read it)")
    return chosen, warnings


def read_index(index_path: str, *, allow_unsafe: bool, limits: Limits, display: str | None = None) -> CheckpointInfo:
    """A sharded checkpoint from its `*.index.json` (`{"weight_map": {name: shard file}}`).

    Every shard is read (headers / pickles only) and must hold exactly the tensors the index
    assigns it. Raises FormatError for a bad index, a missing or inconsistent shard.
    """
    folder = os.path.dirname(index_path) or "."
    index = _read_json(index_path, limits.max_json_bytes)
    weight_map = index.get("weight_map") if type(index) is dict else None
    if type(weight_map) is not dict or not all(type(v) is str for v in weight_map.values()):
        raise FormatError(f"{os.path.basename(index_path)} has no weight_map of tensor names to shard files")
    shards = sorted(set(weight_map.values()))
    if len(shards) > limits.max_shards:
        raise LimitError(f"the index names {len(shards):,} shards")
    safetensors = index_path.endswith(".safetensors.index.json") or all(s.endswith(".safetensors") for s in shards)
    merged: dict[str, TensorRecord] = {}
    files, size, warnings, metadata = [], 0, [], {}
    for shard in shards:
        if shard != os.path.basename(shard) or shard in ("", ".", "..") or "\\" in shard:
            raise FormatError(f"the index names shard {shard!r} outside its folder")
        shard_path = os.path.join(folder, shard)
        if not os.path.isfile(shard_path):
            raise FormatError(f"shard {shard} listed in the index is missing")
        _fmt, raw, shard_size = read_file(shard_path, allow_unsafe=allow_unsafe, limits=limits,
                                          expect="safetensors" if safetensors else None)
        _merge(merged, raw, shard, weight_map)
        files.append(shard_path)
        size += shard_size
        warnings.extend(raw.warnings)
        for key, value in raw.metadata.items():
            metadata.setdefault(key, value)
    missing = [name for name in weight_map if name not in merged]
    if missing:
        raise FormatError(f"tensor {missing[0]!r} listed in the index is not in shard {weight_map[missing[0]]}"
                          + (f" ({len(missing) - 1} more missing)" if len(missing) > 1 else ""))
    raw = RawCheckpoint(root=merged, files=files, warnings=warnings, metadata=metadata)
    extra = {}
    index_meta = plain_copy(index.get("metadata"), limits.metadata_nodes, limits.metadata_depth)
    if type(index_meta) is dict:
        extra.update({k: v for k, v in index_meta.items() if k != "registry"})
    fmt = "sharded-safetensors" if safetensors else "sharded-bin"
    return build_info(display or index_path, fmt, raw, size, limits, extra_metadata=extra)


def _merge(merged: dict[str, TensorRecord], raw: RawCheckpoint, shard: str, weight_map: dict[str, str]) -> None:
    tensors = as_mapping(raw.root)
    if tensors is None or not is_state_dict(tensors):
        raise FormatError(f"shard {shard} does not hold a plain mapping of names to tensors")
    for name, value in tensors.items():
        if type(value) is not TensorRecord:
            continue
        if weight_map.get(name) != shard:
            where = f"the index puts it in {weight_map[name]}" if name in weight_map else "the index does not list it"
            raise FormatError(f"shard {shard} holds tensor {name!r} but {where}")
        merged[name] = value


def _read_json(path: str, cap: int) -> Any:
    data = read_capped(path, cap, os.path.basename(path))
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"{os.path.basename(path)} is not valid JSON ({str(exc).splitlines()[0][:80]})") from None
