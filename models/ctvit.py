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
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from einops.layers.torch import Rearrange
from torch import nn

from registry.catalog import builtin_variant
from registry.families import extend_family, register_family

from .ctvit_attention import SPATIAL, TEMPORAL, ContinuousPositionBias, Transformer, exists
from .ctvit_gan import Discriminator, hinge_discriminator_loss, hinge_generator_loss
from .ctvit_quantizer import VectorQuantizer
from .vgg16 import VGG16

# Weights of the GAN-side terms against the reconstruction loss (not part of any layout).
PERCEPTUAL_WEIGHT = 0.1
ADVERSARIAL_WEIGHT = 0.1


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


@dataclass(frozen=True)
class CTViTLosses:
    """The training losses of one batch; the GAN-side terms are None without `use_vgg_and_gan`.

    `discriminator` trains only the discriminator and the other terms only the rest of the model,
    so `total` can go to a single optimizer.
    """

    recon: torch.Tensor
    commit: torch.Tensor
    perceptual: torch.Tensor | None = None
    adversarial: torch.Tensor | None = None
    discriminator: torch.Tensor | None = None

    @property
    def generator(self) -> torch.Tensor:
        """Every term but the discriminator's (for a trainer with a separate discriminator optimizer)."""
        loss = self.recon + self.commit
        if exists(self.perceptual):
            loss = loss + PERCEPTUAL_WEIGHT * self.perceptual + ADVERSARIAL_WEIGHT * self.adversarial
        return loss

    @property
    def total(self) -> torch.Tensor:
        return self.generator + self.discriminator if exists(self.discriminator) else self.generator


class CTViT(nn.Module):
    """CT-CLIP's CTViT. Keyword arguments and defaults are `CTViTConfig`'s (invalid ones raise ValueError).

    Frames: a volume whose frame count is a multiple of `temporal_patch_size` is patched as a
    whole (CT-CLIP's convention, how its checkpoints were trained); one with one frame more (and
    `temporal_patch_size` > 1) has its first frame embedded and decoded on its own by the
    `*_first_frame` heads (phenaki's convention, so those heads train too). The attentions'
    `context_norm` never sees an input (no cross-attention): it exists for CT-CLIP's layout, so a
    DDP trainer of the baseline attention needs `find_unused_parameters=True`.
    """

    def __init__(
        self,
        *,
        dim: int = 512,
        codebook_size: int = 8192,
        image_size: int = 480,
        patch_size: int = 20,
        temporal_patch_size: int = 10,
        spatial_depth: int = 4,
        temporal_depth: int = 4,
        dim_head: int = 32,
        heads: int = 8,
        channels: int = 1,
        use_rms_norm: bool = False,
        use_swiglu: bool = False,
        use_flash_attention: bool = False,
        with_decoder: bool = True,
        use_vgg_and_gan: bool = False,
        discr_image_size: int = 256,
        discr_base_dim: int = 16,
        discr_attn_res_layers: tuple[int, ...] = (16,),
        vgg_base_dim: int = 64,
        vgg_hidden_dim: int = 4096,
    ):
        super().__init__()
        # validated by the config, so the constructor and `CTViTConfig` refuse the same values
        arguments = dict(locals())
        self.config = CTViTConfig(**{f.name: arguments[f.name] for f in dataclasses.fields(CTViTConfig)})
        self.image_size, self.channels = image_size, channels
        self.temporal_patch_size = temporal_patch_size
        self.with_decoder, self.use_vgg_and_gan = with_decoder, use_vgg_and_gan
        patch = dict(p1=patch_size, p2=patch_size)
        frame_patch_dim = channels * patch_size**2
        patch_dim = frame_patch_dim * temporal_patch_size

        self.spatial_rel_pos_bias = ContinuousPositionBias(dim=dim, heads=heads)
        # index .0 is the stateless patching, so the norms and Linear sit at CT-CLIP's .1-.3
        self.to_patch_emb_first_frame = nn.Sequential(
            Rearrange("b c 1 (h p1) (w p2) -> b 1 h w (c p1 p2)", **patch),
            nn.LayerNorm(frame_patch_dim),
            nn.Linear(frame_patch_dim, dim),
            nn.LayerNorm(dim),
        )
        self.to_patch_emb = nn.Sequential(
            Rearrange("b c (t pt) (h p1) (w p2) -> b t h w (c pt p1 p2)", pt=temporal_patch_size, **patch),
            nn.LayerNorm(patch_dim),
            nn.Linear(patch_dim, dim),
            nn.LayerNorm(dim),
        )

        transformer = dict(
            dim=dim, dim_head=dim_head, heads=heads, peg_causal=True, use_rms_norm=use_rms_norm,
            use_swiglu=use_swiglu, use_flash_attention=use_flash_attention,
        )
        self.enc_spatial_transformer = Transformer(depth=spatial_depth, **transformer)
        self.enc_temporal_transformer = Transformer(depth=temporal_depth, **transformer)
        self.vq = VectorQuantizer(dim=dim, codebook_size=codebook_size)
        if with_decoder:
            self.dec_spatial_transformer = Transformer(depth=spatial_depth, **transformer)
            self.dec_temporal_transformer = Transformer(depth=temporal_depth, **transformer)

        self.to_pixels_first_frame = nn.Sequential(
            nn.Linear(dim, frame_patch_dim),
            Rearrange("b 1 h w (c p1 p2) -> b c 1 (h p1) (w p2)", **patch),
        )
        self.to_pixels = nn.Sequential(
            nn.Linear(dim, patch_dim),
            Rearrange("b t h w (c pt p1 p2) -> b c (t pt) (h p1) (w p2)", pt=temporal_patch_size, **patch),
        )

        if use_vgg_and_gan:
            # a fixed feature extractor for the perceptual loss: no gradient, dropout off (see train)
            self.vgg = VGG16(base_dim=vgg_base_dim, hidden_dim=vgg_hidden_dim).requires_grad_(False)
            self.discr = Discriminator(
                image_size=discr_image_size, dim=discr_base_dim, channels=channels,
                attn_res_layers=discr_attn_res_layers, use_rms_norm=use_rms_norm,
                use_flash_attention=use_flash_attention,
            )

    @classmethod
    def from_config(cls, config: CTViTConfig) -> "CTViT":
        return cls(**config_kwargs(config))

    def train(self, mode: bool = True) -> "CTViT":
        super().train(mode)
        if self.use_vgg_and_gan:
            self.vgg.eval()
        return self

    # --- tokens -----------------------------------------------------------------------------

    def patch_embed(self, video: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Tokens (b, t, h, w, d) of `video`, and whether its first frame was embedded on its own."""
        if video.ndim != 5:
            raise ValueError(f"expected a video (b, c, frames, height, width), got shape {tuple(video.shape)}")
        _, channels, frames, height, width = video.shape
        if channels != self.channels or height != self.image_size or width != self.image_size:
            raise ValueError(
                f"expected {self.channels} channel(s) of {self.image_size}x{self.image_size}, "
                f"got {channels} of {height}x{width}"
            )
        pt = self.temporal_patch_size
        if frames % pt == 0:
            return self.to_patch_emb(video), False
        if pt > 1 and frames % pt == 1:
            first = self.to_patch_emb_first_frame(video[:, :, :1])
            if frames == 1:
                return first, True
            return torch.cat((first, self.to_patch_emb(video[:, :, 1:])), dim=1), True
        raise ValueError(f"frames ({frames}) must be a multiple of temporal_patch_size ({pt}), or one more")

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encoder transformers over (b, t, h, w, d) tokens: spatial within frames, then temporal."""
        b, t, h, w, _ = tokens.shape
        video_shape = (b, t, h, w)
        x = rearrange(tokens, "b t h w d -> (b t) (h w) d")
        x = self.enc_spatial_transformer(
            x, video_shape=video_shape, layout=SPATIAL, attn_bias=self.spatial_rel_pos_bias(h, w)
        )
        x = rearrange(x, "(b t) (h w) d -> (b h w) t d", b=b, h=h, w=w)
        x = self.enc_temporal_transformer(x, video_shape=video_shape, layout=TEMPORAL)
        return rearrange(x, "(b h w) t d -> b t h w d", b=b, h=h, w=w)

    def quantize(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantized tokens (b, t, h, w, d), code indices (b, t, h, w) and the commitment loss."""
        b, t, h, w, _ = tokens.shape
        quantized, indices, commit_loss = self.vq(rearrange(tokens, "b t h w d -> b (t h w) d"))
        grid = dict(t=t, h=h, w=w)
        return (
            rearrange(quantized, "b (t h w) d -> b t h w d", **grid),
            rearrange(indices, "b (t h w) -> b t h w", **grid),
            commit_loss,
        )

    def decode(self, tokens: torch.Tensor, *, separate_first_frame: bool = False) -> torch.Tensor:
        """Pixels (b, c, frames, H, W) from quantized tokens (b, t, h, w, d).

        Without a decoder the tokens go straight to the pixel heads.
        """
        if self.with_decoder:
            b, t, h, w, _ = tokens.shape
            video_shape = (b, t, h, w)
            x = rearrange(tokens, "b t h w d -> (b h w) t d")
            x = self.dec_temporal_transformer(x, video_shape=video_shape, layout=TEMPORAL)
            x = rearrange(x, "(b h w) t d -> (b t) (h w) d", b=b, h=h, w=w)
            x = self.dec_spatial_transformer(
                x, video_shape=video_shape, layout=SPATIAL, attn_bias=self.spatial_rel_pos_bias(h, w)
            )
            tokens = rearrange(x, "(b t) (h w) d -> b t h w d", b=b, h=h, w=w)
        if not separate_first_frame:
            return self.to_pixels(tokens)
        first = self.to_pixels_first_frame(tokens[:, :1])
        if tokens.shape[1] == 1:
            return first
        return torch.cat((first, self.to_pixels(tokens[:, 1:])), dim=2)

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """Quantized tokens (b, t, h, w, d): what CT-CLIP's CLIP head consumes."""
        tokens, _ = self.patch_embed(video)
        quantized, _, _ = self.quantize(self.encode(tokens))
        return quantized

    def _reconstruct(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, separate_first = self.patch_embed(video)
        quantized, _, commit_loss = self.quantize(self.encode(tokens))
        return self.decode(quantized, separate_first_frame=separate_first), commit_loss

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """The reconstruction of `video`, same shape."""
        recon, _ = self._reconstruct(video)
        return recon

    # --- training ---------------------------------------------------------------------------

    def losses(self, video: torch.Tensor) -> CTViTLosses:
        """Reconstruction (MSE) and commitment losses; with `use_vgg_and_gan` also perceptual,
        adversarial and discriminator (hinge) losses on one random frame per volume."""
        recon, commit_loss = self._reconstruct(video)
        recon_loss = F.mse_loss(recon, video)
        if not self.use_vgg_and_gan:
            return CTViTLosses(recon=recon_loss, commit=commit_loss)

        real, fake = self._gan_frames(video, recon)
        with torch.no_grad():
            real_features = self.vgg(self._rgb(real))
        perceptual = F.mse_loss(self.vgg(self._rgb(fake)), real_features)
        # the generator's adversarial gradient must not train the discriminator: detached weights
        frozen = {name: p.detach() for name, p in self.discr.named_parameters()}
        adversarial = hinge_generator_loss(torch.func.functional_call(self.discr, frozen, (fake,)))
        discriminator = hinge_discriminator_loss(self.discr(fake.detach()), self.discr(real))
        return CTViTLosses(recon_loss, commit_loss, perceptual, adversarial, discriminator)

    def _gan_frames(self, video: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, frames = video.shape[:3]
        pick = torch.randint(frames, (b,), device=video.device)
        batch = torch.arange(b, device=video.device)
        real, fake = video[batch, :, pick], recon[batch, :, pick]  # (b, c, H, W)
        size = self.config.discr_image_size
        if real.shape[-1] != size:
            real, fake = (F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False) for x in (real, fake))
        return real, fake

    def _rgb(self, images: torch.Tensor) -> torch.Tensor:
        return repeat(images, "b 1 h w -> b c h w", c=3) if images.shape[1] == 1 else images


# --- the family -------------------------------------------------------------------------------


@register_family(
    "ctvit",
    config=CTViTConfig,
    description="CT-CLIP's CTViT video/CT-volume tokenizer (spatial+temporal transformers, cosine VQ, optional decoder and VGG/GAN)",
)
def build(config: CTViTConfig) -> CTViT:
    return CTViT.from_config(config)


def make_batch(config: CTViTConfig, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Smooth random volumes (b, channels, 1 + 2·temporal_patch_size, image_size, image_size) in [-1, 1].

    Low-frequency noise, upsampled, so a model can actually learn to reconstruct it; the extra first
    frame makes the first-frame heads take part, so they train too.
    """
    frames = 1 + 2 * config.temporal_patch_size if config.temporal_patch_size > 1 else 2
    coarse = torch.randn(batch_size, config.channels, frames, 4, 4, generator=generator, device=generator.device)
    video = F.interpolate(coarse, size=(frames, config.image_size, config.image_size), mode="trilinear")
    return torch.tanh(video)


def compute_loss(model: CTViT, batch: torch.Tensor) -> torch.Tensor:
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
