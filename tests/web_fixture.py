"""A registry filled the way a team's would be, for the web view's tests.

Two schema versions of one variant (a norm class change), a resume chain of eight runs with a
branch, a `registry convert` in the middle of a chain, an in-memory conversion, and an unmatched
checkpoint on disk whose path holds markup.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOSTILE = "<script>alert(1)</script>"
CHAIN_LENGTH = 8


@dataclass
class Filled:
    variant: str
    other_variant: str
    root: str
    runs: list[str] = field(default_factory=list)  # the straight chain, in order
    branch: str = ""
    converted_run: str = ""
    converted_checkpoint: int = 0
    unmatched_checkpoint: int = 0
    unmatched_path: str = ""
    checkpoints: dict[str, list[int]] = field(default_factory=dict)


def _checkpoint(reg: Any, path: Path, *, fingerprint: str, step: int | None, version_id: int | None,
                run_id: str | None, converted_from: dict | None = None) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(b"not read by the web view")
    stat = os.stat(path)
    return reg.register_checkpoint(str(path), size=stat.st_size, mtime=stat.st_mtime, format="torch-zip",
                                   container="model", wrapper=None, prefix=None, fingerprint=fingerprint, step=step,
                                   schema_version_id=version_id, run_id=run_id, converted_from=converted_from)


def fill(reg: Any, family: str, root_dir: Path, monkeypatch: Any) -> Filled:
    """Register variants of the tiny test family and record runs, checkpoints and conversions."""
    from registry.families import _FAMILIES, make_config
    from registry.store.variants import add_variant, bump_variant

    tiny = _FAMILIES[family]
    add_variant(reg, "tiny/layer", family, make_config(tiny, {"width": 4}), "LayerNorm build")
    add_variant(reg, "tiny/wide", family, make_config(tiny, {"width": 8}), "a wider build")
    original = tiny.build

    def rms_build(config: Any) -> Any:  # the layout change the schema history shows
        return original(type(config)(width=config.width, depth=config.depth, norm="rms"))

    monkeypatch.setitem(_FAMILIES, family, type(tiny)(**{**tiny.__dict__, "build": rms_build}))
    bump_variant(reg, "tiny/layer")
    monkeypatch.setitem(_FAMILIES, family, tiny)

    latest = reg.latest_schema_version("tiny/layer")
    wide = reg.latest_schema_version("tiny/wide")
    filled = Filled("tiny/layer", "tiny/wide", root="")
    resumed_from = None
    for index in range(CHAIN_LENGTH):
        run = reg.start_run("tiny/layer", schema_version_id=latest.id, config={"width": 4}, host="node1",
                            user="ana", scheduler_job_id=f"4242_{index}", resumed_from_checkpoint_id=resumed_from)
        ids = []
        for step in (index * 200 + 100, index * 200 + 200):
            ckpt = _checkpoint(reg, root_dir / "runs" / "layer" / f"step-{step:08d}.pt", fingerprint=latest.fingerprint,
                               step=step, version_id=latest.id, run_id=run.id)
            ids.append(ckpt.id)
        reg.end_run(run.id, "preempted" if index < CHAIN_LENGTH - 1 else "completed")
        filled.runs.append(run.id)
        filled.checkpoints[run.id] = ids
        resumed_from = ids[-1]
    filled.root = filled.runs[0]

    branch = reg.start_run("tiny/layer", schema_version_id=latest.id, config={"width": 4}, host="node2", user="bo",
                           resumed_from_checkpoint_id=filled.checkpoints[filled.root][0])
    reg.end_run(branch.id, "failed")
    filled.branch = branch.id

    source = reg.list_checkpoints(run_id=filled.runs[-1])[-1]
    converted = _checkpoint(reg, root_dir / "converted" / "wide.safetensors", fingerprint=wide.fingerprint, step=1600,
                            version_id=wide.id, run_id=None,
                            converted_from={"source": source.path, "source_fingerprint": source.fingerprint,
                                            "method": "tiny_widen", "exact": True, "target": "tiny/wide"})
    filled.converted_checkpoint = converted.id
    after = reg.start_run("tiny/wide", schema_version_id=wide.id, config={"width": 8}, host="node1", user="ana",
                          resumed_from_checkpoint_id=converted.id)
    reg.end_run(after.id, "completed")
    filled.converted_run = after.id

    unmatched_path = root_dir / "old" / f"{HOSTILE}" / "model.safetensors"
    unmatched_path.parent.mkdir(parents=True)
    _save_near_miss(unmatched_path)
    from registry.readers import read_checkpoint

    info = read_checkpoint(str(unmatched_path))
    unmatched = _checkpoint(reg, unmatched_path, fingerprint=info.fingerprint, step=None, version_id=None, run_id=None)
    filled.unmatched_checkpoint = unmatched.id
    filled.unmatched_path = str(unmatched_path)
    return filled


def _save_near_miss(path: Path) -> None:
    """A state dict of the tiny LayerNorm build with `.weight/.bias` of the norms renamed `.gamma/.beta`."""
    import torch
    from safetensors.torch import save_file

    state = {}
    for index in range(2):
        state[f"{2 * index}.weight"] = torch.zeros(4, 4)
        state[f"{2 * index}.bias"] = torch.zeros(4)
        state[f"{2 * index + 1}.gamma"] = torch.ones(4)
        state[f"{2 * index + 1}.beta"] = torch.zeros(4)
    save_file(state, str(path))
