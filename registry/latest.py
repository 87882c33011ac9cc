"""The newest checkpoint in a folder, for `--resume latest` and `registry.resume(folder)`.

One table of the names trainers give their checkpoints (`NAME_PATTERNS`); each entry says whether
it names a file or a folder and how its name orders it. To teach the registry another trainer's
naming, add one row:

| style       | name                                   | newest                                    |
| ----------- | -------------------------------------- | ----------------------------------------- |
| step        | `step-120.pt` (ours: `step-00000120.pt`), also `.pth .ckpt .bin .safetensors` | highest step |
| accelerate  | `checkpoint-1200/` (accelerate, HF Trainer), `checkpoint_3/` (accelerate's automatic naming) | highest number |
| lightning   | `epoch=3-step=1200.ckpt` (`-val_loss=...`, `-v1` allowed), `last.ckpt`, `last-v1.ckpt` (files, or DCP folders under FSDP `state_dict_type="sharded"`) | `last*.ckpt` (Lightning rewrites it at every save), else highest step, then epoch |
| dcp         | `step-1200/` (torch.distributed.checkpoint folders: torchtitan, FSDP2 trainers) | highest step |
| deepspeed   | `global_step1200/`; the tag DeepSpeed's `latest` file names comes first | `latest`, else highest step |

A folder holding no checkpoint at all has no newest one (None): a new run may start there. A
folder holding checkpoint-like files whose names no row knows is an error, never "empty": that
would be a silent fresh start (the second incident).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .atomic import temporary_of
from .errors import CheckpointError, UsageError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
# A folder that is itself one checkpoint (accelerate, diffusers, transformers), not a folder of them.
# DCP folders hold `.metadata` beside `*.distcp` shards; DeepSpeed tag folders hold model states.
_WEIGHTS_FILE = re.compile(r"^(diffusion_pytorch_model|model|pytorch_model)(_\d+)?\.(safetensors|bin)$|\.index\.json$"
                           r"|^\.metadata$|^(zero_pp_rank_\d+_)?mp_rank_\d+_model_states\.pt$")
_NEWEST = float("inf")


@dataclass(frozen=True)
class NamePattern:
    """One row of the table: a name a trainer gives its checkpoints."""

    style: str
    regex: re.Pattern[str]
    folder: bool  # the checkpoint is a folder (accelerate) rather than a file
    order: Callable[[re.Match[str]], tuple[float, ...]]  # larger is newer
    step: Callable[[re.Match[str]], int | None]  # the training step the name states, if it states one


def _number(name: str) -> Callable[[re.Match[str]], int | None]:
    return lambda match: int(match[name]) if match[name] is not None else None


NAME_PATTERNS: tuple[NamePattern, ...] = (
    NamePattern("step", re.compile(r"^step-(?P<step>\d+)\.(pt|pth|ckpt|bin|safetensors)$"), False,
                lambda m: (int(m["step"]),), _number("step")),
    # HF Trainer and `accelerator.save_state(f"checkpoint-{step}")` name the step; accelerate's
    # automatic naming (`checkpoint_N`) counts saves, which orders them but is not a step.
    NamePattern("accelerate", re.compile(r"^checkpoint-(?P<step>\d+)$"), True,
                lambda m: (int(m["step"]),), _number("step")),
    NamePattern("accelerate", re.compile(r"^checkpoint_(?P<n>\d+)$"), True,
                lambda m: (int(m["n"]),), lambda m: None),
    NamePattern("lightning", re.compile(r"^epoch=(?P<epoch>\d+)-step=(?P<step>\d+)(?:-.*)?\.ckpt$"), False,
                lambda m: (int(m["step"]), int(m["epoch"])), _number("step")),
    NamePattern("lightning", re.compile(r"^last(?:-v(?P<v>\d+))?\.ckpt$"), False,
                lambda m: (_NEWEST, int(m["v"] or 0)), lambda m: None),
    # Lightning's FSDP strategy with state_dict_type="sharded" writes the same names as DCP folders
    NamePattern("lightning", re.compile(r"^epoch=(?P<epoch>\d+)-step=(?P<step>\d+)(?:-.*)?\.ckpt$"), True,
                lambda m: (int(m["step"]), int(m["epoch"])), _number("step")),
    NamePattern("lightning", re.compile(r"^last(?:-v(?P<v>\d+))?\.ckpt$"), True,
                lambda m: (_NEWEST, int(m["v"] or 0)), lambda m: None),
    NamePattern("dcp", re.compile(r"^step-(?P<step>\d+)$"), True, lambda m: (int(m["step"]),), _number("step")),
    NamePattern("deepspeed", re.compile(r"^global_step(?P<step>\d+)$"), True,
                lambda m: (int(m["step"]),), _number("step")),
)


@dataclass(frozen=True)
class FoundCheckpoint:
    """A checkpoint found by its name: where, in which trainer's style, and the step its name states."""

    path: Path
    style: str
    step: int | None
    order: tuple[float, ...]


def ranked_checkpoints(folder: str | os.PathLike[str]) -> list[FoundCheckpoint]:
    """Every checkpoint in `folder` whose name a row of `NAME_PATTERNS` knows, newest first.

    Temporary files of an interrupted atomic write never count. Returns [] for a folder that
    does not exist.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    found = []
    tagged = _deepspeed_latest(root)
    if tagged is not None:
        found.append(tagged)
    for entry in root.iterdir():
        if temporary_of(entry.name) or (tagged is not None and entry == tagged.path):
            continue
        for pattern in NAME_PATTERNS:
            match = pattern.regex.match(entry.name)
            if match and (entry.is_dir() if pattern.folder else entry.is_file()):
                found.append(FoundCheckpoint(entry, pattern.style, pattern.step(match), pattern.order(match)))
                break
    return sorted(found, key=lambda c: (c.order, c.path.name), reverse=True)


def _deepspeed_latest(root: Path) -> FoundCheckpoint | None:
    """The tag folder DeepSpeed's `latest` file names (newest whatever its name), or None when
    there is no `latest` file or it names no folder (read as the DeepSpeed reader reads it)."""
    from .readers.deepspeed import tag_folder
    from .readers.limits import FormatError

    try:
        folder, tag = tag_folder(str(root))
    except (FormatError, OSError):
        return None
    if tag is None:
        return None
    step = re.fullmatch(r"global_step(\d+)", tag)
    return FoundCheckpoint(Path(folder), "deepspeed", int(step[1]) if step else None, (_NEWEST,))


def is_checkpoint_folder(folder: Path) -> bool:
    """True when `folder` is one checkpoint (it holds a model weights file or a sharded index)."""
    if (folder / "pytorch_model_fsdp_0" / ".metadata").is_file():  # accelerate's SHARDED_STATE_DICT (DCP)
        return True
    return folder.is_dir() and any(_WEIGHTS_FILE.search(entry.name) for entry in folder.iterdir())


def _unknown_names(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir()
                  if entry.is_file() and entry.name.endswith(CHECKPOINT_SUFFIXES) and not temporary_of(entry.name))


def checkpoint_candidates(path: str | os.PathLike[str]) -> list[FoundCheckpoint]:
    """What resuming from `path` may read, in the order to try: a file is itself; a folder is its
    checkpoints newest first, or itself when it is one checkpoint (`checkpoint-1200/`).

    Returns [] for a folder with no checkpoint at all, and for a folder that does not exist yet
    (the output folder of a first run). Raises `UsageError` (exit 2) for a missing file (a path
    ending in a checkpoint suffix), and when the folder holds checkpoint-like files (`.pt .pth
    .ckpt .bin .safetensors`) that no name pattern knows: which one is newest would be a guess.
    """
    target = Path(path)
    if not target.exists():
        if target.name.endswith(CHECKPOINT_SUFFIXES):
            raise UsageError(f"{path}: no such file")
        return []
    if not target.is_dir():
        return [FoundCheckpoint(target, "file", None, ())]
    ranked = ranked_checkpoints(target)
    if ranked:
        return ranked
    if is_checkpoint_folder(target):
        name = next((p for p in NAME_PATTERNS if p.folder and p.regex.match(target.name)), None)
        step = name.step(name.regex.match(target.name)) if name else None
        return [FoundCheckpoint(target, name.style if name else "folder", step, ())]
    unknown = _unknown_names(target)
    if unknown:
        listed = ", ".join(unknown[:3]) + (" ..." if len(unknown) > 3 else "")
        raise UsageError(f"{path} holds {listed}, but no name tells which checkpoint is the newest",
                         hint="pass the file to resume, or name checkpoints step-N.pt, checkpoint-N/ or "
                              "epoch=E-step=S.ckpt")
    return []


def latest_checkpoint(path: str | os.PathLike[str]) -> FoundCheckpoint | None:
    """The newest checkpoint at `path` by name (see `checkpoint_candidates`), or None when the
    folder holds none. Raises `UsageError` as `checkpoint_candidates` does."""
    candidates = checkpoint_candidates(path)
    return candidates[0] if candidates else None


def open_latest(path: str | os.PathLike[str], read: Callable[[FoundCheckpoint], Any],
                warn: Callable[[str], None]) -> Any | None:
    """`read(found)` of the newest checkpoint at `path` that reads, or None when there is none.

    A newest file that does not read (`CheckpointError`: a disk fault, or a writer killed by a
    non-atomic trainer) is named in a warning and the one before it is tried, so a requeued job
    continues from the last good step; it never silently starts over, because None means the
    folder holds no checkpoint at all. Raises `CheckpointError` when none of them reads (or the
    checkpoint `path` names itself does not), and
    `UsageError` as `checkpoint_candidates` does.
    """
    candidates = checkpoint_candidates(path)
    for found in candidates:
        try:
            return read(found)
        except CheckpointError as exc:
            if found.path == Path(path):  # asked for this very checkpoint: nothing to fall back to
                raise
            warn(f"skipping {found.path}: {exc.message}")
    if candidates:
        raise CheckpointError(f"none of the {len(candidates)} checkpoints in {path} can be read")
    return None
