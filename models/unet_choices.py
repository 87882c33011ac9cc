"""Choices config inference may try for the UNet families' string fields (`Family.config_choices`).

Block type names are free strings to the config class, so a generic search cannot enumerate them;
these are the ones Stable-Diffusion-style UNets use. Tuples give the choices of each element.
"""

from __future__ import annotations

from registry.families import extend_family

DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_BLOCKS = ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D", None)

extend_family(
    "diffusers-unet",
    config_choices={
        "down_block_types": DOWN_BLOCKS,
        "up_block_types": UP_BLOCKS,
        "mid_block_type": MID_BLOCKS,
        "resnet_time_scale_shift": ("default", "scale_shift"),
    },
)
