"""Where the state dict is, which wrapper its keys carry, what else a checkpoint holds, and the
sub-models beneath every module prefix (issue 3, DESIGN §4)."""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
import pytest
import torch
from torch import nn

from hostile.corpus import build_variant, write_safetensors
from registry.errors import CheckpointError
from registry.readers import SubModel, read_checkpoint
from registry.readers.info import submodels_of
from registry.schema import Schema, TensorEntry, schema_of_module


@pytest.fixture(scope="module")
def ctvit() -> nn.Module:
    return build_variant("ctvit/tiny")


@pytest.fixture(scope="module")
def unet() -> nn.Module:
    return build_variant("ldm-unet/tiny")


class TrainConfig:
    """A user's config class: torch.load(weights_only=True) refuses it; we keep a placeholder."""

    def __init__(self):
        self.lr = 1e-4
        self.layers = [2, 2]
        self.add = True  # plain data under a name an unpickler could call: harmless


def save(path, obj):
    torch.save(obj, path)
    return path


def prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model", "module", "net", "network", "params",
                                 "ema", "state_dict_ema", "model_ema", "ema_model"])
def test_well_known_containers(tmp_path, ctvit, key):
    path = save(tmp_path / "c.pt", {key: ctvit.state_dict(), "epoch": 4, "optimizer": {"state": {}, "param_groups": []}})
    info = read_checkpoint(path)
    assert (info.container, info.wrapper) == (key, None)
    assert info.fingerprint == schema_of_module(ctvit).fingerprint
    assert info.metadata["epoch"] == 4


def test_our_trainer_layout_with_wrapper_optimizer_and_registry_record(tmp_path, ctvit):
    record = {"variant": "ctvit/tiny", "family": "ctvit", "config": {"dim": 32, "heads": [2, 2]},
              "fingerprint": schema_of_module(ctvit).fingerprint, "run_id": 17, "step": 250}
    optimizer = torch.optim.AdamW(ctvit.parameters())
    state = {"model": prefixed(ctvit.state_dict(), "module."), "optimizer": optimizer.state_dict(), "step": 250,
             "registry": record}
    info = read_checkpoint(save(tmp_path / "run.pt", state))
    assert (info.container, info.wrapper) == ("model", "module.")
    assert info.fingerprint == schema_of_module(ctvit).fingerprint
    assert info.metadata["registry"] == record and info.step == 250
    assert info.metadata["step"] == 250
    as_json = json.loads(json.dumps(optimizer.state_dict()))  # tuples become lists
    assert info.metadata["optimizer"] == as_json


def test_optimizer_state_with_tensors_is_never_the_model(tmp_path):
    layer = nn.Linear(4, 3)
    optimizer = torch.optim.Adam(layer.parameters())
    layer(torch.randn(2, 4)).sum().backward()
    optimizer.step()  # now the optimizer state holds exp_avg / exp_avg_sq tensors
    info = read_checkpoint(save(tmp_path / "o.pt", {"optimizer": optimizer.state_dict(), "weights": layer.state_dict()}))
    assert info.container == "weights"
    assert info.metadata["optimizer"] == "<dict of 2 items>"


@pytest.mark.parametrize("wrapper", ["module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module."])
def test_wrappers_are_stripped_and_reported(tmp_path, unet, wrapper):
    info = read_checkpoint(save(tmp_path / "w.pt", prefixed(unet.state_dict(), wrapper)))
    assert (info.container, info.wrapper) == (None, wrapper)
    assert info.fingerprint == schema_of_module(unet).fingerprint


def test_a_prefix_on_only_some_keys_is_not_a_wrapper(tmp_path):
    info = read_checkpoint(save(tmp_path / "p.pt", {"module.a": torch.zeros(1), "b": torch.zeros(1)}))
    assert info.wrapper is None and info.schema.names == ["b", "module.a"]


def test_lightning_checkpoint_with_submodel_prefix(tmp_path, ctvit):
    layer = nn.Linear(2, 2)
    lightning = {
        "epoch": 3, "global_step": 1200, "pytorch-lightning_version": "2.2.0",
        "state_dict": prefixed(ctvit.state_dict(), "model."),
        "optimizer_states": [torch.optim.SGD(layer.parameters(), lr=0.1).state_dict()],
        "lr_schedulers": [{"last_epoch": 3}], "callbacks": {"ModelCheckpoint": {"best_model_score": None}},
        "hyper_parameters": {"lr": 0.1, "args": argparse.Namespace(lr=0.1)},
    }
    info = read_checkpoint(save(tmp_path / "epoch=3.ckpt", lightning))
    assert info.container == "state_dict" and info.step == 1200
    sub = {s.prefix: s for s in info.submodels()}["model."]
    assert sub.fingerprint == schema_of_module(ctvit).fingerprint and sub.entries == len(ctvit.state_dict())
    assert info.metadata["hyper_parameters"] == {"lr": 0.1, "args": "<argparse.Namespace>"}


def test_nested_container_and_the_one_mapping_rule(tmp_path, unet):
    nested = read_checkpoint(save(tmp_path / "n.pt", {"model": {"state_dict": unet.state_dict(), "arch": "x"}}))
    assert nested.container == "model/state_dict"
    single = read_checkpoint(save(tmp_path / "s.pt", {"weights_v2": unet.state_dict(), "epoch": 1}))
    assert single.container == "weights_v2"
    for info in (nested, single):
        assert info.fingerprint == schema_of_module(unet).fingerprint


def test_model_is_preferred_over_its_ema_and_the_choice_is_said(tmp_path, unet, ctvit):
    info = read_checkpoint(save(tmp_path / "e.pt", {"ema": ctvit.state_dict(), "model": unet.state_dict()}))
    assert info.container == "model" and info.fingerprint == schema_of_module(unet).fingerprint
    assert info.warnings == [f"also holds ema ({len(ctvit.state_dict())} tensors); fingerprinted model"]


def test_benign_metadata_types_still_fingerprint(tmp_path, unet):
    state = {
        "model": unet.state_dict(), "args": argparse.Namespace(lr=0.1, name="run"), "step": np.int64(7),
        "best": np.float64(0.25), "mean": np.arange(3.0), "out_dir": pathlib.Path("/runs/a"),
        "config": TrainConfig(), "tags": {"a", "b"}, "blob": b"\x00\x01",
    }
    path = save(tmp_path / "m.pt", state)
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)  # torch's safe loader refuses this file
    info = read_checkpoint(path)
    assert info.fingerprint == schema_of_module(unet).fingerprint
    meta = info.metadata
    assert (meta["step"], meta["best"], meta["out_dir"]) == (7, 0.25, "/runs/a")
    assert (meta["args"], meta["mean"]) == ("<argparse.Namespace>", "<numpy.ndarray>")
    assert meta["config"] == f"<{TrainConfig.__module__}.TrainConfig>"
    assert sorted(meta["tags"]) == ["a", "b"] and meta["blob"] == "<bytes of 2>"
    assert info.warnings == [f"its pickle names {TrainConfig.__module__}.TrainConfig; kept as placeholders, "
                             "never imported"]
    assert info.step == 7


def test_a_registry_record_with_non_plain_values_is_not_surfaced(tmp_path, unet):
    record = {"variant": "x", "config": argparse.Namespace(dim=3)}
    info = read_checkpoint(save(tmp_path / "r.pt", {"model": unet.state_dict(), "registry": record}))
    assert "registry" not in info.metadata
    assert info.warnings == ["the embedded registry record is not plain data (<dict of 2 items>); ignored"]


def test_safetensors_registry_metadata(tmp_path, unet):
    record = {"variant": "ldm-unet/tiny", "family": "ldm-unet", "config": {"image_size": 16}, "run_id": "a1",
              "fingerprint": schema_of_module(unet).fingerprint, "step": 9}
    path = write_safetensors(tmp_path / "u.safetensors", unet.state_dict(),
                             metadata={"registry": json.dumps(record), "format": "pt"})
    info = read_checkpoint(path)
    assert info.metadata == {"registry": record, "format": "pt"} and info.step == 9
    bad = write_safetensors(tmp_path / "b.safetensors", unet.state_dict(), metadata={"registry": "{not json"})
    assert read_checkpoint(bad).warnings == ["the embedded registry record is not a JSON object; ignored"]


def test_ctclip_and_stable_diffusion_single_files_expose_their_submodels(tmp_path, ctvit, unet):
    ctclip = {**prefixed(ctvit.state_dict(), "visual_transformer."), "to_visual_latent.weight": torch.zeros(4, 8),
              "text_transformer.embeddings.word_embeddings.weight": torch.zeros(10, 8), "temperature": torch.zeros(())}
    sd = {"state_dict": {**prefixed(unet.state_dict(), "model.diffusion_model."),
                         "first_stage_model.decoder.conv_in.weight": torch.zeros(4, 4, 3, 3),
                         "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(8)},
          "global_step": 470000}
    for state, prefix, model in ((ctclip, "visual_transformer.", ctvit), (sd, "model.diffusion_model.", unet)):
        info = read_checkpoint(save(tmp_path / "x.pt", state))
        subs = {s.prefix: s for s in info.submodels()}
        assert subs[prefix] == SubModel(prefix, schema_of_module(model).fingerprint, len(model.state_dict()))
        assert info.fingerprint != schema_of_module(model).fingerprint


def test_one_pass_submodels_equal_the_definition(unet):
    schema = schema_of_module(unet)
    prefixes = {name[:i + 1] for name in schema.names for i, ch in enumerate(name) if ch == "."}
    expected = [SubModel(p, schema.under(p).fingerprint, len(schema.under(p))) for p in sorted(prefixes)]
    assert submodels_of(schema) == expected


def test_submodels_with_tricky_names():
    schema = Schema([TensorEntry(n, (1,)) for n in ["a.b.x", "a.b2.y", "a.c", "a_b.z", "a..d", "b", ".e"]])
    got = {s.prefix: s for s in submodels_of(schema)}
    assert sorted(got) == [".", "a.", "a..", "a.b.", "a.b2.", "a_b."]
    for prefix, sub in got.items():
        assert sub.fingerprint == schema.under(prefix).fingerprint and sub.entries == len(schema.under(prefix))


def test_no_state_dict_is_an_error_not_a_guess(tmp_path):
    path = save(tmp_path / "n.pt", {"epoch": 3, "notes": "x"})
    with pytest.raises(CheckpointError, match="no mapping of names to tensors found; the top level holds epoch, notes"):
        read_checkpoint(path)
