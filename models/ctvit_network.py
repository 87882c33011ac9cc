"""The `ctvit` family's network: CT-CLIP's CTViT as a torch module (the family is `ctvit`).

Kept apart from `ctvit` (config, family and variants) so that loading the families, which every
command does, imports neither torch nor einops: only `ctvit.build` imports this module.
"""

from __future__ import annotations

import dataclasses

import torch
from einops import rearrange, repeat
from einops.layers.torch import Rearrange
from torch import nn

from .ctvit import CTViTConfig, config_kwargs
from .ctvit_attention import ContinuousPositionBias, Transformer, exists
from .ctvit_gan import Discriminator
from .ctvit_losses import CTViTLosses, ctclip_loss, project_losses
from .ctvit_quantizer import VectorQuantizer
from .vgg16 import VGG16


class CTViT(nn.Module):
    """CT-CLIP's CTViT. Keyword arguments and defaults are `CTViTConfig`'s (invalid ones raise ValueError).

    Function: with every flag off, CT-CLIP's own (checked against outputs of its code,
    `tests/test_ctvit_reference.py`); `forward` takes CT-CLIP's arguments with their meaning, so
    code written for CT-CLIP's CTViT runs on this one unchanged. `losses` is this project's
    trainer objective.

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
        else:
            self.vgg = self.discr = None  # as CT-CLIP's (its trainer tests `exists(vae.discr)`)

    @classmethod
    def from_config(cls, config: CTViTConfig) -> "CTViT":
        """The model `config` describes."""
        return cls(**config_kwargs(config))

    def train(self, mode: bool = True) -> "CTViT":
        """`nn.Module.train`, except that the VGG16 feature extractor stays in eval mode; returns self."""
        super().train(mode)
        if self.use_vgg_and_gan:
            self.vgg.eval()
        return self

    @property
    def patch_height_width(self) -> tuple[int, int]:
        """The token grid (h, w) of one frame (CT-CLIP's property)."""
        return (self.image_size // self.config.patch_size,) * 2

    @property
    def image_num_tokens(self) -> int:
        """Tokens per token frame (CT-CLIP's property)."""
        return self.patch_height_width[0] * self.patch_height_width[1]

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

    def token_mask(self, mask: torch.Tensor, grid: tuple[int, int, int], separate_first_frame: bool) -> torch.Tensor:
        """Per-token mask (b, t·h·w) from a per-frame `mask` (b, frames): a token counts if any of
        its frames does (CT-CLIP's rule, with the frame grouping `patch_embed` used)."""
        t, h, w = grid
        first, rest = (mask[:, :1], mask[:, 1:]) if separate_first_frame else (mask[:, :0], mask)
        frames = torch.cat((first, rearrange(rest, "b (t pt) -> b t pt", pt=self.temporal_patch_size).any(dim=-1)), dim=1)
        return repeat(frames, "b t -> b (t hw)", hw=h * w)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encoder transformers over (b, t, h, w, d) tokens: spatial within frames, then temporal."""
        b, t, h, w, _ = tokens.shape
        video_shape = (b, t, h, w)
        x = rearrange(tokens, "b t h w d -> (b t) (h w) d")
        x = self.enc_spatial_transformer(x, video_shape=video_shape, attn_bias=self.spatial_rel_pos_bias(h, w))
        x = rearrange(x, "(b t) (h w) d -> (b h w) t d", b=b, h=h, w=w)
        x = self.enc_temporal_transformer(x, video_shape=video_shape)
        return rearrange(x, "(b h w) t d -> b t h w d", b=b, h=h, w=w)

    def quantize(
        self, tokens: torch.Tensor, *, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantized tokens (b, t, h, w, d), code indices (b, t, h, w) and the commitment loss [1]
        (over the tokens where `mask` (b, t·h·w) is True; see `VectorQuantizer`)."""
        b, t, h, w, _ = tokens.shape
        quantized, indices, commit_loss = self.vq(rearrange(tokens, "b t h w d -> b (t h w) d"), mask=mask)
        grid = dict(t=t, h=h, w=w)
        return (
            rearrange(quantized, "b (t h w) d -> b t h w d", **grid),
            rearrange(indices, "b (t h w) -> b t h w", **grid),
            commit_loss,
        )

    def decode(self, tokens: torch.Tensor, *, separate_first_frame: bool = False) -> torch.Tensor:
        """Pixels (b, c, frames, H, W) from quantized tokens (b, t, h, w, d) or (b, t·h·w, d).

        With the decoder (CT-CLIP's 2024-02 layout, phenaki's CViViT): the temporal then the
        spatial decoder transformer, then the pixel heads. Without it (CT-CLIP's current layout)
        the tokens go straight to the pixel heads. `separate_first_frame` decodes token frame 0
        with `to_pixels_first_frame` into one frame (phenaki's convention; CT-CLIP's code never does).
        """
        h, w = self.patch_height_width
        if tokens.ndim == 3:
            tokens = rearrange(tokens, "b (t h w) d -> b t h w d", h=h, w=w)
        if self.with_decoder:
            b, t, h, w, _ = tokens.shape
            video_shape = (b, t, h, w)
            x = rearrange(tokens, "b t h w d -> (b h w) t d")
            x = self.dec_temporal_transformer(x, video_shape=video_shape)
            x = rearrange(x, "(b h w) t d -> (b t) (h w) d", b=b, h=h, w=w)
            x = self.dec_spatial_transformer(x, video_shape=video_shape, attn_bias=self.spatial_rel_pos_bias(h, w))
            tokens = rearrange(x, "(b t) (h w) d -> b t h w d", b=b, h=h, w=w)
        if not separate_first_frame:
            return self.to_pixels(tokens)
        first = self.to_pixels_first_frame(tokens[:, :1])
        if tokens.shape[1] == 1:
            return first
        return torch.cat((first, self.to_pixels(tokens[:, 1:])), dim=2)

    def decode_from_codebook_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Pixels from code indices (b, t, h, w) or (b, t·h·w), as CT-CLIP's method of that name."""
        return self.decode(self.vq.codebook[indices])

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """Quantized tokens (b, t, h, w, d): what CT-CLIP's CLIP head consumes."""
        return self(video, return_encoded_tokens=True)

    def forward(
        self,
        video: torch.Tensor,
        mask: torch.Tensor | None = None,
        return_recons: bool = False,
        return_recons_only: bool = False,
        return_discr_loss: bool = False,
        apply_grad_penalty: bool = True,
        return_only_codebook_ids: bool = False,
        return_encoded_tokens: bool = False,
    ):
        """CT-CLIP's `CTViT.forward`: same arguments, same meaning, same order.

        `video` is (b, c, frames, H, W), or (b, c, H, W) for one image. Returns, by the first
        keyword that applies: `return_only_codebook_ids` the code ids (b, t, h, w);
        `return_encoded_tokens` the quantized tokens (b, t, h, w, d); `return_recons_only` the
        reconstruction (shaped as `video`); otherwise the loss CT-CLIP computes (`ctclip_loss`:
        the reconstruction MSE without VGG/GAN, the discriminator's loss with `return_discr_loss`),
        as `(loss, reconstruction)` with `return_recons`. `mask` (b, frames) marks the real frames
        of padded volumes. Raises ValueError for a video of the wrong shape or a mask on an image.
        """
        is_image = video.ndim == 4
        if is_image:
            if exists(mask):
                raise ValueError("a mask selects frames: it needs a video, not an image")
            video = rearrange(video, "b c h w -> b c 1 h w")
        tokens, separate_first = self.patch_embed(video)
        if exists(mask) and mask.shape != video.shape[:1] + video.shape[2:3]:
            raise ValueError(f"mask must be (batch, frames) = {tuple(video.shape[:1] + video.shape[2:3])}, got {tuple(mask.shape)}")
        token_mask = self.token_mask(mask, tokens.shape[1:4], separate_first) if exists(mask) else None
        quantized, ids, commit_loss = self.quantize(self.encode(tokens), mask=token_mask)
        if return_only_codebook_ids:
            return ids
        if return_encoded_tokens:
            return quantized
        recon = self.decode(quantized, separate_first_frame=separate_first)
        returned = rearrange(recon, "b c 1 h w -> b c h w") if is_image else recon
        if return_recons_only:
            return returned
        loss = ctclip_loss(self, video, recon, commit_loss, mask=mask, return_discr_loss=return_discr_loss,
                           apply_grad_penalty=apply_grad_penalty)
        return (loss, returned) if return_recons else loss

    # --- training ---------------------------------------------------------------------------

    def losses(self, video: torch.Tensor) -> CTViTLosses:
        """This project's training objective (`project_losses`): reconstruction (MSE) and
        commitment losses; with `use_vgg_and_gan` also perceptual, adversarial and discriminator
        (hinge) losses on one random frame per volume."""
        tokens, separate_first = self.patch_embed(video)
        quantized, _, commit_loss = self.quantize(self.encode(tokens))
        recon = self.decode(quantized, separate_first_frame=separate_first)
        return project_losses(self, video, recon, commit_loss)


# The class's public home stays `registry.models.ctvit`: module signatures recorded in registries
# name the root module `registry.models.ctvit.CTViT`, and a new name there would read as drift.
# (`ctvit.__getattr__` serves the name, so pickles and imports by that path keep working.)
CTViT.__module__ = "registry.models.ctvit"
