"""DeepSpeed checkpoint folders (`engine.save_checkpoint(save_dir)`): the model-states pickle only.

Layout (DeepSpeed 0.x):
- `save_dir/latest`: a text file naming the newest tag (`global_step1200`);
- `save_dir/<tag>/mp_rank_00_model_states.pt` (ZeRO 0-2): `module` holds the full state dict;
- `save_dir/<tag>/zero_pp_rank_<dp>_mp_rank_00_model_states.pt` (ZeRO-3, one per data-parallel
  rank): `module` holds empty placeholders for the partitioned parameters;
- beside them `[bf16_]zero_pp_rank_<dp>_mp_rank_00_optim_states.pt`: optimizer partitions (and
  under ZeRO-3 the fp32 weights), never read here.
Every model-states file also records `param_shapes` (one OrderedDict name -> shape per optimizer
parameter group), `buffer_names`, `frozen_param_shapes`, `shared_params` and `global_steps`. The
schema is the module's entries with each parameter's shape taken from `param_shapes`, so a ZeRO-3
checkpoint fingerprints as the model it holds.
"""

from __future__ import annotations

import os
import re
import stat
from collections import Counter
from typing import Any

from .info import CheckpointInfo
from .layout import as_mapping
from .limits import FormatError, Limits
from .records import TensorRecord
from .torch_pickle import RawCheckpoint

LATEST_FILE = "latest"
MODEL_STATES = re.compile(r"^(?:zero_pp_rank_(?P<dp>\d+)_)?mp_rank_(?P<mp>\d+)_model_states\.pt$")
OPTIM_STATES = re.compile(r"^(?:bf16_)?zero_pp_rank_(?P<dp>\d+)_mp_rank_(?P<mp>\d+)_?optim_states\.pt$")
PIPELINE_STATES = re.compile(r"^layer_\d+-model_states\.pt$")
# Bookkeeping of DeepSpeed's own, not the trainer's metadata: shapes are read, the rest is noise.
_NOT_METADATA = ("module", "param_shapes", "frozen_param_shapes", "frozen_param_fragments", "shared_params",
                 "buffer_names", "optimizer", "lr_scheduler", "data_sampler", "random_ltd", "ds_config")


def is_deepspeed_folder(folder: str, names: list[str] | set[str]) -> bool:
    """Whether `folder` (holding `names`) is a DeepSpeed tag folder (model states) or save_dir
    (a `latest` file naming a tag folder that holds model states)."""
    if any(MODEL_STATES.match(n) or PIPELINE_STATES.match(n) for n in names):
        return True
    if LATEST_FILE not in names:
        return False
    try:
        tag, _ = tag_folder(folder)
        return tag != folder and any(MODEL_STATES.match(n) or PIPELINE_STATES.match(n) for n in os.listdir(tag))
    except (FormatError, OSError):
        return any(n.startswith("zero_to_fp32") for n in names)  # DeepSpeed's, with a broken `latest`


def tag_folder(path: str) -> tuple[str, str | None]:
    """(the tag folder holding the model states, the tag `latest` named or None).

    `path` is a save_dir with `latest`, a tag folder, or a model-states file's folder.
    Raises FormatError when `latest` is unreadable or names no folder.
    """
    latest = os.path.join(path, LATEST_FILE)
    if not os.path.isfile(latest):
        return path, None
    with open(latest, "rb") as handle:
        raw = handle.read(4097)
    try:
        tag = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        tag = ""
    if not tag or len(raw) > 4096 or "\n" in tag or tag in (".", "..") or "/" in tag or "\\" in tag:
        raise FormatError("its `latest` file does not name a checkpoint tag (a DeepSpeed save_dir?)")
    folder = os.path.join(path, tag)
    if not os.path.isdir(folder):
        raise FormatError(f"its `latest` file names tag {tag!r}, but there is no folder {tag}/ (an incomplete copy?)")
    return folder, tag


def model_states_file(folder: str) -> tuple[str, int | None]:
    """(the model-states file to read, the ZeRO stage its name implies: 3, or None).

    Raises FormatError for pipeline- or tensor-parallel checkpoints, whose files hold slices
    without the global shapes, and for a folder with no model states.
    """
    names = sorted(os.listdir(folder))
    if any(PIPELINE_STATES.match(n) for n in names):
        raise FormatError("it is a DeepSpeed pipeline-parallel checkpoint (layer_*-model_states.pt), which stores "
                          "each stage's slice without the whole model's names; it is not read")
    found = [(m, n) for n in names if (m := MODEL_STATES.match(n))]
    if not found:
        listing = ", ".join(names[:6]) + (" ..." if len(names) > 6 else "") if names else "nothing"
        raise FormatError(f"no DeepSpeed model states (mp_rank_00_model_states.pt) found; it holds {listing}")
    mp_ranks = sorted({int(m["mp"]) for m, _ in found})
    if mp_ranks != [0]:
        raise FormatError(f"it holds {len(mp_ranks)} tensor-parallel ranks (mp_rank_{mp_ranks[-1]:02d}...): each file "
                          "holds a slice of the model without its global shapes; it is not read")
    zero3 = [(int(m["dp"]), n) for m, n in found if m["dp"] is not None]
    if zero3:
        return os.path.join(folder, min(zero3)[1]), 3
    return os.path.join(folder, found[0][1]), None


def read_deepspeed(path: str, *, allow_unsafe: bool, limits: Limits) -> CheckpointInfo:
    """The model schema of a DeepSpeed checkpoint (save_dir with `latest`, a tag folder, or its
    model-states file), from the model-states pickle only.

    Raises FormatError (unreadable, inconsistent, parallel layouts not read) and
    UnsafeCheckpointError (the pickle would run code).
    """
    from .checkpoint import build_info, read_file

    if os.path.isdir(path):
        folder, tag = tag_folder(path)
        file, stage = model_states_file(folder)
    else:
        folder, tag = os.path.dirname(path) or ".", None
        file, stage = path, 3 if MODEL_STATES.match(os.path.basename(path))["dp"] is not None else None
    _fmt, raw, _size = read_file(file, allow_unsafe=allow_unsafe, limits=limits)
    root = raw.root if type(raw.root) is dict else None
    module = as_mapping(root.get("module")) if root is not None else None
    if module is None:
        raise FormatError(f"{os.path.basename(file)} has no `module` state dict, so it is not DeepSpeed model states")
    stage = stage if stage is not None else _stage(root)
    entries = _entries(module, root, stage, os.path.basename(file))
    metadata_root = {key: value for key, value in root.items() if key not in _NOT_METADATA}
    metadata_root["module"] = entries
    extra: dict[str, Any] = {"deepspeed": {
        "zero_stage": stage, "tag": tag or os.path.basename(os.path.normpath(folder)),
        "version": root.get("ds_version") if type(root.get("ds_version")) is str else None,
        "dp_world_size": root.get("dp_world_size") if type(root.get("dp_world_size")) is int else None,
    }}
    if type(root.get("global_steps")) is int:
        extra["step"] = root["global_steps"]
    size = sum(_size_of(os.path.join(folder, n)) for n in os.listdir(folder)
               if MODEL_STATES.match(n) or OPTIM_STATES.match(n))
    raw = RawCheckpoint(root=metadata_root, files=[file], warnings=raw.warnings)
    return build_info(path, "deepspeed-folder", raw, size, limits, extra_metadata=extra)


def _size_of(path: str) -> int:
    try:
        info = os.stat(path)
    except OSError:
        return 0
    return info.st_size if stat.S_ISREG(info.st_mode) else 0


def _stage(root: dict) -> int | None:
    config = root.get("ds_config")
    zero = config.get("zero_optimization") if type(config) is dict else None
    stage = zero.get("stage") if type(zero) is dict else None
    return stage if type(stage) is int and 0 <= stage <= 3 else None


def _shapes(value: Any, what: str) -> dict[str, tuple[int, ...]]:
    """name -> shape from `param_shapes` (a list of mappings, one per group) or `frozen_param_shapes`."""
    groups = value if type(value) is list else [value] if value is not None else []
    shapes: dict[str, tuple[int, ...]] = {}
    for group in groups:
        mapping = as_mapping(group)
        if mapping is None:
            raise FormatError(f"`{what}` is not a mapping of parameter names to shapes")
        for name, shape in mapping.items():
            if (type(name) is not str or type(shape) not in (tuple, list) or len(shape) > 64
                    or any(type(d) is not int or d < 0 for d in shape)):
                raise FormatError(f"`{what}` holds a malformed entry for {str(name)[:80]!r}")
            shapes[name] = tuple(shape)
    return shapes


def _entries(module: dict, root: dict, stage: int | None, file: str) -> dict[str, TensorRecord]:
    """The module's tensors with the recorded parameter shapes (ZeRO-3 placeholders replaced)."""
    shapes = _shapes(root.get("param_shapes"), "param_shapes")
    frozen = _shapes(root.get("frozen_param_shapes"), "frozen_param_shapes")
    tensors = {name: value for name, value in module.items() if type(value) is TensorRecord}
    dtypes = Counter(value.dtype for value in tensors.values())
    default_dtype = dtypes.most_common(1)[0][0] if dtypes else "float32"
    entries: dict[str, TensorRecord] = {}
    for name, value in tensors.items():
        shape = shapes.get(name, frozen.get(name))
        if shape is None:
            if stage == 3 and 0 in value.shape and name not in buffer_names(root):
                raise FormatError(f"{file}: {name[:80]!r} is a ZeRO-3 placeholder but param_shapes has no shape for it")
            entries[name] = value
            continue
        if stage != 3 and value.shape != shape:
            raise FormatError(f"{file}: param_shapes gives {name[:80]!r} shape {list(shape)} but `module` holds "
                              f"{list(value.shape)}")
        entries[name] = TensorRecord(value.dtype, shape)  # never loaded from here: a schema entry
    for name, shape in {**frozen, **shapes}.items():  # excluded from `module` (exclude_frozen_parameters)
        entries.setdefault(name, TensorRecord(default_dtype, shape))
    for alias, original in shared_pairs(root.get("shared_params")):
        if alias not in entries and original in entries:
            entries[alias] = entries[original]
    return entries


def buffer_names(root: dict) -> set[str]:
    """The names `buffer_names` lists (buffers are saved whole in `module`, even under ZeRO-3)."""
    names = root.get("buffer_names")
    return {n for n in names if type(n) is str} if type(names) is list else set()


def shared_pairs(value: Any) -> list[tuple[str, str]]:
    """Tied parameters as (alias, original) from `shared_params`: `{alias: original}` (0.10+) or
    `[[alias, original], ...]` (older); malformed pairs are left out."""
    mapping = as_mapping(value)
    pairs = list(mapping.items()) if mapping is not None else value if type(value) is list else []
    return [(a, b) for pair in pairs if type(pair) in (tuple, list) and len(pair) == 2
            for a, b in [pair] if type(a) is str and type(b) is str]
