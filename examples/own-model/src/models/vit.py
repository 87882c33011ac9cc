"""A small video transformer that reconstructs its input (a stand-in for a CTViT encoder)."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from .attention import Transformer


class VideoViT(nn.Module):
    """Patchify a clip, run a transformer over space-time patches, predict the patches back.

    Axes: b batch, c channels, t frames, (h p1) (w p2) image rows/columns in patches of p1 x p2.
    """

    def __init__(self, *, dim: int = 64, depth: int = 2, heads: int = 4, dim_head: int = 16,
                 image_size: int = 16, patch_size: int = 4, frames: int = 2, channels: int = 1,
                 use_rms_norm: bool = False, use_swiglu: bool = False):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.patch_size = patch_size
        patch_dim = channels * patch_size * patch_size
        patches = frames * (image_size // patch_size) ** 2
        self.to_tokens = nn.Linear(patch_dim, dim)
        self.position = nn.Parameter(torch.randn(patches, dim) * 0.02)
        self.transformer = Transformer(dim, depth=depth, heads=heads, dim_head=dim_head,
                                       use_rms_norm=use_rms_norm, use_swiglu=use_swiglu)
        self.to_patches = nn.Linear(dim, patch_dim)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        tokens = rearrange(video, "b c t (h p1) (w p2) -> b (t h w) (c p1 p2)", p1=p, p2=p)
        x = self.transformer(self.to_tokens(tokens) + self.position)
        return self.to_patches(x), tokens
