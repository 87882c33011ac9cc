"""The `diffusers-unet` family: diffusers' `UNet2DConditionModel`, built from its config.

The config dataclass names the `UNet2DConditionModel` arguments that Stable-Diffusion-style UNets
set, with diffusers' own defaults (a test checks them against diffusers' signature). Any other
constructor argument goes in `extra`, passed through unchanged, so every diffusers UNet config can
be expressed.

Real configs register as they are (`prepare_config`): a diffusers `config.json` or the dict that
diffusers' `create_unet_diffusers_config_from_ldm` returns may give every `UNet2DConditionModel`
keyword at the top level; `_`-prefixed keys (`_class_name`, `_diffusers_version`) are metadata.
A keyword outside the dataclass moves into `extra` unless it holds diffusers' default, so one
architecture has one canonical config however it was written (and the built-in variants' stored
configs do not change).
"""

from __future__ import annotations

import functools
import inspect
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from registry.catalog import builtin_variant
from registry.families import extend_family, register_family

from .ldm_training import denoising_batch, noise_loss

DOWN_BLOCKS_SD = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS_SD = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")


@dataclass(frozen=True)
class DiffusersUNetConfig:
    sample_size: int | None = None
    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = DOWN_BLOCKS_SD
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple[str, ...] = UP_BLOCKS_SD
    only_cross_attention: bool = False
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    dropout: float = 0.0
    act_fn: str = "silu"
    norm_num_groups: int | None = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 1280
    transformer_layers_per_block: int | tuple[int, ...] = 1
    attention_head_dim: int | tuple[int, ...] = 8
    num_attention_heads: int | tuple[int, ...] | None = None
    use_linear_projection: bool = False
    upcast_attention: bool = False
    class_embed_type: str | None = None
    num_class_embeds: int | None = None
    resnet_time_scale_shift: str = "default"
    time_embedding_type: str = "positional"
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    # Any other UNet2DConditionModel keyword argument, passed as it is.
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.down_block_types) != len(self.block_out_channels):
            raise ValueError("down_block_types and block_out_channels must have the same length")
        if len(self.up_block_types) != len(self.block_out_channels):
            raise ValueError("up_block_types and block_out_channels must have the same length")

    def diffusers_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for `UNet2DConditionModel(**kwargs)`."""
        kwargs = asdict(self)
        extra = kwargs.pop("extra")
        return {**kwargs, **extra}


@register_family(
    "diffusers-unet",
    config=DiffusersUNetConfig,
    description="diffusers UNet2DConditionModel (Stable Diffusion layout: conv_in, down_blocks, mid_block, up_blocks)",
)
def build_diffusers_unet(config: DiffusersUNetConfig):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**config.diffusers_kwargs())


# diffusers leaves sample_size unset by default; batches then use Stable Diffusion's latent size.
DEFAULT_SAMPLE_SIZE = 64


def make_batch(config: DiffusersUNetConfig, batch_size: int, generator):
    """A synthetic denoising batch at `sample_size` (see `ldm_training.denoising_batch`)."""
    return denoising_batch(
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        size=config.sample_size or DEFAULT_SAMPLE_SIZE,
        context_dim=config.cross_attention_dim,
        batch_size=batch_size,
        generator=generator,
    )


def compute_loss(model, batch):
    """MSE between the UNet's noise prediction and the noise that was added (a scalar tensor)."""
    prediction = model(batch["sample"], batch["timesteps"], encoder_hidden_states=batch["context"]).sample
    return noise_loss(prediction, batch)


@functools.cache
def diffusers_defaults() -> dict[str, Any]:
    """`{keyword: default}` of `UNet2DConditionModel.__init__` (imports diffusers)."""
    from diffusers import UNet2DConditionModel

    parameters = list(inspect.signature(UNet2DConditionModel.__init__).parameters.values())[1:]
    return {p.name: p.default for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _as_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=list)


def prepare_config(values: dict[str, Any]) -> dict[str, Any]:
    """A diffusers config mapping on this family's fields: `_` keys dropped (a `_class_name` other
    than UNet2DConditionModel refused), other `UNet2DConditionModel` keywords moved into `extra`
    unless they hold diffusers' default. Unknown keys stay, so `make_config` names them."""
    class_name = values.get("_class_name")
    if class_name is not None and class_name != "UNet2DConditionModel":
        from registry.errors import UsageError

        raise UsageError(f"this is a config of diffusers' {class_name}, not of UNet2DConditionModel "
                         "(the diffusers-unet family)")
    known = {f.name for f in fields(DiffusersUNetConfig)}
    values = {k: v for k, v in values.items() if not str(k).startswith("_") or k in known}
    outside = [k for k in values if k not in known]
    if not outside:
        return values
    defaults = diffusers_defaults()
    extra = dict(values.get("extra") or {})
    for key in outside:
        if key in defaults:
            value = values.pop(key)
            if _as_json(value) != _as_json(defaults[key]):
                extra[key] = value
    if extra or "extra" in values:
        values["extra"] = extra
    return values


extend_family("diffusers-unet", make_batch=make_batch, compute_loss=compute_loss, prepare_config=prepare_config)


builtin_variant(
    "diffusers-unet",
    "sd15",
    "Stable Diffusion 1.5 UNet (860M parameters) in diffusers' layout",
    sample_size=64,
    cross_attention_dim=768,
)
builtin_variant(
    "diffusers-unet",
    "tiny",
    "two-level UNet for tests and the demo; the diffusers twin of ldm-unet/tiny",
    sample_size=16,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    cross_attention_dim=32,
    attention_head_dim=8,
)
