"""`registry.latest`: the newest checkpoint in a folder, by the names trainers give them
(`--resume latest`, `registry.resume(folder)`). DeepSpeed's `latest` file: tests/test_deepspeed.py;
DCP step folders: tests/test_dcp.py."""

from __future__ import annotations

from pathlib import Path

import pytest

import registry
from registry.errors import UsageError
from registry.latest import latest_checkpoint, ranked_checkpoints


def touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name.endswith("/"):
            (folder / name).mkdir()
            (folder / name / "model.safetensors").write_bytes(b"")
        else:
            (folder / name).write_bytes(b"")


@pytest.mark.parametrize("names, newest, step", [
    (["step-9.pt", "step-10.pt", "step-00000008.pt"], "step-10.pt", 10),  # by number, not by text
    (["checkpoint-900/", "checkpoint-1000/", "checkpoint-50/"], "checkpoint-1000", 1000),  # accelerate / HF Trainer
    (["checkpoint_2/", "checkpoint_10/"], "checkpoint_10", None),  # accelerate's automatic naming counts saves
    (["epoch=0-step=100.ckpt", "epoch=1-step=200-val_loss=0.31.ckpt", "epoch=1-step=150.ckpt"],
     "epoch=1-step=200-val_loss=0.31.ckpt", 200),  # Lightning
    (["epoch=0-step=100.ckpt", "epoch=1-step=200.ckpt", "last.ckpt"], "last.ckpt", None),  # Lightning's save_last
])
def test_latest_knows_each_trainers_naming(tmp_path, names, newest, step):
    touch(tmp_path / "runs", *names, ".step-11.pt.tmp-123-abcdef12", "notes.txt")
    found = latest_checkpoint(tmp_path / "runs")
    assert (found.path.name, found.step) == (newest, step)
    assert len(ranked_checkpoints(tmp_path / "runs")) == len(names)


def test_latest_in_a_folder_without_checkpoints_is_none_but_unknown_names_are_an_error(tmp_path):
    touch(tmp_path / "empty", "notes.txt")
    assert latest_checkpoint(tmp_path / "empty") is None
    assert latest_checkpoint(tmp_path / "not-yet-created") is None
    assert registry.resume(tmp_path / "empty", db="sqlite:///unused.db") is None
    touch(tmp_path / "odd", "model_final.pth", "best.pt")
    with pytest.raises(UsageError) as error:
        latest_checkpoint(tmp_path / "odd")
    assert error.value.message == f"{tmp_path / 'odd'} holds best.pt, model_final.pth, but no name tells which checkpoint is the newest"
    with pytest.raises(UsageError, match="no such file"):
        latest_checkpoint(tmp_path / "missing.pt")
