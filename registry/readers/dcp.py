"""torch.distributed.checkpoint (DCP) folders: the `.metadata` pickle only, never the shards.

A DCP folder (FSDP2, torchtitan, Lightning's FSDP strategy, Accelerate's SHARDED_STATE_DICT)
holds `.metadata` beside `__<rank>_<n>.distcp` shard files. `.metadata` is a pickle of
`torch.distributed.checkpoint.metadata.Metadata`:
- `state_dict_metadata`: FQN -> `TensorStorageMetadata(properties, size, chunks)` (the global
  shape and the chunks each rank wrote) or `BytesStorageMetadata` (any other object);
- `planner_data`: FQN -> the key path in the state dict that was saved (`("model", "fc.weight")`);
- `storage_data`: `MetadataIndex` -> `_StorageInfo(relative_path, offset, length)`.
torch's own reader runs `pickle.load` on it; here it is interpreted like every other pickle
(nothing imported, nothing called), with only the DCP metadata classes (and the torch enums and
layouts they use) allowed as inert data records. The chunks must tile each global shape exactly.
"""

from __future__ import annotations

import copy
import os
import re
from typing import Any

from .dcp_chunks import MAX_TILING_CELLS, check_tensor, fields_of, kind_of
from .info import CheckpointInfo
from .layout import NOT_MODEL
from .limits import FormatError, LimitError, Limits, read_capped
from .policy import Findings
from .records import Global, Instance, TensorRecord
from .torch_pickle import RawCheckpoint
from .unpickler import MetadataUnpickler

METADATA_FILE = ".metadata"
MAX_PATH_DEPTH = 64  # nesting of the saved state dict (`("optim", "state", fqn, "exp_avg")` is 4)

_DCP = "torch.distributed.checkpoint"
_SHARD = "torch.distributed._shard.sharded_tensor.metadata"  # torch 2.0-2.1 kept TensorProperties here
# The only globals a `.metadata` pickle may name beyond the plain ones every reader allows.
DCP_GLOBALS = frozenset({
    *((f"{_DCP}.metadata", name) for name in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")),
    (f"{_DCP}.filesystem", "_StorageInfo"),
    (_SHARD, "TensorProperties"), (_SHARD, "MEM_FORMAT_ENCODING"),
    ("torch.serialization", "_get_layout"),  # how torch pickles `torch.strided`
})
OTHER_STATE = re.compile(r"^(optim|optimizer|optimizers|lr_scheduler|scheduler)(_\d+)?$")
OPTIMIZER_HEADS = ("optim", "optimizer")  # flat FQNs `optim.state.fc.weight.exp_avg`


def _record(vm: Any, func: Global, args: tuple) -> Instance:
    return Instance(func, args)


class DcpUnpickler(MetadataUnpickler):
    """The metadata unpickler, with DCP's metadata classes as data records (never imported)."""

    def find_global(self, module: str, name: str) -> Global:
        if (module, name) in DCP_GLOBALS:
            key = (module, name)
            found = self.globals.get(key)
            if found is None:
                found = self.globals[key] = Global(module, name, "benign", _record)
            return found
        return super().find_global(module, name)


def read_dcp(folder: str, *, allow_unsafe: bool, limits: Limits) -> CheckpointInfo:
    """The model schema of a DCP folder from its `.metadata` (global names and shapes).

    Raises FormatError / LimitError (corrupt, hostile or inconsistent metadata, a missing shard,
    a folder holding only optimizer state) and UnsafeCheckpointError (the pickle would run code).
    """
    from .checkpoint import build_info

    parsed = parse_metadata(folder, allow_unsafe=allow_unsafe, limits=limits)
    model, set_aside = split_other_state(parsed.tree)
    if not model:
        what = f"only {', '.join(set_aside[:5])}" if set_aside else f"{len(parsed.objects)} non-tensor objects"
        raise FormatError(f"it holds no model tensors ({what}): a DCP folder of optimizer or trainer state; "
                          "pass the folder of the model")
    extra: dict[str, Any] = {"dcp": {"version": parsed.version, "shards": len(parsed.shards),
                                     "other_state": set_aside[:20]}}
    extra.update(_lightning_meta(folder, parsed.warnings, limits))
    step = folder_step(folder)
    if step is not None:
        extra.setdefault("step", step)
    raw = RawCheckpoint(root=model, files=[os.path.join(folder, METADATA_FILE)], warnings=parsed.warnings)
    info = build_info(folder, "dcp-folder", raw, parsed.size_bytes, limits, extra_metadata=extra)
    if parsed.infix_wrappers:
        info.wrapper = (info.wrapper or "") + "".join(parsed.infix_wrappers)
    return info


LIGHTNING_META = "meta.pt"  # Lightning's FSDP strategy saves the trainer state beside the shards


def _lightning_meta(folder: str, warnings: list[str], limits: Limits) -> dict[str, Any]:
    """`step` and `epoch` from Lightning's `meta.pt` (read like any torch file: metadata only),
    or {}; a meta.pt that cannot be read safely is named in a warning, the model still reads."""
    from registry.errors import RegistryError

    from .checkpoint import read_file

    path = os.path.join(folder, LIGHTNING_META)
    if not os.path.isfile(path):
        return {}
    try:
        _fmt, raw, _size = read_file(path, allow_unsafe=False, limits=limits)
    except (FormatError, RegistryError) as exc:
        warnings.append(f"{LIGHTNING_META} was not read ({getattr(exc, 'message', exc)})")
        return {}
    root = raw.root if type(raw.root) is dict else {}
    found = {key: root[key] for key in ("global_step", "epoch") if type(root.get(key)) is int}
    if "global_step" in found:
        found["step"] = found.pop("global_step")
    return found


class ParsedMetadata:
    """A DCP `.metadata` read and checked: `tensors` maps each saved FQN to (dtype, global shape);
    `tree` is the state dict that was saved, rebuilt from `planner_data` with tensor records as
    leaves (object entries dropped, FSDP wrapper segments removed from names); `names` maps each
    tree path back to its FQN in the folder; `data` is the `.metadata` bytes that were checked."""

    def __init__(self) -> None:
        self.data = b""
        self.tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
        self.objects: list[str] = []
        self.tree: dict[Any, Any] = {}
        self.names: dict[tuple, str] = {}
        self.shards: list[str] = []
        self.size_bytes = 0
        self.version: str | None = None
        self.warnings: list[str] = []
        self.infix_wrappers: list[str] = []


METADATA_SCALE = 4  # pickle bounds for .metadata, relative to a torch file's data.pkl


def metadata_limits(limits: Limits) -> Limits:
    """The pickle bounds for a `.metadata`: 4x those of a torch file's `data.pkl`, because it
    holds one chunk record (about 65 pickle instructions) per tensor per rank: 300 tensors on 256
    ranks is ~5M instructions. It is data only (nothing but DCP records is allowed), so a hostile
    one still ends within the raised bounds (seconds, a few hundred MB)."""
    scaled = copy.copy(limits)
    scaled.max_instructions = limits.max_instructions * METADATA_SCALE
    scaled.max_memo = limits.max_memo * METADATA_SCALE
    scaled.max_pickle_bytes = limits.max_pickle_bytes * METADATA_SCALE
    return scaled


def parse_metadata(folder: str, *, allow_unsafe: bool, limits: Limits) -> ParsedMetadata:
    """Read and check `folder/.metadata`; see `ParsedMetadata`. Raises as `read_dcp`.

    The pickle is interpreted once for the same bytes: a resume reads the folder to match it and
    again to load it (`registry.sharded_load`), and the second read only compares the bytes.
    """
    limits = metadata_limits(limits)
    path = os.path.join(folder, METADATA_FILE)
    data = read_capped(path, limits.max_pickle_bytes, METADATA_FILE,
                       missing=f"{METADATA_FILE} is missing, so it is not a complete DCP checkpoint")
    if not data:
        raise FormatError(f"{METADATA_FILE} is empty (an interrupted save?)")
    checked = _interpreted(data, path, allow_unsafe, limits)
    parsed = ParsedMetadata()
    parsed.data = data
    parsed.version, parsed.warnings = checked.version, list(checked.warnings)
    parsed.tensors, parsed.objects = checked.tensors, list(checked.objects)
    _build_tree(parsed, checked.planner_data)
    _check_shards(parsed, folder, checked.storage_data, limits)
    parsed.size_bytes += len(data)
    return parsed


class _Interpreted:
    """What interpreting a `.metadata` pickle gave (the costly part of reading a DCP folder)."""

    def __init__(self, data: bytes, key: tuple):
        self.data, self.key = data, key
        self.version: str | None = None
        self.warnings: list[str] = []
        self.tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
        self.objects: list[str] = []
        self.planner_data: Any = None
        self.storage_data: Any = None


_LAST: list[_Interpreted] = []  # the last `.metadata` interpreted (at most one is kept)


def _interpreted(data: bytes, path: str, allow_unsafe: bool, limits: Limits) -> _Interpreted:
    """`data` run through the restricted interpreter and each tensor's chunks checked; the last
    result is reused for the same file, bytes and bounds (bytes compared, so a changed file is
    interpreted again)."""
    key = (os.path.abspath(path), allow_unsafe, repr(limits))
    if _LAST and _LAST[0].key == key and _LAST[0].data == data:
        return _LAST[0]
    findings = Findings()
    machine = DcpUnpickler(data, limits=limits, findings=findings)
    try:
        root = machine.load()
    except FormatError:
        _verdict(findings, path, allow_unsafe)
        raise
    checked = _Interpreted(data, key)
    checked.warnings = _verdict(findings, path, allow_unsafe)
    fields = fields_of(root, "Metadata", "the .metadata pickle")
    entries = fields.get("state_dict_metadata")
    if type(entries) is not dict:
        raise FormatError(".metadata has no state_dict_metadata mapping of names to tensors")
    version = fields.get("version")
    checked.version = version if type(version) is str else None
    budget = [MAX_TILING_CELLS]
    chunks_seen = 0
    for fqn, entry in entries.items():
        if type(fqn) is not str:
            raise FormatError(f".metadata names an entry by a {type(fqn).__name__}, not a string")
        kind = entry.cls.name if type(entry) is Instance and entry.cls is not None else None
        if kind == "BytesStorageMetadata":
            checked.objects.append(fqn)
            continue
        if kind != "TensorStorageMetadata":
            raise FormatError(f".metadata entry {fqn[:80]!r} is a {kind_of(entry)}, not tensor or bytes storage metadata")
        dtype, shape, count = check_tensor(fqn, fields_of(entry, kind, f"entry {fqn[:80]!r}"), budget)
        chunks_seen += count
        if chunks_seen > limits.max_tensors:
            raise LimitError(f".metadata lists more than {limits.max_tensors:,} chunks")
        checked.tensors[fqn] = (dtype, shape)
    if len(checked.tensors) > limits.max_tensors:
        raise LimitError(f".metadata lists more than {limits.max_tensors:,} tensors")
    checked.planner_data, checked.storage_data = fields.get("planner_data"), fields.get("storage_data")
    _LAST[:] = [checked]
    return checked


def _verdict(findings: Findings, path: str, allow_unsafe: bool) -> list[str]:
    """`Findings.verdict`, naming the loader that would run the code: torch's DCP reader unpickles
    `.metadata` with a plain `pickle.load`."""
    from registry.errors import UnsafeCheckpointError

    try:
        return findings.verdict(path, allow_unsafe=allow_unsafe, where=".metadata")
    except UnsafeCheckpointError as exc:
        message = exc.message.replace("torch.load(weights_only=False)", "torch.distributed.checkpoint.load")
        raise UnsafeCheckpointError(message, hint=exc.hint) from None


_FSDP_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def _clean(name: str, parsed: ParsedMetadata) -> str:
    """`layers.0._fsdp_wrapped_module.attn.weight` -> `layers.0.attn.weight` (FSDP1 / activation
    checkpointing wrap modules anywhere in the tree, so their segment can sit mid-name)."""
    for segment in _FSDP_SEGMENTS:
        if segment in name:
            name = name.replace(segment, "")
            if segment not in parsed.infix_wrappers:
                parsed.infix_wrappers.append(segment)
    return name


def _build_tree(parsed: ParsedMetadata, planner_data: Any) -> None:
    """The saved state dict's nesting from `planner_data`; flat FQNs when it is absent or does
    not describe these entries (a custom planner)."""
    paths = {}
    if type(planner_data) is dict:
        for fqn in parsed.tensors:
            path = planner_data.get(fqn)
            if (type(path) is not tuple or not path or not all(type(p) in (str, int) for p in path)
                    or ".".join(map(str, path)) != fqn):
                paths = {}
                break
            paths[fqn] = path
    tree: dict[Any, Any] = {}
    for fqn, (dtype, shape) in parsed.tensors.items():
        path = paths.get(fqn, (fqn,))
        if len(path) > MAX_PATH_DEPTH:
            raise FormatError(f".metadata nests {fqn[:80]!r} {len(path)} levels deep in its state dict")
        path = path[:-1] + (_clean(path[-1], parsed) if type(path[-1]) is str else path[-1],)
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
            if type(node) is not dict:
                raise FormatError(f".metadata puts {fqn[:80]!r} beneath another tensor")
        if path[-1] in node:
            raise FormatError(f".metadata names tensor {fqn[:80]!r} twice once FSDP wrappers are removed")
        node[path[-1]] = TensorRecord(dtype, shape)
        parsed.names[path] = fqn
    parsed.tree = tree


def split_other_state(tree: dict) -> tuple[dict, list[str]]:
    """(the tree without optimizer / scheduler state, the top-level keys set aside).

    Nested trainers save `{"model": ..., "optim": ...}` (`optimizer_0` in Lightning); torchtitan
    flattens the model to the top beside `optimizer.state.<fqn>.exp_avg` FQNs.
    """
    model, aside = {}, []
    for key, value in tree.items():
        head = key.split(".", 1)[0] if type(key) is str else key
        other = (type(value) is dict and (key in NOT_MODEL or (type(key) is str and OTHER_STATE.match(key))))
        if other or (type(key) is str and "." in key and head in OPTIMIZER_HEADS):
            aside.append(str(head))
            continue
        model[key] = value
    return model, sorted(set(aside))


def _check_shards(parsed: ParsedMetadata, folder: str, storage_data: Any, limits: Limits) -> None:
    """The shard files `storage_data` names (else the folder's `*.distcp` files) exist (by stat;
    never opened), at most `limits.max_shards` of them, and their total size."""
    names: set[str] = set()
    if type(storage_data) is dict:
        for info in storage_data.values():
            state = info.state if type(info) is Instance else None
            relative = state.get("relative_path") if type(state) is dict else None
            if type(relative) is not str:
                names = set()
                break
            names.add(relative)
            if len(names) > limits.max_shards:
                raise LimitError(f".metadata names more than {limits.max_shards:,} shard files")
    if not names:
        names = {n for n in os.listdir(folder) if n.endswith(".distcp")}
        if len(names) > limits.max_shards:
            raise LimitError(f"the folder holds more than {limits.max_shards:,} shard files")
        parsed.warnings.append(".metadata does not name its shard files (a custom storage writer?); "
                               "counted the *.distcp files")
    for name in sorted(names):
        if name != os.path.basename(name) or name in ("", ".", "..") or "\\" in name:
            raise FormatError(f".metadata names shard {name[:80]!r} outside its folder")
        try:
            size = os.stat(os.path.join(folder, name)).st_size
        except FileNotFoundError:
            raise FormatError(f"shard {name} named by .metadata is missing (an incomplete copy?)") from None
        parsed.size_bytes += size
        parsed.shards.append(name)


_STEP_FOLDER = re.compile(r"^(?:step|checkpoint|global_step|iter|iteration)[-_]?0*(\d+)$")
_LIGHTNING_STEP = re.compile(r"(?:^|-)step=0*(\d+)(?:-[^/]*)?(?:\.ckpt)?$")  # `epoch=0-step=1200.ckpt`


def folder_step(folder: str) -> int | None:
    """The step a trainer's folder name records (`step-1200`, `checkpoint-1200`, `global_step1200`,
    Lightning's `epoch=3-step=1200.ckpt`), or None."""
    name = os.path.basename(os.path.normpath(folder))
    match = _STEP_FOLDER.match(name) or _LIGHTNING_STEP.search(name)
    return int(match.group(1)) if match else None
