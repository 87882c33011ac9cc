"""Behaviour probes of the built-in families (DESIGN §11, `registry.behaviour`).

A probe runs a model (eval mode, CPU, float32, name-derived weights) on a small input drawn from
the generator it is given and returns its outputs; `probe_config` shrinks a variant too big to run
on a CPU in a second or two to a small one with the same flags and block types (small widths and
depths), and returns small variants as they are.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from registry.families import extend_family

from .ctvit import TINY, CTViTConfig
from .diffusers_unet import DEFAULT_SAMPLE_SIZE, DiffusersUNetConfig
from .ldm_unet import LDMUNetConfig

# --- ctvit ------------------------------------------------------------------------------------

# Fields that size a CTViT; every other field (the flags, channels) is kept by the probe config.
_CTVIT_LIMITS = dict(dim=64, codebook_size=1024, image_size=64, spatial_depth=2, temporal_depth=2,
                     dim_head=32, heads=4, discr_image_size=64, discr_base_dim=16, vgg_base_dim=16,
                     vgg_hidden_dim=256)


def ctvit_probe_config(config: CTViTConfig) -> CTViTConfig:
    """`config` when it is small; else the tiny sizes (`ctvit.TINY`) with `config`'s flags."""
    if all(getattr(config, name) <= limit for name, limit in _CTVIT_LIMITS.items()):
        return config
    return dataclasses.replace(config, **TINY)


def ctvit_probe(model: Any, config: CTViTConfig, generator: Any) -> dict[str, Any]:
    """A volume of two token frames (2·temporal_patch_size frames, CT-CLIP's convention).

    Through CT-CLIP's keywords when the forward takes them: `tokens` (return_encoded_tokens),
    `ids` (return_only_codebook_ids), `recons` (return_recons_only); else the reconstruction.
    Also `pre_quant`, the quantizer's input: tokens, ids and (without a decoder) recons are
    discrete in the encoder's output, so a small change upstream (a LeakyReLU slope 0.1 → 0.11)
    shows only there. `ids` are a `Discrete` output: the model's own ids with their margins under
    the cosine scores of that pass's quantizer input against the codebook, so the digest can pick
    an input without near ties (`registry.behaviour_digest`).
    """
    import torch

    frames = 2 * config.temporal_patch_size
    video = torch.randn(1, config.channels, frames, config.image_size, config.image_size, generator=generator)
    outputs: dict[str, Any] = {}
    quantizer_inputs: list[Any] = []

    def keep_input(_module: Any, args: tuple) -> None:
        # returns None: a pre-hook that returns a value replaces the module's input with it
        quantizer_inputs.append(args[0].clone())

    quantizer = getattr(model, "vq", None)
    hook = None
    if isinstance(quantizer, torch.nn.Module):
        hook = quantizer.register_forward_pre_hook(keep_input)
    try:
        if "return_encoded_tokens" in inspect.signature(model.forward).parameters:
            outputs["tokens"] = model(video, return_encoded_tokens=True)
            seen = len(quantizer_inputs)
            ids = model(video, return_only_codebook_ids=True)
            outputs["ids"] = _with_margins(ids, quantizer, quantizer_inputs[seen:])
            outputs["recons"] = model(video, return_recons_only=True)
        else:
            outputs["recons"] = model(video)
    finally:
        if hook is not None:
            hook.remove()
    if quantizer_inputs:
        outputs["pre_quant"] = quantizer_inputs[0]
    return outputs


def _with_margins(ids: Any, quantizer: Any, inputs: list[Any]) -> Any:
    """`ids` as a `Discrete` output, scored by cosine against the quantizer's codebook (how CT-CLIP's
    quantizer chooses); the bare ids when the quantizer or its input is not there to score them."""
    import torch.nn.functional as F

    from registry.behaviour_digest import Discrete

    codebook = getattr(quantizer, "codebook", None)
    if codebook is None or len(inputs) != 1 or inputs[0].shape[:-1].numel() != ids.numel():
        return ids
    scores = F.normalize(inputs[0].float(), dim=-1) @ F.normalize(codebook.float(), dim=-1).t()
    return Discrete.chosen(ids, scores)


# --- UNets ------------------------------------------------------------------------------------

_PROBE_WIDTH = 32  # first level's channels: one GroupNorm group of 32 channels per 32
_PROBE_HEADS = 8
_PROBE_CONTEXT = 32
_PROBE_TOKENS = 4


def ldm_unet_probe_config(config: LDMUNetConfig) -> LDMUNetConfig:
    """`config` when it is small; else 32 base channels, one res block and transformer layer per
    level, 32-wide context, a latent twice the deepest downsampling; levels, attention
    resolutions, head layout and flags kept."""
    if config.model_channels <= 64 and config.image_size <= 32 and config.context_dim <= 128:
        return config
    heads = dict(num_heads=_PROBE_HEADS) if config.num_head_channels == -1 else dict(num_head_channels=_PROBE_HEADS)
    return dataclasses.replace(
        config, model_channels=_PROBE_WIDTH, num_res_blocks=1, transformer_depth=1, context_dim=_PROBE_CONTEXT,
        image_size=2 * config.downsampling_factors[-1], **heads,
    )


def _scaled(value: Any, factor: int) -> Any:
    return tuple(factor for _ in value) if isinstance(value, tuple) else factor


def diffusers_unet_probe_config(config: DiffusersUNetConfig) -> DiffusersUNetConfig:
    """`config` when it is small; else the first level at 32 channels (the others keep their
    ratios), one layer per block, 8 heads, a 32-wide context, a latent twice the deepest
    downsampling; block types and flags kept."""
    size = config.sample_size or DEFAULT_SAMPLE_SIZE
    if max(config.block_out_channels) <= 128 and size <= 32 and config.cross_attention_dim <= 128:
        return config
    first = config.block_out_channels[0]
    widths = tuple(max(_PROBE_WIDTH, _PROBE_WIDTH * round(c / first)) for c in config.block_out_channels)
    heads = {"attention_head_dim": _scaled(config.attention_head_dim, _PROBE_HEADS)}
    if config.num_attention_heads is not None:
        heads["num_attention_heads"] = _scaled(config.num_attention_heads, _PROBE_HEADS)
    return dataclasses.replace(
        config, block_out_channels=widths, layers_per_block=1,
        transformer_layers_per_block=_scaled(config.transformer_layers_per_block, 1),
        cross_attention_dim=_PROBE_CONTEXT, sample_size=2 ** len(widths), **heads,
    )


def _unet_inputs(in_channels: int, size: int, context_dim: int, generator: Any) -> tuple[Any, Any, Any]:
    import torch

    sample = torch.randn(1, in_channels, size, size, generator=generator)
    timesteps = torch.randint(0, 1000, (1,), generator=generator)
    context = torch.randn(1, _PROBE_TOKENS, context_dim, generator=generator)
    return sample, timesteps, context


def ldm_unet_probe(model: Any, config: LDMUNetConfig, generator: Any) -> Any:
    """The noise prediction for a latent, a timestep and a 4-token context."""
    sample, timesteps, context = _unet_inputs(config.in_channels, config.image_size, config.context_dim, generator)
    return model(sample, timesteps, context)


def diffusers_unet_probe(model: Any, config: DiffusersUNetConfig, generator: Any) -> Any:
    """`sample` for a latent, a timestep and a 4-token `encoder_hidden_states`."""
    size = config.sample_size or DEFAULT_SAMPLE_SIZE
    sample, timesteps, context = _unet_inputs(config.in_channels, size, config.cross_attention_dim, generator)
    return model(sample, timesteps, encoder_hidden_states=context).sample


extend_family("ctvit", probe=ctvit_probe, probe_config=ctvit_probe_config)
extend_family("ldm-unet", probe=ldm_unet_probe, probe_config=ldm_unet_probe_config)
extend_family("diffusers-unet", probe=diffusers_unet_probe, probe_config=diffusers_unet_probe_config)
