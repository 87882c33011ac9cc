"""The `ctvit` family: CT-CLIP's CTViT, a video/CT-volume tokenizer (axis letters: `ctvit_attention`).

A volume (b, c, frames, image_size, image_size) is cut into patches of temporal_patch_size x
patch_size x patch_size, embedded, run through a spatial then a temporal transformer, and
quantized with a cosine-similarity codebook; the decoder mirrors the encoder and projects tokens
back to pixels. With `with_decoder=False` (CT-CLIP's current layout) the quantized tokens go
straight to the pixel heads.

With every flag False the state dict reproduces CT-CLIP's exactly (`shared/reference/*.tsv`):
`ctvit_ctclip_main.tsv` with `with_decoder=False`, `ctvit_ctclip_seed.tsv` with the decoder, and
`ctvit_ctclip_seed_vgg_gan.tsv` with the decoder and `use_vgg_and_gan`. The other flags change
layouts (`use_rms_norm`, `use_flash_attention`) or only module classes (`use_swiglu`); which
modules each flag covers is listed in `ctvit_attention`.

The torch module itself lives in `ctvit_network` and is imported only by `build` (and by
`from registry.models.ctvit import CTViT`), so listing families does not import torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from registry.catalog import builtin_variant
from registry.families import extend_family, register_family

if TYPE_CHECKING:
    from .ctvit_network import CTViT


@dataclass(frozen=True)
class CTViTConfig:
    """CTViT hyper-parameters; the defaults are CT-CLIP v2's, with every layout flag off.

    The `discr_*` and `vgg_*` fields only matter with `use_vgg_and_gan`. Their defaults are
    CT-CLIP's (its discriminator scores 256x256 frames, resized from the volume's); the `vgg_*`
    widths exist so tiny test models need not carry a 134M-parameter VGG16.
    """

    dim: int = 512
    codebook_size: int = 8192
    image_size: int = 480
    patch_size: int = 20
    temporal_patch_size: int = 10
    spatial_depth: int = 4
    temporal_depth: int = 4
    dim_head: int = 32
    heads: int = 8
    channels: int = 1
    use_rms_norm: bool = False
    use_swiglu: bool = False
    use_flash_attention: bool = False
    with_decoder: bool = True
    use_vgg_and_gan: bool = False
    discr_image_size: int = 256
    discr_base_dim: int = 16
    discr_attn_res_layers: tuple[int, ...] = (16,)
    vgg_base_dim: int = 64
    vgg_hidden_dim: int = 4096

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type in ("int", int) and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"{field.name} must be an integer, got {value!r}")
            if field.type in ("bool", bool) and not isinstance(value, bool):
                raise ValueError(f"{field.name} must be true or false, got {value!r}")
            if field.type in ("int", int) and value < 1:
                raise ValueError(f"{field.name} must be at least 1, got {value}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size})")
        size = self.discr_image_size
        if size < 8 or size & (size - 1):
            raise ValueError(f"discr_image_size must be a power of two of at least 8, got {size}")
        if not all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in self.discr_attn_res_layers):
            raise ValueError(f"discr_attn_res_layers must hold positive integers, got {self.discr_attn_res_layers!r}")
        if self.use_vgg_and_gan and self.channels not in (1, 3):
            raise ValueError(f"use_vgg_and_gan needs channels 1 or 3 (VGG16 sees RGB), got {self.channels}")


def config_kwargs(config: CTViTConfig) -> dict:
    """The config's fields as keyword arguments of `CTViT`."""
    return {field.name: getattr(config, field.name) for field in dataclasses.fields(config)}


# --- the family -------------------------------------------------------------------------------


@register_family(
    "ctvit",
    config=CTViTConfig,
    description="CT-CLIP's CTViT video/CT-volume tokenizer (spatial+temporal transformers, cosine VQ, optional decoder and VGG/GAN)",
)
def build(config: CTViTConfig) -> CTViT:
    """The family's build hook: a freshly initialised `CTViT` of `config`."""
    from .ctvit_network import CTViT

    return CTViT.from_config(config)


def __getattr__(name: str) -> Any:
    # `from registry.models.ctvit import CTViT` keeps working; torch is imported only then
    if name == "CTViT":
        from .ctvit_network import CTViT

        return CTViT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_batch(config: CTViTConfig, batch_size: int, generator: Any) -> Any:
    """Smooth random volumes (b, channels, 1 + 2·temporal_patch_size, image_size, image_size) in [-1, 1].

    Low-frequency noise, upsampled, so a model can actually learn to reconstruct it; the extra first
    frame makes the first-frame heads take part, so they train too.
    """
    import torch
    import torch.nn.functional as F

    frames = 1 + 2 * config.temporal_patch_size if config.temporal_patch_size > 1 else 2
    coarse = torch.randn(batch_size, config.channels, frames, 4, 4, generator=generator, device=generator.device)
    video = F.interpolate(coarse, size=(frames, config.image_size, config.image_size), mode="trilinear")
    return torch.tanh(video)


def compute_loss(model: CTViT, batch: Any) -> Any:
    """The scalar training loss of `batch` (`CTViTLosses.total`)."""
    return model.losses(batch).total


extend_family("ctvit", make_batch=make_batch, compute_loss=compute_loss)


# --- built-in variants ------------------------------------------------------------------------

builtin_variant(
    "ctvit", "ctclip-v2",
    "CT-CLIP v2's released CTViT: CT-CLIP main layout (encoder + vq, no decoder transformers)",
    with_decoder=False,
)
builtin_variant("ctvit", "baseline", "CTViT as CT-CLIP first published it (2024-02): LayerNorm, GEGLU, Attention, decoder")
builtin_variant("ctvit", "baseline-gan", "baseline with the VGG16 perceptual net and GAN discriminator", use_vgg_and_gan=True)
builtin_variant("ctvit", "baseline-rmsnorm", "baseline with RMSNorm in every transformer norm", use_rms_norm=True)
builtin_variant("ctvit", "baseline-swiglu", "baseline with SwiGLU feed-forwards (same schema as baseline)", use_swiglu=True)
builtin_variant("ctvit", "baseline-flash", "baseline with FlashAttentionQKV (fused to_qkv)", use_flash_attention=True)
builtin_variant("ctvit", "rmsnorm-swiglu", "RMSNorm and SwiGLU, baseline attention", use_rms_norm=True, use_swiglu=True)
builtin_variant(
    "ctvit", "optimized", "RMSNorm, SwiGLU and FlashAttentionQKV",
    use_rms_norm=True, use_swiglu=True, use_flash_attention=True,
)

# Tiny models for tests and the demo: a training step takes milliseconds on a CPU.
TINY = dict(
    dim=32, codebook_size=64, image_size=32, patch_size=8, temporal_patch_size=2, spatial_depth=1,
    temporal_depth=1, dim_head=8, heads=2, discr_image_size=32, discr_base_dim=4, vgg_base_dim=4,
    vgg_hidden_dim=32,
)
builtin_variant("ctvit", "tiny", "tiny baseline (decoder on) for tests and the demo", **TINY)
builtin_variant("ctvit", "tiny-rmsnorm", "tiny with RMSNorm", **TINY, use_rms_norm=True)
builtin_variant("ctvit", "tiny-swiglu", "tiny with SwiGLU (same schema as tiny)", **TINY, use_swiglu=True)
builtin_variant(
    "ctvit", "tiny-optimized", "tiny with RMSNorm, SwiGLU and FlashAttentionQKV",
    **TINY, use_rms_norm=True, use_swiglu=True, use_flash_attention=True,
)
builtin_variant("ctvit", "tiny-ctclip", "tiny in CT-CLIP's main layout (no decoder transformers)", **TINY, with_decoder=False)
