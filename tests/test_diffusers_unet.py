"""The `diffusers-unet` family, and the training hooks of both UNet families."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from diffusers import UNet2DConditionModel

from registry.configs import config_from_options
from registry.families import build_on_meta, build_schema, get_family, make_config
from registry.models.diffusers_unet import DiffusersUNetConfig


def test_config_defaults_are_diffusers_defaults():
    signature = inspect.signature(UNet2DConditionModel.__init__).parameters
    fields = [f for f in dataclasses.fields(DiffusersUNetConfig) if f.name != "extra"]
    ours = {f.name: f.default for f in fields}
    theirs = {name: signature[name].default for name in ours if name in signature}
    assert sorted(set(ours) - set(theirs)) == []  # every field is a real constructor argument
    assert ours == theirs


def test_extra_passes_through():
    family = get_family("diffusers-unet")
    _, tiny = config_from_options("diffusers-unet", "tiny")
    config = make_config(family, {**dataclasses.asdict(tiny), "extra": {"encoder_hid_dim": 48}})
    assert config.diffusers_kwargs()["encoder_hid_dim"] == 48
    model = build_on_meta(family, config)
    assert model.config.encoder_hid_dim == 48
    assert tuple(model.encoder_hid_proj.weight.shape) == (32, 48)


@pytest.mark.parametrize("short_name, entries", [("sd15", 686), ("tiny", 208)])
def test_variants_build_on_meta(short_name, entries):
    family, config = config_from_options("diffusers-unet", short_name)
    model = build_on_meta(family, config)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert len(build_schema(family, config).schema) == entries


@pytest.mark.parametrize("family_name", ["diffusers-unet", "ldm-unet"])
def test_training_hooks_train_the_tiny_variant(family_name):
    family, config = config_from_options(family_name, "tiny")
    torch.manual_seed(0)
    model = family.build(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = family.make_batch(config, 2, torch.Generator().manual_seed(0))

    loss = family.compute_loss(model, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert [name for name, grad in grads.items() if grad is None] == []
    assert all(torch.isfinite(grad).all() for grad in grads.values())
    optimizer.step()
    assert family.compute_loss(model, batch).item() != loss.item()
