"""Built-in converters between the model families."""

from __future__ import annotations

from registry.converters import register_renaming_converter

from .ldm_names import diffusers_names
from .ldm_unet import diffusers_config_for

LDM_TO_DIFFUSERS = register_renaming_converter(
    "ldm-unet->diffusers-unet",
    source_family="ldm-unet",
    target_family="diffusers-unet",
    exact=True,
    target_config=diffusers_config_for,
    renames=diffusers_names,
    description="CompVis/LDM UNet names to diffusers UNet2DConditionModel names (what diffusers' "
    "convert_ldm_unet_checkpoint does for these UNets; a pure rename)",
)
