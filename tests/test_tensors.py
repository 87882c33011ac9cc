"""Loading real tensors after a match, and atomic saving with embedded metadata."""

from __future__ import annotations

import torch

from registry.readers import read_checkpoint
from registry.schema import schema_of_state_dict
from registry.tensors import load_state_dict, save_checkpoint


def _state() -> dict:
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4)).state_dict()


def test_load_follows_a_nested_container_and_strips_the_wrapper(tmp_path):
    state = _state()
    path = tmp_path / "lightning_like.ckpt"
    wrapped = {f"module.{k}": v for k, v in state.items()}
    torch.save({"model": {"state_dict": wrapped}, "epoch": 2}, path)
    info = read_checkpoint(str(path))
    assert (info.container, info.wrapper) == ("model/state_dict", "module.")
    loaded = load_state_dict(info)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_saved_checkpoints_carry_metadata_the_reader_sees(tmp_path):
    state = _state()
    fingerprint = schema_of_state_dict(state).fingerprint
    for name in ("ckpt.pt", "ckpt.safetensors"):
        path = save_checkpoint(tmp_path / name, state, {"variant": "x/y", "fingerprint": fingerprint, "step": 5})
        info = read_checkpoint(str(path))
        assert info.schema.fingerprint == fingerprint
        assert info.metadata["registry"]["variant"] == "x/y"
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
