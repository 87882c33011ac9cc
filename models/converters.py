"""Built-in converters between the model families."""

from __future__ import annotations

from registry.converters import register_converter

from .ldm_unet import diffusers_config_for, diffusers_state_dict


@register_converter(
    "ldm-unet->diffusers-unet",
    source_family="ldm-unet",
    target_family="diffusers-unet",
    exact=True,
    target_config=diffusers_config_for,
    description="CompVis/LDM UNet names to diffusers UNet2DConditionModel, with diffusers' convert_ldm_unet_checkpoint",
    plan_depends_on=("diffusers",),
)
def ldm_to_diffusers(state_dict, source_config):
    return diffusers_state_dict(state_dict, source_config)
