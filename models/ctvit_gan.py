"""The GAN discriminator of the `ctvit` family and its losses (axis letters: see `ctvit_attention`).

State-dict layout as in CT-CLIP (`discr.*`): `blocks.N` residual conv blocks (`conv_res`, `net.0`,
`net.2`, and `downsample.1` on every block but the last), `attn_blocks.N` a self-attention only
where the input resolution of block N is in `attn_res_layers` (other slots are empty), and
`to_logits.0` conv / `to_logits.3` Linear. Its attention follows `use_rms_norm` and
`use_flash_attention` like every other attention of the model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from einops.layers.torch import Rearrange
from torch import nn

from .ctvit_attention import LEAKY_SLOPE, exists, make_attention


class DiscriminatorBlock(nn.Module):
    """Two 3x3 convolutions with a 1x1 residual path; halves the resolution unless it is the last."""

    def __init__(self, *, dim_in: int, dim_out: int, downsample: bool = True):
        super().__init__()
        self.conv_res = nn.Conv2d(dim_in, dim_out, 1, stride=2 if downsample else 1)
        self.net = nn.Sequential(
            nn.Conv2d(dim_in, dim_out, 3, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(dim_out, dim_out, 3, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE),
        )
        # space-to-depth then a 1x1 conv: a learned stride-2 downsample that drops no pixel
        self.downsample = (
            nn.Sequential(
                Rearrange("b c (h p1) (w p2) -> b (c p1 p2) h w", p1=2, p2=2),
                nn.Conv2d(dim_out * 4, dim_out, 1),
            )
            if downsample
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.conv_res(x)
        x = self.net(x)
        if exists(self.downsample):
            x = self.downsample(x)
        return (x + residual) * (2**-0.5)  # keeps the variance of the sum at that of one branch


class Discriminator(nn.Module):
    """Scores images (b, channels, image_size, image_size); returns logits (b, 1).

    `image_size` must be a power of two: the blocks halve it down to a 4x4 grid.
    """

    def __init__(
        self,
        *,
        image_size: int,
        dim: int,
        channels: int,
        attn_res_layers: tuple[int, ...] = (16,),
        max_dim: int = 512,
        attn_heads: int = 8,
        attn_dim_head: int = 64,
        use_rms_norm: bool = False,
        use_flash_attention: bool = False,
    ):
        super().__init__()
        num_downsamples = int(math.log2(image_size)) - 2
        dims = [channels] + [min(dim * 4 * 2**i, max_dim) for i in range(num_downsamples + 1)]
        self.blocks = nn.ModuleList()
        self.attn_blocks = nn.ModuleList()
        resolution = image_size
        for index, (dim_in, dim_out) in enumerate(zip(dims[:-1], dims[1:])):
            self.blocks.append(DiscriminatorBlock(dim_in=dim_in, dim_out=dim_out, downsample=index < num_downsamples))
            attention = None
            if resolution in attn_res_layers:
                attention = make_attention(
                    dim=dim_out, dim_head=attn_dim_head, heads=attn_heads,
                    use_flash_attention=use_flash_attention, use_rms_norm=use_rms_norm,
                )
            self.attn_blocks.append(attention)  # an empty slot keeps indices aligned with `blocks`
            resolution //= 2
        latent_size = image_size // 2**num_downsamples
        self.to_logits = nn.Sequential(
            nn.Conv2d(dims[-1], dims[-1], 3, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE),
            Rearrange("b ... -> b (...)"),
            nn.Linear(dims[-1] * latent_size**2, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for block, attention in zip(self.blocks, self.attn_blocks):
            x = block(x)
            if exists(attention):
                h, w = x.shape[-2:]
                tokens = rearrange(x, "b d h w -> b (h w) d")
                tokens = attention(tokens) + tokens
                x = rearrange(tokens, "b (h w) d -> b d h w", h=h, w=w)
        return self.to_logits(x)


def hinge_discriminator_loss(fake_logits: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """Hinge loss for the discriminator: real scored above +1, fake below -1."""
    return (F.relu(1 + fake_logits) + F.relu(1 - real_logits)).mean()


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge loss for the generator: raise the discriminator's score of its output."""
    return -fake_logits.mean()
