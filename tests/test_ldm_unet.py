"""The `ldm-unet` family: CompVis key names, and exact equivalence with diffusers' UNet.

The UNet incident threw away 15k steps because LDM keys did not load into UNet2DConditionModel.
These tests show the two layouts are one model under two sets of names: the built-in converter
(`diffusers_state_dict`, the renaming converter `ldm-unet->diffusers-unet` of `models/ldm_names.py`,
which `registry convert`, resume and the integrations use) maps every LDM tensor onto a diffusers
tensor of the same shape, and the converted weights load strictly and give the same outputs.
`tests/test_ldm_names.py` checks its names against diffusers' own `convert_ldm_unet_checkpoint`.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from diffusers import UNet2DConditionModel

from registry.catalog import builtin_variants
from registry.configs import config_from_options
from registry.families import build_on_meta, build_schema, families, get_family
from registry.models.ldm_unet import LDMUNetConfig, diffusers_config_for, diffusers_state_dict


def variant(family: str, short_name: str):
    return config_from_options(family, short_name)


def diffusers_twin(config: LDMUNetConfig, device: str) -> UNet2DConditionModel:
    with torch.device(device):
        return UNet2DConditionModel(**diffusers_config_for(config).diffusers_kwargs())


def assert_converts_exactly(converted: dict, target: dict) -> None:
    missing = sorted(set(target) - set(converted))
    unexpected = sorted(set(converted) - set(target))
    assert not missing, f"{len(missing)} missing, e.g. {missing[:5]}"
    assert not unexpected, f"{len(unexpected)} unexpected, e.g. {unexpected[:5]}"
    shapes = {name: (tuple(converted[name].shape), tuple(target[name].shape)) for name in target}
    assert {name: pair for name, pair in shapes.items() if pair[0] != pair[1]} == {}


# --- registration, variants, names --------------------------------------------------------------


def test_family_and_variants_are_registered():
    assert "ldm-unet" in [family.name for family in families()]
    names = {v.name for v in builtin_variants() if v.family == "ldm-unet"}
    assert {"ldm-unet/sd15", "ldm-unet/tiny"} <= names


@pytest.mark.parametrize("short_name", ["sd15", "tiny"])
def test_variants_build_on_meta(short_name):
    family, config = variant("ldm-unet", short_name)
    model = build_on_meta(family, config)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    built = build_schema(family, config)
    assert built.fingerprint.startswith("sha256:") and len(built.schema) == len(model.state_dict())


def test_sd15_has_the_stable_diffusion_checkpoint_layout():
    """Names and shapes as in the `model.diffusion_model.` part of an SD-1.5 checkpoint."""
    built = build_schema(*variant("ldm-unet", "sd15"))
    shapes = {entry.name: entry.shape for entry in built.schema}
    assert len(shapes) == 686
    assert built.parameters == 859_520_964
    expected = {
        "time_embed.0.weight": (1280, 320),
        "time_embed.2.weight": (1280, 1280),
        "input_blocks.0.0.weight": (320, 4, 3, 3),
        "input_blocks.1.0.in_layers.0.weight": (320,),
        "input_blocks.1.0.in_layers.2.weight": (320, 320, 3, 3),
        "input_blocks.1.0.emb_layers.1.weight": (320, 1280),
        "input_blocks.1.0.out_layers.0.weight": (320,),
        "input_blocks.1.0.out_layers.3.weight": (320, 320, 3, 3),
        "input_blocks.1.1.norm.weight": (320,),
        "input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": (320, 320),
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "input_blocks.1.1.transformer_blocks.0.attn2.to_out.0.bias": (320,),
        "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight": (2560, 320),
        "input_blocks.1.1.transformer_blocks.0.ff.net.2.weight": (320, 1280),
        "input_blocks.1.1.transformer_blocks.0.norm3.weight": (320,),
        "input_blocks.1.1.proj_out.weight": (320, 320, 1, 1),
        "input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "middle_block.1.transformer_blocks.0.attn1.to_v.weight": (1280, 1280),
        "middle_block.2.out_layers.3.weight": (1280, 1280, 3, 3),
        "output_blocks.0.0.skip_connection.weight": (1280, 2560, 1, 1),
        "output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.11.0.in_layers.2.weight": (320, 640, 3, 3),
        "out.0.weight": (320,),
        "out.2.weight": (4, 320, 3, 3),
    }
    assert {name: shapes.get(name) for name in expected} == expected
    # attention projections have no bias; a ResBlock that keeps its width has no skip convolution
    assert "input_blocks.1.1.transformer_blocks.0.attn1.to_q.bias" not in shapes
    assert not [name for name in shapes if name.startswith("input_blocks.2.0.skip_connection")]


# --- the mapping to diffusers' config -----------------------------------------------------------


@pytest.mark.parametrize("short_name", ["sd15", "tiny"])
def test_diffusers_config_is_the_declared_twin(short_name):
    _, ldm_config = variant("ldm-unet", short_name)
    _, twin = variant("diffusers-unet", short_name)
    assert diffusers_config_for(ldm_config) == twin


SD2_STYLE = dict(num_heads=-1, num_head_channels=64, use_linear_in_transformer=True, context_dim=1024)


def test_diffusers_config_with_fixed_head_width():
    """SD-2 style: a fixed head width becomes diffusers' per-level head counts."""
    mapped = diffusers_config_for(LDMUNetConfig(**SD2_STYLE))
    assert mapped.attention_head_dim == (5, 10, 20, 20)
    assert mapped.use_linear_projection is True
    assert mapped.cross_attention_dim == 1024


def original_yaml(config: LDMUNetConfig) -> dict:
    """The parts of a Stable Diffusion YAML that diffusers reads to configure the UNet."""
    params = dataclasses.asdict(config)
    # an SD YAML names only the head setting it uses; diffusers would read num_heads: -1 as heads
    for name in ("num_heads", "num_head_channels"):
        if params[name] == -1:
            del params[name]
    vae = {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}}  # SD's VAE: latents are 1/8 of the pixels
    return {"model": {"params": {"unet_config": {"params": params}, "first_stage_config": vae}}}


@pytest.mark.parametrize("case", ["sd15", "sd2-style", "tiny"])
def test_diffusers_config_agrees_with_diffusers_reading_of_the_yaml(case):
    """diffusers' `create_unet_diffusers_config_from_ldm` derives the same config from LDM's terms."""
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    config = {
        "sd15": LDMUNetConfig(),
        "sd2-style": LDMUNetConfig(**SD2_STYLE),
        "tiny": variant("ldm-unet", "tiny")[1],
    }[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # passing image_size is deprecated, but skips model-type sniffing
        theirs = create_unet_diffusers_config_from_ldm(original_yaml(config), {}, image_size=config.image_size * 8)
    ours = dataclasses.asdict(diffusers_config_for(config))
    as_tuples = {key: tuple(value) if isinstance(value, list) else value for key, value in theirs.items()}
    assert {key: ours.get(key) for key in as_tuples} == as_tuples


# --- diffusers' converter -----------------------------------------------------------------------


def test_sd15_converts_onto_diffusers_on_meta():
    """Both SD-1.5 UNets on the meta device: the converter only renames, so meta tensors suffice."""
    family, config = variant("ldm-unet", "sd15")
    ldm_state = build_on_meta(family, config).state_dict()
    converted = diffusers_state_dict(ldm_state, config)
    target = diffusers_twin(config, "meta")
    assert_converts_exactly(converted, target.state_dict())
    # nothing was copied or materialized: every converted tensor is one of the LDM model's
    ldm_ids = {id(tensor) for tensor in ldm_state.values()}
    assert all(id(tensor) in ldm_ids and tensor.is_meta for tensor in converted.values())
    target.load_state_dict(converted, strict=True, assign=True)


TINY_CASES = {
    "tiny": {},
    # fixed head width, Linear projections, two transformer layers, scale-shift norm, attention
    # only at the middle level: every flag that changes the layout, in one model
    "sd2-style": dict(
        num_heads=-1,
        num_head_channels=8,
        use_linear_in_transformer=True,
        transformer_depth=2,
        use_scale_shift_norm=True,
        attention_resolutions=(2,),
        channel_mult=(1, 2, 2),
        num_res_blocks=2,
    ),
    # inpainting-style input channels, no attention outside the middle block
    "inpaint-no-attention": dict(in_channels=9, attention_resolutions=()),
}


@pytest.mark.parametrize("case", list(TINY_CASES))
def test_converted_tiny_model_gives_the_same_outputs(case):
    _, tiny = variant("ldm-unet", "tiny")
    config = dataclasses.replace(tiny, **TINY_CASES[case])
    torch.manual_seed(0)
    ldm = get_family("ldm-unet").build(config).eval()
    # LDM zero-initializes residual branches and the output conv: with its own init the two models
    # would agree trivially. Random weights make every layer count.
    with torch.no_grad():
        for parameter in ldm.parameters():
            parameter.normal_(0.0, 0.2)
    converted = diffusers_state_dict(ldm.state_dict(), config)
    target = diffusers_twin(config, "cpu").eval()
    assert_converts_exactly(converted, target.state_dict())
    target.load_state_dict(converted, strict=True)

    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, config.in_channels, config.image_size, config.image_size, generator=generator)
    timesteps = torch.tensor([3, 917])
    context = torch.randn(2, 77, config.context_dim, generator=generator)
    with torch.no_grad():
        ours = ldm(x, timesteps, context)
        theirs = target(x, timesteps, encoder_hidden_states=context).sample
    assert ours.shape == (2, config.out_channels, config.image_size, config.image_size)
    assert ours.abs().max() > 0.1  # a real signal, not zeros on both sides
    assert (ours - theirs).abs().max().item() <= 1e-5


# --- config validation and training batch -------------------------------------------------------


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(model_channels=48), "model_channels must be a multiple of 32"),
        (dict(channel_mult=(2, 4)), "channel_mult must start with 1"),
        (dict(channel_mult=()), "channel_mult must be one or more positive integers"),
        (dict(attention_resolutions=(3, 16)), r"attention_resolutions \[3, 16\] match no level"),
        (dict(num_head_channels=64), "set exactly one of num_heads and num_head_channels"),
        (dict(num_heads=-1), "set exactly one of num_heads and num_head_channels"),
        (dict(num_heads=0), "set exactly one of num_heads and num_head_channels"),
        (dict(num_heads=7), "320 attention channels are not divisible by num_heads=7"),
        (dict(image_size=60), "image_size must be a multiple of 8"),
        (dict(num_res_blocks=0), "num_res_blocks must be at least 1"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    ],
)
def test_config_rejects_impossible_values(values, message):
    with pytest.raises(ValueError, match=message):
        LDMUNetConfig(**values)


def test_make_batch_follows_the_config():
    family, config = variant("ldm-unet", "tiny")
    batch = family.make_batch(config, 3, torch.Generator().manual_seed(0))
    assert {name: tuple(t.shape) for name, t in batch.items()} == {
        "sample": (3, 4, 16, 16),
        "timesteps": (3,),
        "context": (3, 77, 32),
        "noise": (3, 4, 16, 16),
    }
    again = family.make_batch(config, 3, torch.Generator().manual_seed(0))
    assert all(torch.equal(batch[name], again[name]) for name in batch)
