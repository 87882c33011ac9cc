"""Our LDM -> diffusers UNet names (`models/ldm_names.py`) are diffusers' own conversion.

The reference is diffusers' `convert_ldm_unet_checkpoint`, run on the LDM UNet's meta tensors and
traced back: for every target it makes, our mapping must name the same target for the same
source tensor (same shape), and nothing more or less - for every built-in `ldm-unet` variant and
for configs that move every block boundary (head width instead of head count, Linear projections,
deeper transformers, scale-shift norm, three levels, attention at some levels or none, one or
three ResBlocks per level). The renamed state dict also loads strictly into the diffusers UNet
built from `diffusers_config_for`.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

from registry.catalog import builtin_variants
from registry.converters import ConversionError, converters
from registry.families import build_on_meta, get_family, make_config
from registry.models.ldm_names import diffusers_names
from registry.models.ldm_unet import LDMUNetConfig, diffusers_config_for, diffusers_state_dict

TINY = dict(image_size=16, model_channels=32, num_res_blocks=1, attention_resolutions=(1,), channel_mult=(1, 2),
            context_dim=32, num_heads=2)
SPREAD = {
    "head-width": dict(num_heads=-1, num_head_channels=8),
    "linear-projections": dict(use_linear_in_transformer=True),
    "transformer-depth-2": dict(transformer_depth=2),
    "scale-shift-norm": dict(use_scale_shift_norm=True),
    "three-levels": dict(channel_mult=(1, 2, 2), attention_resolutions=(1, 2, 4)),
    "attention-in-the-middle-level": dict(channel_mult=(1, 2, 2), attention_resolutions=(2,)),
    "attention-outer-levels": dict(channel_mult=(1, 2, 2), attention_resolutions=(1, 4)),
    "attention-nowhere": dict(channel_mult=(1, 2, 2), attention_resolutions=()),
    "one-res-block-three-levels": dict(channel_mult=(1, 2, 2), num_res_blocks=1),
    "three-res-blocks": dict(channel_mult=(1, 2, 2), num_res_blocks=3, attention_resolutions=(2,)),
    "sd2-style": dict(num_heads=-1, num_head_channels=8, use_linear_in_transformer=True, transformer_depth=2,
                      channel_mult=(1, 2, 2, 2), attention_resolutions=(4, 2, 1), num_res_blocks=2),
}


def builtin_configs() -> dict[str, LDMUNetConfig]:
    family = get_family("ldm-unet")
    return {v.name: make_config(family, v.config) for v in builtin_variants() if v.family == "ldm-unet"}


CASES = {**builtin_configs(), **{name: LDMUNetConfig(**{**TINY, **extra}) for name, extra in SPREAD.items()}}


def test_every_builtin_variant_is_covered():
    assert {"ldm-unet/sd15", "ldm-unet/tiny"} <= set(CASES)


def traced_diffusers(state: dict[str, torch.Tensor], config: LDMUNetConfig) -> dict[str, tuple[str, tuple]]:
    """diffusers' conversion of `state`: target name -> (source name, shape)."""
    source_of = {id(tensor): name for name, tensor in state.items()}
    checkpoint = {"model.diffusion_model." + name: tensor for name, tensor in state.items()}
    converted = convert_ldm_unet_checkpoint(checkpoint, diffusers_config_for(config).diffusers_kwargs())
    return {target: (source_of[id(tensor)], tuple(tensor.shape)) for target, tensor in converted.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_our_names_are_diffusers_conversion(case):
    config = CASES[case]
    state = build_on_meta(get_family("ldm-unet"), config).state_dict()
    rename = diffusers_names(config)
    ours = {rename(name): (name, tuple(tensor.shape)) for name, tensor in state.items()}
    assert None not in ours, [name for name in state if rename(name) is None][:5]
    assert len(ours) == len(state)  # no two sources onto one target
    theirs = traced_diffusers(state, config)
    assert sorted(set(ours) ^ set(theirs)) == []
    assert {t: pair for t, pair in ours.items() if theirs[t] != pair} == {}
    # and diffusers' UNet of the twin config has exactly these tensors
    with torch.device("meta"):
        twin = UNet2DConditionModel(**diffusers_config_for(config).diffusers_kwargs())
    expected = {name: tuple(tensor.shape) for name, tensor in twin.state_dict().items()}
    assert {t: shape for t, (_, shape) in ours.items()} == expected


def test_the_builtin_converter_only_renames_with_these_names():
    [converter] = [c for c in converters() if c.name == "ldm-unet->diffusers-unet"]
    config = CASES["three-res-blocks"]
    assert converter.renames is not None and converter.plan_depends_on == ()
    state = build_on_meta(get_family("ldm-unet"), config).state_dict()
    converted = converter.convert_state_dict(state, config)
    rename = diffusers_names(config)
    assert {name: id(tensor) for name, tensor in converted.items()} == {rename(n): id(t) for n, t in state.items()}
    # a part of the state (an optimizer's moments, say) converts name by name
    part = {name: state[name] for name in list(state)[:7]}
    assert list(diffusers_state_dict(part, config)) == [rename(name) for name in part]


@pytest.mark.parametrize("name", [
    "input_blocks.1.0.in_layers.1.weight",  # a ResBlock layer LDM does not have
    "input_blocks.1.0.in_layers.0.weight.extra",  # a layer holds weight and bias only
    "input_blocks.2.1.proj_in.weight",  # a transformer at a level without attention (three-res-blocks: level 0)
    "input_blocks.4.0.in_layers.0.weight",  # input_blocks.4 is a Downsample there, not a ResBlock
    "input_blocks.99.0.in_layers.0.weight",  # past the last block
    "output_blocks.7.1.conv.weight",  # level 1 attends: its Upsample is output_blocks.7.2.conv
    "output_blocks.7.1.conv_in.weight",  # not a layer of a transformer
    "input_blocks.0.0.weight.extra",  # a layer holds weight and bias only
    "model.diffusion_model.time_embed.0.weight",  # still prefixed
    "time_embed.0",  # a block, not a tensor
    "label_emb.0.0.weight",  # class embeddings: not part of this family
])
def test_a_name_the_config_has_no_block_for_is_refused_clearly(name):
    config = CASES["three-res-blocks"]
    assert diffusers_names(config)(name) is None
    with pytest.raises(ConversionError) as raised:
        diffusers_state_dict({name: torch.zeros(1), "time_embed.0.weight": torch.zeros(1)}, config)
    assert str(raised.value) == (f"ldm-unet->diffusers-unet has no target name for the entry {name!r}: "
                                 "not a tensor of a ldm-unet with this config")
    assert raised.value.exit_code == 1


def test_configs_differing_only_where_names_do_not_change_rename_alike():
    """Head counts, widths and channels change shapes, never names: one mapping serves them all."""
    base = CASES["three-res-blocks"]
    other = dataclasses.replace(base, model_channels=64, context_dim=16, num_heads=4, in_channels=9)
    state = build_on_meta(get_family("ldm-unet"), base).state_dict()
    assert [diffusers_names(base)(n) for n in state] == [diffusers_names(other)(n) for n in state]
