"""Real configs register as they are: a diffusers `config.json` and the dict diffusers'
`create_unet_diffusers_config_from_ldm` returns are `diffusers-unet` configs, with the same
canonical config (so the same variant) as the built-in variant they describe."""

from __future__ import annotations

import json
import warnings

import pytest

from registry.errors import UsageError

SD15_LDM_CONFIG = {  # the structure of Stable Diffusion 1.x's v1-inference.yaml, as parsed
    "model": {"params": {
        "unet_config": {"params": {
            "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
            "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4],
            "num_heads": 8, "use_spatial_transformer": True, "transformer_depth": 1, "context_dim": 768,
            "use_checkpoint": True, "legacy": False,
        }},
        "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}},
    }},
}


def _canonical(name: str, values: dict) -> str:
    from registry.families import canonical_config_json, get_family, make_config

    return canonical_config_json(make_config(get_family(name), values))


def _builtin(variant: str) -> str:
    from registry.catalog import get_builtin_variant

    return _canonical("diffusers-unet", get_builtin_variant(variant).config)


def test_a_diffusers_config_json_is_a_diffusers_unet_config(tmp_path):
    """diffusers itself writes the file: every constructor keyword plus `_class_name` etc."""
    from diffusers import UNet2DConditionModel

    from registry.families import get_family, make_config

    tiny = make_config(get_family("diffusers-unet"), json.loads(_builtin("diffusers-unet/tiny")))
    UNet2DConditionModel(**tiny.diffusers_kwargs()).save_config(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert {"_class_name", "_diffusers_version", "addition_embed_type", "encoder_hid_dim"} <= set(written)
    assert _canonical("diffusers-unet", written) == _builtin("diffusers-unet/tiny")


def test_a_non_default_extra_keyword_is_kept_in_extra(tmp_path):
    from registry.families import build_schema, get_family, make_config

    values = {**json.loads(_builtin("diffusers-unet/tiny")), "time_cond_proj_dim": 16, "addition_embed_type": None}
    values.pop("extra")
    config = make_config(get_family("diffusers-unet"), values)
    assert config.extra == {"time_cond_proj_dim": 16}  # the default-valued keyword is not kept
    names = [row[0] for row in build_schema(get_family("diffusers-unet"), config).schema.as_rows()]
    assert "time_embedding.cond_proj.weight" in names


def test_the_dict_create_unet_diffusers_config_from_ldm_returns_is_sd15():
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = create_unet_diffusers_config_from_ldm(SD15_LDM_CONFIG, {}, image_size=512)
    assert "addition_embed_type" in converted and isinstance(converted["block_out_channels"], list)
    assert _canonical("diffusers-unet", converted) == _builtin("diffusers-unet/sd15")


@pytest.mark.parametrize("values, message", [
    ({"_class_name": "UNet2DModel"}, "this is a config of diffusers' UNet2DModel, not of UNet2DConditionModel "
                                     "(the diffusers-unet family)"),
    ({"no_such_keyword": 1, "_diffusers_version": "0.30.0"},
     "unknown config key for family 'diffusers-unet': no_such_keyword"),
])
def test_what_is_not_a_unet2dconditionmodel_config_is_refused(values, message):
    with pytest.raises(UsageError) as error:
        _canonical("diffusers-unet", values)
    assert error.value.message == message
