"""`registry scan`: find every checkpoint below a folder, fingerprint it, match it and record it.

What counts as one checkpoint:
- a file ending in .pt .pth .ckpt .bin or .safetensors;
- a diffusers model folder (`config.json` and `diffusion_pytorch_model*` weights): the folder;
- an accelerate / Trainer folder (`checkpoint-N`, or one holding `optimizer.bin`, `random_states_0.pkl`
  ...) with `model*` / `pytorch_model*` weights: the folder;
- a sharded checkpoint's `*.safetensors.index.json` / `*.bin.index.json`: the index, not its shards;
- a torch.distributed.checkpoint folder (`.metadata` beside `*.distcp` shards): the folder, except
  accelerate's `optimizer_N/` folders, which hold only optimizer state;
- a DeepSpeed tag folder (`global_stepN/` with `*_model_states.pt` beside `*_optim_states.pt`): the
  folder; its save_dir (`latest`, `zero_to_fp32.py`) is not a checkpoint of its own.
Optimizer, scheduler, scaler, RNG and training-argument files (`optimizer.pt`, `rng_state.pth`,
`training_args.bin` ...) hold no model and are never read. A diffusers pipeline folder
(`model_index.json`) is not one checkpoint: its component folders are.

Symbolic links to folders are not followed (no loops); a file reached through several links is
recorded once, preferably under its own name. Paths are absolute (not resolved), as `registry match`
looks them up, and the walk is sorted, so the answer is the same on every run. Each checkpoint is
recorded with the size and mtime of its path (for a folder: the folder's own), insert-or-get: a
second scan adds no rows.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from .errors import DatabaseError, RegistryError, UsageError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
INDEX_SUFFIXES = (".safetensors.index.json", ".bin.index.json")
_NOT_A_MODEL = re.compile(r"^(optimizer|scheduler|scaler|rng_state|random_states|training_args)(_\d+)?\.(bin|pt|pth|pkl)$")
_TRAINER_FOLDER = re.compile(r"^checkpoint[-_]\d+$")
_MAX_INDEX_BYTES = 16 << 20


@dataclass(frozen=True)
class ScannedCheckpoint:
    """One checkpoint read, matched and recorded. `status` is the match status (exact, ambiguous,
    convertible, inferred, none); `variant` the matched variant (None unless exact/convertible)."""

    path: str
    fingerprint: str
    format: str
    variant: str | None
    status: str
    step: int | None
    run_id: str | None
    new: bool  # False when the registry already held this path with this size and mtime
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "fingerprint": self.fingerprint, "format": self.format, "variant": self.variant,
                "status": self.status, "step": self.step, "run_id": self.run_id, "new": self.new,
                "warnings": self.warnings}


@dataclass(frozen=True)
class Skipped:
    """A checkpoint (or folder) that could not be read or listed: `error` is one line."""

    path: str
    error: str
    exit_code: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "error": self.error}


@dataclass
class ScanSummary:
    root: str
    scanned: int = 0
    checkpoints: list[ScannedCheckpoint] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def recorded(self) -> int:
        return len(self.checkpoints)

    @property
    def new(self) -> int:
        return sum(1 for c in self.checkpoints if c.new)

    def add(self, outcome: ScannedCheckpoint | Skipped) -> None:
        self.scanned += 1
        if isinstance(outcome, Skipped):
            self.skipped.append(outcome)
        else:
            self.checkpoints.append(outcome)

    def to_json(self) -> dict[str, Any]:
        return {"root": self.root, "scanned": self.scanned, "recorded": self.recorded, "new": self.new,
                "skipped": [s.to_json() for s in self.skipped], "checkpoints": [c.to_json() for c in self.checkpoints]}


# --- finding checkpoints ----------------------------------------------------------------------


def _weights_base(name: str) -> str | None:
    """`diffusion_pytorch_model` or `model` for a weights file or index of those names, else None."""
    if not name.endswith((".safetensors", ".bin", *INDEX_SUFFIXES)):
        return None
    for base in ("diffusion_pytorch_model", "pytorch_model", "model"):
        if name.startswith(base) and name[len(base):len(base) + 1] in (".", "_", "-"):
            return "model" if base == "pytorch_model" else base
    return None


def _shards(index_path: str) -> set[str]:
    """The shard file names an index assigns tensors to (nothing when it cannot be read: the
    reader then says why, and the shards are scanned as files)."""
    try:
        if os.path.getsize(index_path) > _MAX_INDEX_BYTES:
            return set()
        with open(index_path, encoding="utf-8") as handle:
            weight_map = json.load(handle).get("weight_map")
        return {v for v in weight_map.values() if isinstance(v, str)} if isinstance(weight_map, dict) else set()
    except (OSError, ValueError, AttributeError):
        return set()


_SHARDED_FILE = re.compile(r"\.distcp$|^\.metadata$|^meta\.pt$|_model_states\.pt$|_optim_states\.pt$")
_OPTIMIZER_FOLDER = re.compile(r"^optimizer(_\d+)?$")  # accelerate's FSDP optimizer state (a DCP folder)
_FSDP_MODEL = "pytorch_model_fsdp_0"  # accelerate's FSDP model (a DCP folder) inside checkpoint-N/


def _sharded_units(folder: str, names: list[str]) -> list[str] | None:
    """A DCP or DeepSpeed folder as one checkpoint (plus other checkpoint files beside it), or None."""
    dcp = any(n.endswith(".distcp") for n in names)  # without .metadata: an interrupted save, reported
    deepspeed = any(n.endswith("_model_states.pt") and re.match(r"^(zero_pp_rank_\d+_)?mp_rank_\d+_", n) for n in names)
    if not dcp and not deepspeed:
        return None
    consumed = {n for n in names if _SHARDED_FILE.search(n)}
    unit = [] if dcp and _OPTIMIZER_FOLDER.match(os.path.basename(folder)) else [folder]
    return unit + _files(folder, names, consumed)


def _units_in(folder: str, names: list[str]) -> list[str]:
    """The checkpoints directly in `folder` (the folder itself, index files, files), given its
    file names."""
    sharded = _sharded_units(folder, names)
    if sharded is not None:
        return sharded
    if "model_index.json" not in names:
        bases = {name: _weights_base(name) for name in names}
        if "config.json" in names and "diffusion_pytorch_model" in bases.values():
            consumed = {n for n, b in bases.items() if b == "diffusion_pytorch_model"}
            return [folder] + _files(folder, names, consumed)
        trainer = _TRAINER_FOLDER.match(os.path.basename(folder)) or any(_NOT_A_MODEL.match(n) for n in names)
        if trainer and "model" in bases.values():
            consumed = {n for n, b in bases.items() if b == "model"}
            return [folder] + _files(folder, names, consumed)
    units, consumed = [], set()
    for name in names:
        if name.endswith(INDEX_SUFFIXES):
            units.append(os.path.join(folder, name))
            consumed |= _shards(os.path.join(folder, name))
    return units + _files(folder, names, consumed)


def _files(folder: str, names: list[str], consumed: set[str]) -> list[str]:
    return [os.path.join(folder, n) for n in names
            if n not in consumed and n.lower().endswith(CHECKPOINT_SUFFIXES) and not _NOT_A_MODEL.match(n)]


def find_checkpoints(root: str) -> tuple[list[str], list[Skipped]]:
    """Every checkpoint below `root` (absolute paths, sorted) and the folders that could not be listed.

    Raises `UsageError` (exit 2) when `root` is not a directory.
    """
    top = os.path.abspath(root)
    if not os.path.isdir(top):
        what = "does not exist" if not os.path.lexists(top) else "is not a directory"
        raise UsageError(f"{root} {what}", hint="`registry scan` takes a folder; `registry match FILE` reads one checkpoint")
    problems: list[Skipped] = []

    def unlisted(exc: OSError) -> None:
        problems.append(Skipped(exc.filename or top, f"cannot list {exc.filename or top}: {exc.strerror or exc}", 3))

    units: list[str] = []
    for folder, dirs, files in os.walk(top, onerror=unlisted, followlinks=False):
        dirs.sort()
        if _FSDP_MODEL in dirs and not any(_weights_base(n) == "model" for n in files):
            # accelerate's SHARDED_STATE_DICT: checkpoint-N/ is the checkpoint, as `read_checkpoint` and
            # `--resume latest` name it; its pytorch_model_fsdp_0/ and optimizer_0/ are parts of it
            units.append(folder)
            dirs[:] = [d for d in dirs if d != _FSDP_MODEL and not _OPTIMIZER_FOLDER.match(d)]
        units.extend(_units_in(folder, sorted(files)))
    return _once(units), problems


def _once(units: Iterable[str]) -> list[str]:
    """Sorted, with each real file once: its own path before any link to it."""
    chosen: dict[str, str] = {}
    for path in sorted(units, key=lambda p: (os.path.islink(p), p)):
        chosen.setdefault(os.path.realpath(path) if os.path.exists(path) else path, path)
    return sorted(chosen.values())


# --- recording --------------------------------------------------------------------------------


def record_checkpoint(reg: Any, path: str, *, allow_unsafe: bool = False) -> ScannedCheckpoint:
    """Read the checkpoint at `path` (metadata only), match it and record it (insert-or-get).

    The record names the matched schema version only for an exact match, and the run named in
    the file's embedded registry metadata only when that run is in the registry. Raises
    `CheckpointError` (exit 3) for an unreadable or unsafe file, `DatabaseError` (exit 4).
    """
    from .matching import EXACT, match_checkpoint
    from .readers import read_checkpoint

    path = os.path.abspath(path)
    info = read_checkpoint(path, allow_unsafe=allow_unsafe)
    stat = os.stat(path)
    result = match_checkpoint(reg, info, nearest=0)
    exact = result.status == EXACT
    run_id = info.embedded_run_id
    if run_id is not None and reg.get_run(run_id) is None:
        run_id = None
    new = reg.find_checkpoint(path, stat.st_size, stat.st_mtime) is None
    record = reg.register_checkpoint(
        path, size=stat.st_size, mtime=stat.st_mtime, format=info.format, container=info.container,
        wrapper=info.wrapper, prefix=result.prefix if exact else None, fingerprint=info.fingerprint,
        step=info.step, schema_version_id=result.schema_version_id if exact else None, run_id=run_id,
    )
    variant = result.variant if result.status in (EXACT, "convertible") else None
    return ScannedCheckpoint(path, info.fingerprint, info.format, variant, result.status, info.step,
                             record.run_id, new, [*info.warnings, *result.warnings])


def scan_one(reg: Any, path: str, *, allow_unsafe: bool = False, reraise: bool = False) -> ScannedCheckpoint | Skipped:
    """`record_checkpoint`, with a failure returned as `Skipped` instead of raised.

    A database failure is still raised (`DatabaseError`): it is not the file's fault and the next
    file would fail too. `reraise=True` (`--debug`) raises everything.
    """
    try:
        return record_checkpoint(reg, path, allow_unsafe=allow_unsafe)
    except DatabaseError:
        raise
    except RegistryError as exc:
        if reraise:
            raise
        return Skipped(path, " ".join(exc.message.split()), exc.exit_code)
    except Exception as exc:  # a bug met on one file must not end a scan of thousands
        if reraise:
            raise
        return Skipped(path, f"cannot record {path}: unexpected {type(exc).__name__} ({str(exc)[:100]}); "
                             "run with --debug and report it", 1)


def scan(reg: Any, root: str, *, allow_unsafe: bool = False, reraise: bool = False) -> ScanSummary:
    """Find, read, match and record every checkpoint below `root`; returns the summary.

    Never raises for a file (it is listed in `skipped`); raises `UsageError` when `root` is not a
    directory and `DatabaseError` for a database failure.
    """
    units, problems = find_checkpoints(root)
    summary = ScanSummary(os.path.abspath(root), skipped=list(problems))
    for path in units:
        summary.add(scan_one(reg, path, allow_unsafe=allow_unsafe, reraise=reraise))
    return summary
