"""LDM (CompVis) UNet names -> diffusers `UNet2DConditionModel` names, from the config alone.

The two layouts hold the same tensors under other names (no reshape, no split), so converting is
a rename. Which LDM block becomes which diffusers block follows from the config: every level has
`num_res_blocks` ResBlocks (each followed by a SpatialTransformer if the level attends) and, except
the deepest, a Downsample; coming up, every level has `num_res_blocks + 1` ResBlocks and, except
the last, an Upsample after the last one.

    input_blocks.0.0                 conv_in
    input_blocks.K.0 / .1            down_blocks.L.resnets.J / .attentions.J
    input_blocks.K.0.op              down_blocks.L.downsamplers.0.conv
    middle_block.0 / .1 / .2         mid_block.resnets.0 / .attentions.0 / .resnets.1
    output_blocks.I.0 / .1           up_blocks.U.resnets.J / .attentions.J
    output_blocks.I.1|2.conv         up_blocks.U.upsamplers.0.conv  (.2 when the level attends)
    time_embed.0 / .2                time_embedding.linear_1 / .linear_2
    out.0 / out.2                    conv_norm_out / conv_out

Inside a ResBlock `in_layers.0`, `in_layers.2`, `emb_layers.1`, `out_layers.0`, `out_layers.3`,
`skip_connection` become `norm1`, `conv1`, `time_emb_proj`, `norm2`, `conv2`, `conv_shortcut`;
inside a SpatialTransformer (`norm`, `proj_in`, `transformer_blocks`, `proj_out`) the names are
the same on both sides; a plain layer (conv, linear, norm) holds `weight` and `bias`. This is what diffusers'
`convert_ldm_unet_checkpoint` does for these UNets; `tests/test_ldm_names.py` checks it for every
built-in variant and a spread of configs. Pure Python: no torch, no diffusers.
"""

from __future__ import annotations

from typing import Callable

from .ldm_unet import LDMUNetConfig

RESNET_INNER = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
TOP_LEVEL = {
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "input_blocks.0.0": "conv_in",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
}
TRANSFORMER_INNER = {"norm", "proj_in", "proj_out", "transformer_blocks"}
# what a block is: its inner names change (RESNET), or stay (TRANSFORMER, LAYER: weight and bias)
RESNET, TRANSFORMER, LAYER = "resnet", "transformer", "layer"


def block_renames(config: LDMUNetConfig) -> dict[str, tuple[str, str]]:
    """LDM block prefix -> (diffusers block prefix, RESNET | TRANSFORMER | LAYER) for a UNet of `config`."""
    attends = [factor in config.attention_resolutions for factor in config.downsampling_factors]
    levels, per_level = len(attends), config.num_res_blocks
    blocks: dict[str, tuple[str, str]] = {ldm: (new, LAYER) for ldm, new in TOP_LEVEL.items()}
    index = 1
    for level, attention in enumerate(attends):
        for j in range(per_level):
            blocks[f"input_blocks.{index}.0"] = (f"down_blocks.{level}.resnets.{j}", RESNET)
            if attention:
                blocks[f"input_blocks.{index}.1"] = (f"down_blocks.{level}.attentions.{j}", TRANSFORMER)
            index += 1
        if level < levels - 1:
            blocks[f"input_blocks.{index}.0.op"] = (f"down_blocks.{level}.downsamplers.0.conv", LAYER)
            index += 1
    blocks["middle_block.0"] = ("mid_block.resnets.0", RESNET)
    blocks["middle_block.1"] = ("mid_block.attentions.0", TRANSFORMER)
    blocks["middle_block.2"] = ("mid_block.resnets.1", RESNET)
    for up in range(levels):
        attention = attends[levels - 1 - up]
        for j in range(per_level + 1):
            index = up * (per_level + 1) + j
            blocks[f"output_blocks.{index}.0"] = (f"up_blocks.{up}.resnets.{j}", RESNET)
            if attention:
                blocks[f"output_blocks.{index}.1"] = (f"up_blocks.{up}.attentions.{j}", TRANSFORMER)
            if j == per_level and up < levels - 1:
                upsample = 2 if attention else 1
                blocks[f"output_blocks.{index}.{upsample}.conv"] = (f"up_blocks.{up}.upsamplers.0.conv", LAYER)
    return blocks


def diffusers_names(config: LDMUNetConfig) -> Callable[[str], str | None]:
    """A function from an LDM UNet tensor name (no `model.diffusion_model.` prefix) to its diffusers
    name, for a UNet of `config`; it returns None for a name such a UNet does not have a block for,
    or a layer its block does not have."""
    blocks = block_renames(config)

    def rename(name: str) -> str | None:
        parts = name.split(".")
        for cut in (4, 3, 2):  # the longest block prefix first: `input_blocks.3.0.op` before `input_blocks.3.0`
            found = blocks.get(".".join(parts[:cut]))
            if found is None or len(parts) <= cut:
                continue
            new, kind = found
            inner = parts[cut:]
            if kind == LAYER:
                return f"{new}.{inner[0]}" if len(inner) == 1 else None
            if kind == TRANSFORMER:
                return ".".join([new, *inner]) if inner[0] in TRANSFORMER_INNER else None
            for width in (2, 1):  # a ResBlock's layer, then its `weight` or `bias`
                layer = RESNET_INNER.get(".".join(inner[:width]))
                if layer is not None and len(inner) == width + 1:
                    return f"{new}.{layer}.{inner[width]}"
            return None
        return None

    return rename
