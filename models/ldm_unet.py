"""The `ldm-unet` family: the hand-written LDM-style UNet of the UNet incident (CompVis key names).

Its checkpoints hold `input_blocks.1.0.in_layers.2.weight`, `out_layers`, `skip_connection`, ...
where diffusers' `UNet2DConditionModel` holds `down_blocks.0.resnets.0.conv1.weight`, ... — and for
equivalent configs the two layouts map onto each other exactly. `diffusers_config_for(config)`
gives the equivalent `diffusers-unet` config; `ldm_names.diffusers_names(config)` renames the
weights (what diffusers' own `convert_ldm_unet_checkpoint` does, in pure Python).
`tests/test_ldm_unet.py` and `tests/test_ldm_names.py` prove both: no missing or unexpected key,
equal shapes, equal outputs, the same names as diffusers' converter.

The config speaks LDM's language (the `unet_config.params` of a Stable Diffusion YAML) but keeps
only what changes the model. LDM flags that do not (`use_checkpoint`, `use_fp16`,
`use_spatial_transformer`, which this UNet always is, and `legacy`, whose only effect is on head
widths that the checks below make equal either way) are left out.

`image_size` is the latent size the UNet is trained at: 64 for Stable Diffusion 1.5 (512-pixel
images, 8x VAE), what the SD YAML sets as `model.params.image_size`. The YAML's
`unet_config.params.image_size: 32` is marked "unused" there, and diffusers' converter ignores it
too, deriving `sample_size` = 512 // 8 = 64 from the model type. So `image_size` maps to
`sample_size` one to one. It changes no tensor; it sizes `make_batch`'s latents.

The module code lives in `ldm_blocks` and is imported only by `build`, so listing families does not
import torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from registry.catalog import builtin_variant
from registry.families import extend_family, register_family

from .diffusers_unet import DiffusersUNetConfig
from .ldm_training import denoising_batch, noise_loss

# LDM normalizes with GroupNorm(32, channels) everywhere.
NORM_GROUPS = 32
# Where Stable Diffusion single-file checkpoints keep the UNet, and where diffusers' converter looks.
LDM_UNET_PREFIX = "model.diffusion_model."


@dataclass(frozen=True)
class LDMUNetConfig:
    """An LDM UNet in LDM's terms; the defaults are Stable Diffusion 1.5's UNet.

    `attention_resolutions` lists downsampling factors (1 = full resolution, 2 = after one
    Downsample, ...) at which blocks carry a SpatialTransformer; the middle block always does.
    Heads: set `num_heads` (a fixed head count, SD 1.x) or `num_head_channels` (a fixed head width,
    SD 2.x), the other -1.
    """

    image_size: int = 64
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    dropout: float = 0.0
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_heads: int = 8
    num_head_channels: int = -1
    use_scale_shift_norm: bool = False
    transformer_depth: int = 1
    context_dim: int = 768
    use_linear_in_transformer: bool = False

    def __post_init__(self) -> None:
        for name in ("image_size", "in_channels", "out_channels", "model_channels", "num_res_blocks",
                     "transformer_depth", "context_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"channel_mult must be one or more positive integers, got {list(self.channel_mult)}")
        if self.channel_mult[0] != 1:
            # LDM's output layer takes model_channels inputs: any other first multiplier breaks it
            raise ValueError(f"channel_mult must start with 1, got {list(self.channel_mult)}")
        if self.model_channels % NORM_GROUPS:
            raise ValueError(
                f"model_channels must be a multiple of {NORM_GROUPS} (GroupNorm groups), got {self.model_channels}"
            )
        factors = self.downsampling_factors
        stray = sorted(set(self.attention_resolutions) - set(factors))
        if stray:
            raise ValueError(
                f"attention_resolutions {stray} match no level of this UNet (its factors are {list(factors)})"
            )
        if self.image_size % factors[-1]:
            raise ValueError(
                f"image_size must be a multiple of {factors[-1]} (the deepest downsampling), got {self.image_size}"
            )
        self._check_heads()

    def _check_heads(self) -> None:
        heads = {"num_heads": self.num_heads, "num_head_channels": self.num_head_channels}
        fixed = {name: value for name, value in heads.items() if value != -1}
        if len(fixed) != 1 or min(fixed.values()) < 1:
            raise ValueError(
                "set exactly one of num_heads and num_head_channels to a positive value and the other to -1, "
                f"got num_heads={self.num_heads}, num_head_channels={self.num_head_channels}"
            )
        [(name, divisor)] = fixed.items()
        for channels in self.attention_channels:
            if channels % divisor:
                raise ValueError(f"{channels} attention channels are not divisible by {name}={divisor}")

    @property
    def downsampling_factors(self) -> tuple[int, ...]:
        """The factor by which each level's input is downsampled: (1, 2, 4, ...)."""
        return tuple(2**level for level in range(len(self.channel_mult)))

    @property
    def attention_channels(self) -> list[int]:
        """Channel counts at which a SpatialTransformer runs (the levels that attend, and the middle)."""
        widths = [
            self.model_channels * mult
            for mult, factor in zip(self.channel_mult, self.downsampling_factors)
            if factor in self.attention_resolutions
        ]
        return widths + [self.model_channels * self.channel_mult[-1]]


@register_family(
    "ldm-unet",
    config=LDMUNetConfig,
    description="LDM/CompVis UNet (Stable Diffusion's original layout: time_embed, input_blocks, middle_block, "
    "output_blocks, out)",
)
def build_ldm_unet(config: LDMUNetConfig):
    from .ldm_blocks import LDMUNet

    return LDMUNet(**asdict(config))


def diffusers_config_for(config: LDMUNetConfig) -> DiffusersUNetConfig:
    """The `diffusers-unet` config whose UNet2DConditionModel is this LDM UNet under other names.

    - block_out_channels = model_channels * each channel_mult; layers_per_block = num_res_blocks;
    - a level whose downsampling factor is in attention_resolutions becomes CrossAttnDownBlock2D
      (going down) and CrossAttnUpBlock2D (coming up), any other DownBlock2D / UpBlock2D;
    - attention_head_dim: diffusers (for historical reasons) reads it as the *number of heads*, so
      a fixed `num_heads` maps to that int, and a fixed `num_head_channels` to each level's
      channels // num_head_channels;
    - context_dim -> cross_attention_dim, transformer_depth -> transformer_layers_per_block,
      use_linear_in_transformer -> use_linear_projection, use_scale_shift_norm ->
      resnet_time_scale_shift "scale_shift", image_size -> sample_size (see the module docstring);
    - everything else keeps diffusers' defaults, which are LDM's behaviour: cos-then-sin timestep
      embedding (flip_sin_to_cos, freq_shift 0), SiLU, 32 norm groups, eps 1e-5, padding-1 downsampling.

    Where diffusers' own `create_unet_diffusers_config_from_ldm` reads an LDM YAML, it derives the
    same values (tested); it does not read `use_scale_shift_norm` or `dropout`, which are mapped here.
    """
    attends = [factor in config.attention_resolutions for factor in config.downsampling_factors]
    if config.num_head_channels == -1:
        heads: int | tuple[int, ...] = config.num_heads
    else:
        heads = tuple(config.model_channels * mult // config.num_head_channels for mult in config.channel_mult)
    return DiffusersUNetConfig(
        sample_size=config.image_size,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)),
        block_out_channels=tuple(config.model_channels * mult for mult in config.channel_mult),
        layers_per_block=config.num_res_blocks,
        dropout=config.dropout,
        cross_attention_dim=config.context_dim,
        transformer_layers_per_block=config.transformer_depth,
        attention_head_dim=heads,
        use_linear_projection=config.use_linear_in_transformer,
        resnet_time_scale_shift="scale_shift" if config.use_scale_shift_norm else "default",
    )


def diffusers_state_dict(state_dict: Mapping[str, Any], config: LDMUNetConfig) -> dict[str, Any]:
    """`state_dict` of an `ldm-unet` built with `config` (or any part of it: optimizer moments),
    under diffusers' names (`ldm_names.diffusers_names`).

    Returns the state dict for `UNet2DConditionModel(**diffusers_config_for(config).diffusers_kwargs())`
    holding the same tensor objects (nothing is copied, so meta tensors work too). Raises
    `registry.converters.ConversionError` for a name such a UNet does not have.
    """
    from .converters import LDM_TO_DIFFUSERS

    return LDM_TO_DIFFUSERS.convert_state_dict(state_dict, config)


def make_batch(config: LDMUNetConfig, batch_size: int, generator):
    """A synthetic denoising batch at `image_size` (see `ldm_training.denoising_batch`)."""
    return denoising_batch(
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        size=config.image_size,
        context_dim=config.context_dim,
        batch_size=batch_size,
        generator=generator,
    )


def compute_loss(model, batch):
    """MSE between the model's noise prediction and the noise that was added (a scalar tensor)."""
    return noise_loss(model(batch["sample"], batch["timesteps"], batch["context"]), batch)


extend_family("ldm-unet", make_batch=make_batch, compute_loss=compute_loss)

builtin_variant("ldm-unet", "sd15", "Stable Diffusion 1.5 UNet (860M parameters) in the original LDM layout")
builtin_variant(
    "ldm-unet",
    "tiny",
    "two-level UNet for tests and the demo; the LDM twin of diffusers-unet/tiny",
    image_size=16,
    model_channels=32,
    num_res_blocks=1,
    attention_resolutions=(1,),
    channel_mult=(1, 2),
    context_dim=32,
)
