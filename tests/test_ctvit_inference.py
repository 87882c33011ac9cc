"""Config inference for ctvit: every built-in variant, CT-CLIP's reference listings and configs no
variant uses are read back from their schemas alone; other schemas give no proposal."""

from __future__ import annotations

import dataclasses
import functools

import pytest
from conftest import reference_text

from registry.catalog import builtin_variants
from registry.configs import config_from_options
from registry.families import build_schema, config_dict, get_family, make_config
from registry.models.ctvit import TINY, CTViTConfig
from registry.models.ctvit_inference import infer_ctvit_configs
from registry.schema import Schema, TensorEntry, parse_schema_tsv

# CT-CLIP's listings and the config overrides that build them (as in test_ctvit.py).
LISTINGS = {
    "ctvit_ctclip_main.tsv": {"with_decoder": False},
    "ctvit_ctclip_seed.tsv": {},
    "ctvit_ctclip_seed_vgg_gan.tsv": {"use_vgg_and_gan": True},
}

# Configs no built-in variant uses, each varying what the shapes must reveal.
OTHER_CONFIGS = {
    "other-sizes": dict(
        dim=48, codebook_size=100, image_size=24, patch_size=4, temporal_patch_size=3, spatial_depth=2,
        temporal_depth=3, dim_head=16, heads=3,
    ),
    "rms-flash-no-decoder": {**TINY, "use_rms_norm": True, "use_flash_attention": True, "with_decoder": False},
    "channels-3": {**TINY, "channels": 3},
    "channels-2": {**TINY, "channels": 2},  # neither 1 nor 3 fits 2·8², so the fewest channels that do
    "no-decoder-temporal-1": {**TINY, "with_decoder": False, "temporal_patch_size": 1},
    "gan-rgb-rms-flash": {
        **TINY, "use_vgg_and_gan": True, "channels": 3, "use_rms_norm": True, "use_flash_attention": True,
        "discr_base_dim": 8, "discr_attn_res_layers": (32, 8), "vgg_base_dim": 2, "vgg_hidden_dim": 24,
    },
    "gan-no-discr-attention": {**TINY, "use_vgg_and_gan": True, "discr_attn_res_layers": (), "discr_image_size": 64},
    # a first width of min(4·200, 512) = 512 hides the base dim: 128 is proposed, same shapes
    "gan-saturated-discr": {**TINY, "use_vgg_and_gan": True, "discr_base_dim": 200, "discr_image_size": 16},
}

pytestmark = pytest.mark.usefixtures("one_thread")  # meta builds gain nothing from intra-op threads


@functools.lru_cache(maxsize=None)
def _built_schema(items: tuple) -> Schema:
    family = get_family("ctvit")
    return build_schema(family, make_config(family, dict(items))).schema


def built_schema(overrides: dict) -> Schema:
    """The schema of ctvit with `overrides`, built on the meta device once per session."""
    return _built_schema(tuple(sorted(overrides.items())))


def verifies(config: CTViTConfig, schema: Schema) -> bool:
    return build_schema(get_family("ctvit"), config).fingerprint == schema.fingerprint


def visible_fields(config: CTViTConfig) -> dict:
    """The fields a schema decides: all but `image_size` and `use_swiglu`; the discriminator and
    VGG fields only with `use_vgg_and_gan`, and of those only what reaches a shape."""
    fields = dataclasses.asdict(config)
    del fields["image_size"], fields["use_swiglu"]
    gan = {name: fields.pop(name) for name in list(fields) if name.startswith(("discr_", "vgg_"))}
    if config.use_vgg_and_gan:
        size = gan["discr_image_size"]
        resolutions = {size >> block for block in range(size.bit_length() - 2)}
        fields.update(gan)
        fields["discr_base_dim"] = min(4 * gan["discr_base_dim"], 512)  # the first block's width
        fields["discr_attn_res_layers"] = resolutions & set(gan["discr_attn_res_layers"])
    return fields


def assert_inferred(schema: Schema, original: CTViTConfig) -> CTViTConfig:
    """Every proposal rebuilds `schema`, and the first reads every visible field as `original` has it."""
    proposals = infer_ctvit_configs(schema)
    assert proposals, "no proposal"
    assert [verifies(config, schema) for config in proposals] == [True] * len(proposals)
    assert visible_fields(proposals[0]) == visible_fields(original)
    return proposals[0]


# --- what the shapes reveal ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant", [v for v in builtin_variants() if v.family == "ctvit"], ids=lambda v: v.short_name
)
def test_every_builtin_variant_is_inferred(variant):
    original = make_config(get_family("ctvit"), variant.config)
    inferred = assert_inferred(built_schema(variant.config), original)
    if original.image_size == 480:  # the CT-CLIP-size variants get CT-CLIP's image size back
        assert inferred.image_size == 480


@pytest.mark.parametrize("listing", sorted(LISTINGS))
def test_the_ct_clip_listings_give_ct_clips_config(listing):
    schema, _ = parse_schema_tsv(reference_text(listing, "the built-in variant tests cover the same schemas"))
    ctclip = CTViTConfig(**LISTINGS[listing])
    assert assert_inferred(schema, ctclip) == ctclip  # every field, image_size 480 included


@pytest.mark.parametrize("overrides", OTHER_CONFIGS.values(), ids=OTHER_CONFIGS.keys())
def test_configs_no_variant_uses_are_inferred(overrides):
    assert_inferred(built_schema(overrides), CTViTConfig(**overrides))


def test_a_ct_clip_checkpoint_is_inferred_below_its_visual_transformer_prefix():
    ctvit = built_schema({"with_decoder": False}).with_prefix("visual_transformer.")
    ctclip = Schema([
        *ctvit,
        TensorEntry("temperature", ()),
        TensorEntry("text_transformer.embeddings.word_embeddings.weight", (30522, 768)),
        TensorEntry("to_text_latent.weight", (512, 768)),
        TensorEntry("to_visual_latent.weight", (512, 294912)),
    ])
    assert infer_ctvit_configs(ctclip) == []
    assert infer_ctvit_configs(ctclip.under("visual_transformer.")) == [
        CTViTConfig(with_decoder=False), CTViTConfig(with_decoder=False, use_swiglu=True)
    ]


def test_the_family_offers_inference_to_the_registry():
    """The registry's step 6 calls `family.infer_configs` and keeps what rebuilds the schema."""
    family = get_family("ctvit")
    assert family.infer_configs is infer_ctvit_configs
    overrides = OTHER_CONFIGS["rms-flash-no-decoder"]
    schema = built_schema(overrides)
    found = [c for c in family.infer_configs(schema) if build_schema(family, c).fingerprint == schema.fingerprint]
    assert [visible_fields(c) for c in found] == [visible_fields(CTViTConfig(**overrides))] * 2


# --- what they do not reveal ---------------------------------------------------------------------


def test_geglu_is_proposed_before_swiglu():
    proposals = infer_ctvit_configs(built_schema({**TINY, "use_swiglu": True}))
    assert [c.use_swiglu for c in proposals] == [False, True]
    assert dataclasses.replace(proposals[0], use_swiglu=True) == proposals[1]


def test_the_image_size_is_a_placeholder():
    schema = built_schema({**TINY, "image_size": 64})
    assert schema == built_schema(TINY)  # no shape depends on it
    assert [c.image_size for c in infer_ctvit_configs(schema)] == [32, 32]  # a 4x4 grid of 8-pixel patches


def test_channels_and_patch_size_share_one_product_without_a_discriminator():
    original = CTViTConfig(**{**TINY, "channels": 4, "patch_size": 4})  # 4·4² = 1·8²
    schema = built_schema(dataclasses.asdict(original))
    inferred = infer_ctvit_configs(schema)[0]
    assert (inferred.channels, inferred.patch_size) == (1, 8)
    assert verifies(inferred, schema)


def test_proposals_are_valid_config_values():
    """What the registry suggests (`registry variants add ... --set k=v`) must go through make_config."""
    family = get_family("ctvit")
    for overrides in OTHER_CONFIGS.values():
        for config in infer_ctvit_configs(built_schema(overrides)):
            assert make_config(family, config_dict(config)) == config


# --- other schemas -------------------------------------------------------------------------------


def test_a_unet_and_an_empty_schema_give_nothing():
    family, config = config_from_options("diffusers-unet", "tiny")
    assert infer_ctvit_configs(build_schema(family, config).schema) == []
    assert infer_ctvit_configs(Schema([])) == []


def _without(schema: Schema, prefix: str) -> Schema:
    return Schema(e for e in schema if not e.name.startswith(prefix))


def _reshaped(schema: Schema, name: str, shape: tuple[int, ...]) -> Schema:
    return Schema(TensorEntry(e.name, shape if e.name == name else e.shape, e.dtype) for e in schema)


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: _without(s, "vq."),
        lambda s: _without(s, "enc_spatial_transformer."),
        lambda s: _without(s, "enc_spatial_transformer.norm_out."),
        lambda s: _without(s, "vgg."),  # a discriminator without its VGG
        lambda s: Schema([*s, TensorEntry("classifier.weight", (10, 32))]),
        lambda s: _reshaped(s, "vq._codebook.embed", (2, 64, 32)),
        lambda s: _reshaped(s, "to_patch_emb.2.weight", (32, 100)),  # not a multiple of 1·8²
        lambda s: _reshaped(s, "enc_spatial_transformer.layers.0.1.to_q.weight", (12, 32)),  # 12 / 8
        lambda s: _reshaped(s, "enc_spatial_transformer.layers.0.1.q_scale", ()),
        lambda s: _reshaped(s, "discr.blocks.0.conv_res.weight", (16, 2, 1, 1)),  # 2 channels + VGG
    ],
    ids=[
        "no-codebook", "no-encoder", "no-norm-out", "discr-without-vgg", "foreign-entry", "two-codebooks",
        "patch-dims", "heads", "scalar-q-scale", "discr-channels",
    ],
)
def test_damaged_schemas_give_nothing(damage):
    schema = built_schema({**TINY, "use_vgg_and_gan": True})
    assert infer_ctvit_configs(schema)  # intact, it is inferred
    assert infer_ctvit_configs(damage(schema)) == []
