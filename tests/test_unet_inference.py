"""Config inference for `ldm-unet` and `diffusers-unet` (DESIGN §5 step 6).

Each case builds a schema on the meta device, infers configs from it, and takes the first proposal
that passes the registry's verification (`registry.matching._inferred_configs`: rebuild on the meta
device, equal fingerprint; restated in `verified` so these tests do not depend on the matcher).
That proposal must agree with the original on every field that shapes decide; heads, image size
and the like are invisible and are only required to rebuild the schema.
"""

from __future__ import annotations

import pytest
import torch

from registry.configs import config_from_options
from registry.families import build_schema, get_family, make_config
from registry.models.unet_inference import infer_diffusers_unet_configs, infer_ldm_unet_configs
from registry.schema import Schema

LDM_LAYOUT_FIELDS = (
    "in_channels", "out_channels", "model_channels", "num_res_blocks", "channel_mult", "use_scale_shift_norm",
    "transformer_depth", "context_dim", "use_linear_in_transformer",
)
DIFFUSERS_LAYOUT_FIELDS = (
    "in_channels", "out_channels", "down_block_types", "mid_block_type", "up_block_types", "block_out_channels",
    "layers_per_block", "cross_attention_dim", "transformer_layers_per_block", "use_linear_projection",
    "resnet_time_scale_shift", "conv_in_kernel", "conv_out_kernel", "extra",
)

LDM_SD2 = "SD 2.x style: linear projection, context 1024, 64-wide heads, depth 2"
DIFFUSERS_SD2 = "SD 2.x style: linear projection, context 1024, per-level heads, depth 2"

LDM_CASES = {
    "sd15": "sd15",
    "tiny": "tiny",
    "three levels, one block, attention at factor 2 only": dict(
        image_size=32, model_channels=32, channel_mult=(1, 2, 3), num_res_blocks=1, attention_resolutions=(2,),
        context_dim=48,
    ),
    LDM_SD2: dict(
        model_channels=64, channel_mult=(1, 2, 2), use_linear_in_transformer=True, context_dim=1024,
        num_heads=-1, num_head_channels=64, transformer_depth=2,
    ),
    "inpainting: 9 input channels, scale-shift, attention at 1 and 4": dict(
        in_channels=9, model_channels=32, channel_mult=(1, 1, 2), attention_resolutions=(1, 4),
        use_scale_shift_norm=True, context_dim=32,
    ),
    "attention only in the middle, three res blocks": dict(
        model_channels=32, channel_mult=(1, 2), num_res_blocks=3, attention_resolutions=(), context_dim=32,
    ),
    "eight levels (image_size must become a multiple of 128), 4 heads": dict(
        image_size=256, model_channels=32, channel_mult=(1,) * 8, num_res_blocks=1, attention_resolutions=(128,),
        num_heads=4, context_dim=32,
    ),
}

CROSS, DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
CROSS_UP, UP = "CrossAttnUpBlock2D", "UpBlock2D"
DIFFUSERS_CASES = {
    "sd15": "sd15",
    "tiny": "tiny",
    DIFFUSERS_SD2: dict(
        sample_size=32, block_out_channels=(64, 128, 128), down_block_types=(CROSS, CROSS, DOWN),
        up_block_types=(UP, CROSS_UP, CROSS_UP), layers_per_block=1, cross_attention_dim=1024,
        use_linear_projection=True, attention_head_dim=(1, 2, 2), transformer_layers_per_block=2,
    ),
    "SDXL style: attention at deeper levels, per-level depth, text_time embedding": dict(
        block_out_channels=(32, 64, 128), down_block_types=(DOWN, CROSS, CROSS),
        up_block_types=(CROSS_UP, CROSS_UP, UP),
        transformer_layers_per_block=(1, 2, 3), attention_head_dim=(1, 1, 2), use_linear_projection=True,
        cross_attention_dim=64,
        extra={"addition_embed_type": "text_time", "addition_time_embed_dim": 256,
               "projection_class_embeddings_input_dim": 96},
    ),
    "inpainting: 9 input channels, scale-shift, middle block without attention": dict(
        in_channels=9, block_out_channels=(32, 64), down_block_types=(CROSS, DOWN), up_block_types=(UP, CROSS_UP),
        layers_per_block=1, resnet_time_scale_shift="scale_shift", mid_block_type="UNetMidBlock2D",
        cross_attention_dim=32,
    ),
    "class, guidance and encoder projections, wider time embedding, 1x1 in/out convs": dict(
        block_out_channels=(32, 64), down_block_types=(CROSS, CROSS), up_block_types=(CROSS_UP, CROSS_UP),
        layers_per_block=1, cross_attention_dim=32, conv_in_kernel=1, conv_out_kernel=1,
        extra={"num_class_embeds": 10, "time_cond_proj_dim": 16, "time_embedding_dim": 96,
               "encoder_hid_dim_type": "text_proj", "encoder_hid_dim": 24},
    ),
    "heads that do not divide the width (visible), 16 norm groups, no middle block": dict(
        block_out_channels=(48, 96), down_block_types=(CROSS, CROSS), up_block_types=(CROSS_UP, CROSS_UP),
        layers_per_block=1, cross_attention_dim=32, attention_head_dim=5, norm_num_groups=16, mid_block_type=None,
    ),
}


def config_for(family_name: str, case):
    if isinstance(case, str):
        return config_from_options(family_name, case)
    family = get_family(family_name)
    return family, make_config(family, case)


def layout(config, fields) -> dict:
    values = {name: getattr(config, name) for name in fields}
    if hasattr(config, "attention_resolutions"):  # a set of factors: the order changes nothing
        values["attention_resolutions"] = sorted(config.attention_resolutions)
    return values


def verified(family, schema: Schema) -> list:
    return [c for c in family.infer_configs(schema) if build_schema(family, c).fingerprint == schema.fingerprint]


def assert_inferred(family_name: str, case, fields) -> None:
    family, original = config_for(family_name, case)
    schema = build_schema(family, original).schema
    accepted = verified(family, schema)
    assert accepted, f"no proposal rebuilds the schema of {original}"
    assert layout(accepted[0], fields) == layout(original, fields)


@pytest.mark.parametrize("case", list(LDM_CASES), ids=list(LDM_CASES))
def test_ldm_unet_configs_are_inferred(case):
    assert_inferred("ldm-unet", LDM_CASES[case], LDM_LAYOUT_FIELDS)


@pytest.mark.parametrize("case", list(DIFFUSERS_CASES), ids=list(DIFFUSERS_CASES))
def test_diffusers_unet_configs_are_inferred(case):
    assert_inferred("diffusers-unet", DIFFUSERS_CASES[case], DIFFUSERS_LAYOUT_FIELDS)


def test_inference_is_registered_on_both_families():
    assert get_family("ldm-unet").infer_configs is infer_ldm_unet_configs
    assert get_family("diffusers-unet").infer_configs is infer_diffusers_unet_configs


# --- heads are a guess: the order of the proposals -------------------------------------------------


def schema_of(family_name: str, case) -> Schema:
    return build_schema(*config_for(family_name, case)).schema


def test_sd15_gets_back_exactly_its_config_including_8_heads():
    _, sd15 = config_for("ldm-unet", "sd15")
    assert infer_ldm_unet_configs(schema_of("ldm-unet", "sd15"))[0] == sd15
    proposals = infer_diffusers_unet_configs(schema_of("diffusers-unet", "sd15"))
    assert [p.attention_head_dim for p in proposals] == [8, (5, 10, 20, 20)]


def test_linear_projection_puts_64_wide_heads_first():
    ldm = infer_ldm_unet_configs(schema_of("ldm-unet", LDM_CASES[LDM_SD2]))
    assert [(p.num_heads, p.num_head_channels) for p in ldm] == [(-1, 64), (8, -1)]
    diffusers = infer_diffusers_unet_configs(schema_of("diffusers-unet", DIFFUSERS_CASES[DIFFUSERS_SD2]))
    assert [p.attention_head_dim for p in diffusers] == [(1, 2, 2), 8]


def test_heads_the_config_rejects_are_not_proposed():
    # ldm-unet/tiny has 32-wide levels: 64-wide heads do not divide them
    assert [(p.num_heads, p.num_head_channels) for p in infer_ldm_unet_configs(schema_of("ldm-unet", "tiny"))] == [
        (8, -1)
    ]


# --- not this family, or not expressible: [] ----------------------------------------------------------


@pytest.fixture(scope="module")
def sd15_schemas() -> dict[str, Schema]:
    return {name: schema_of(name, "sd15") for name in ("ldm-unet", "diffusers-unet")}


@pytest.mark.parametrize("infer", [infer_ldm_unet_configs, infer_diffusers_unet_configs])
def test_other_schemas_give_nothing(infer):
    assert infer(schema_of("ctvit", "tiny")) == []
    assert infer(Schema([])) == []


def test_each_family_refuses_the_other_layout():
    assert infer_diffusers_unet_configs(schema_of("ldm-unet", "tiny")) == []
    assert infer_ldm_unet_configs(schema_of("diffusers-unet", "tiny")) == []


def test_a_level_whose_blocks_disagree_gives_nothing(sd15_schemas):
    # the second res block of level 0 without its transformer: no LDM config builds that
    schema = Schema(e for e in sd15_schemas["ldm-unet"] if not e.name.startswith("input_blocks.2.1."))
    assert infer_ldm_unet_configs(schema) == []


def test_an_attention_wider_than_its_level_gives_nothing():
    # no head count h gives h * (32 // h) = 40 channels in a 32-wide level
    rows = [
        [name, [40, *shape[1:]] if name.endswith("proj_in.weight") and width_32 else shape, dtype]
        for name, shape, dtype in schema_of("diffusers-unet", "tiny").as_rows()
        for width_32 in [name.startswith(("down_blocks.0.", "up_blocks.1."))]
    ]
    assert infer_diffusers_unet_configs(Schema.from_rows(rows)) == []


def test_keys_no_config_produces_give_nothing(sd15_schemas):
    for name, infer in (("ldm-unet", infer_ldm_unet_configs), ("diffusers-unet", infer_diffusers_unet_configs)):
        extra = Schema([*sd15_schemas[name], *Schema.from_rows([["label_emb.0.weight", [1280, 10], "float32"]])])
        assert infer(extra) == []


def test_inference_on_sd15_builds_no_model(sd15_schemas, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("inference built a module")

    monkeypatch.setattr(torch.nn.Module, "__init__", refuse)
    assert infer_ldm_unet_configs(sd15_schemas["ldm-unet"])
    assert infer_diffusers_unet_configs(sd15_schemas["diffusers-unet"])
