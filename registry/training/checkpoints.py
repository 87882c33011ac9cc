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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.atomic import temporary_of
from registry.tensors import save_checkpoint

CHECKPOINT_NAME = re.compile(r"^step-(\d{8,})\.pt$")


def checkpoint_path(out_dir: Path, step: int) -> Path:
    return out_dir / f"step-{step:08d}.pt"


def checkpoints_in(out_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every finished training checkpoint of ours in `out_dir`, newest first.

    `registry.latest` finds the newest checkpoint of any trainer's naming (`--resume latest`).
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
    """What a resume restores besides the weights.

    `optimizer`, `optimizer_param_names` and `rng` are our trainer's; `extra` is every top-level
    entry of the checkpoint besides the model and the registry record (a user's own
    `optimizer_state_dict`, scheduler, epoch, ...; ours: `optimizer`, `step`, `rng`, ...).
    """

    optimizer: dict[str, Any] | None
    optimizer_param_names: list[str] | None
    rng: Any | None
    extra: dict[str, Any] = field(default_factory=dict)


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


def training_state_of(payload: Any, container: str | None) -> TrainingState:
    """The optimizer and RNG state of a checkpoint our trainer wrote (None for other files), and
    every top-level entry besides the model's `container` and the registry record (`extra`), from
    the checkpoint's unpickled `payload` (`registry.tensors.CheckpointContents.payload`: the same
    one load serves the weights)."""
    from registry.tensors import REGISTRY_KEY

    if not isinstance(payload, dict) or container is None:  # the whole file is the state dict
        return TrainingState(None, None, None)
    model_key = container.split("/")[0]
    extra = {key: value for key, value in payload.items() if key not in (model_key, REGISTRY_KEY)}
    if not isinstance(payload.get("optimizer"), dict):
        return TrainingState(None, None, None, extra)
    names = payload.get("optimizer_param_names")
    return TrainingState(payload["optimizer"], list(names) if isinstance(names, list) else None, payload.get("rng"), extra)
