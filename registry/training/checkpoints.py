"""Training checkpoints in an output folder: written atomically, found again by `--resume latest`.

A training checkpoint is a torch file `step-00000120.pt` holding
`{"model": state_dict, "registry": metadata, "optimizer": ..., "optimizer_param_names": [...],
"step": 120, "rng": ...}`: the model under a key the readers know, the registry metadata that
matching checks first (DESIGN §5 step 1), and what a resume needs to continue exactly (optimizer
state keyed by parameter name order, so a converter can carry it across a layout change, and the
RNG state).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from registry.atomic import temporary_of
from registry.errors import CheckpointError
from registry.tensors import save_checkpoint

CHECKPOINT_NAME = re.compile(r"^step-(\d{8,})\.pt$")


def checkpoint_path(out_dir: Path, step: int) -> Path:
    return out_dir / f"step-{step:08d}.pt"


def checkpoints_in(out_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every finished training checkpoint in `out_dir`, newest first.

    Temporary files of an interrupted write (`.step-….pt.tmp-…`) never match the name pattern.
    """
    if not out_dir.is_dir():
        return []
    found = []
    for path in out_dir.iterdir():
        match = CHECKPOINT_NAME.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def latest_checkpoint(out_dir: Path, readable: Callable[[Path], Any], warn: Callable[[str], None]) -> Any | None:
    """`readable(path)` of the newest checkpoint in `out_dir` that reads, or None if there is none.

    A newest file that does not read (a disk fault: our writes are atomic) is named in a warning
    and the one before it is tried, so a requeued job continues from the last good step instead
    of failing at 3 a.m.; it never silently starts over, because an empty answer means the folder
    holds no checkpoint at all.
    """
    candidates = checkpoints_in(out_dir)
    for step, path in candidates:
        try:
            return readable(path)
        except CheckpointError as exc:
            warn(f"skipping {path}: {exc.message}")
    if candidates:
        raise CheckpointError(f"none of the {len(candidates)} checkpoints in {out_dir} can be read")
    return None


def remove_interrupted_writes(out_dir: Path) -> list[Path]:
    """Delete the temporary files that killed writers left in `out_dir`; returns what was removed.

    A file whose writer (the pid in its name) still runs on this host is left alone. A
    multi-gigabyte leftover per pre-emption would otherwise fill a shared disk.
    """
    removed = []
    if not out_dir.is_dir():
        return removed
    for path in out_dir.iterdir():
        temporary = temporary_of(path.name)
        if temporary and CHECKPOINT_NAME.match(temporary[0]) and not _running(temporary[1]):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@dataclass(frozen=True)
class TrainingState:
    """What a resume restores besides the weights."""

    optimizer: dict[str, Any] | None
    optimizer_param_names: list[str] | None
    rng: Any | None


def write_training_checkpoint(
    out_dir: Path,
    step: int,
    model_state: dict[str, Any],
    metadata: dict[str, Any],
    optimizer: dict[str, Any],
    optimizer_param_names: list[str],
    rng: Any,
) -> Path:
    """Write `step-NNNNNNNN.pt` atomically (temp file, fsync, rename); returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = {"optimizer": optimizer, "optimizer_param_names": optimizer_param_names, "step": step, "rng": rng}
    return save_checkpoint(checkpoint_path(out_dir, step), model_state, metadata, extra)


def read_training_state(path: str) -> TrainingState:
    """The optimizer and RNG state of a checkpoint our trainer wrote (all None for other files).

    Loads with `weights_only=True`, so no code in the file runs. Raises `CheckpointError` when
    the file cannot be loaded.
    """
    if path.endswith(".safetensors"):
        return TrainingState(None, None, None)
    import pickle

    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, pickle.UnpicklingError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot load its optimizer state ({str(exc).splitlines()[0]})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("optimizer"), dict):
        return TrainingState(None, None, None)
    names = payload.get("optimizer_param_names")
    return TrainingState(payload["optimizer"], list(names) if isinstance(names, list) else None, payload.get("rng"))
