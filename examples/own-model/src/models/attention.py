"""Attention and feed-forward blocks of the video transformer.

The baseline normalises with a LayerNorm holding a learned `gamma` and a fixed `beta` buffer; the
optimized model uses RMSNorm (one `weight`). Checkpoints of one do not load into the other, so
every block must honour `use_rms_norm` (the first incident: one class ignored it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class LayerNorm(nn.Module):
    """LayerNorm with a learned scale (`gamma`) and a zero shift kept as a buffer (`beta`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta)


def norm_class(use_rms_norm: bool) -> type[nn.Module]:
    return nn.RMSNorm if use_rms_norm else LayerNorm


class Attention(nn.Module):
    """Pre-norm multi-head self-attention. Axes: b batch, n tokens, h heads, d head dimension."""

    def __init__(self, dim: int, *, heads: int, dim_head: int, use_rms_norm: bool = False):
        super().__init__()
        self.heads = heads
        self.norm = norm_class(use_rms_norm)(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class GEGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return x * F.gelu(gate)


class SwiGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return x * F.silu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, *, mult: int = 4, use_rms_norm: bool = False, use_swiglu: bool = False):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(
            norm_class(use_rms_norm)(dim),
            nn.Linear(dim, inner * 2, bias=False),
            SwiGLU() if use_swiglu else GEGLU(),
            nn.Linear(inner, dim, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Transformer(nn.Module):
    def __init__(self, dim: int, *, depth: int, heads: int, dim_head: int, use_rms_norm: bool = False,
                 use_swiglu: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([
                Attention(dim, heads=heads, dim_head=dim_head, use_rms_norm=use_rms_norm),
                FeedForward(dim, use_rms_norm=use_rms_norm, use_swiglu=use_swiglu),
            ])
            for _ in range(depth)
        )
        self.norm_out = norm_class(use_rms_norm)(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attention, feed_forward in self.layers:
            x = x + attention(x)
            x = x + feed_forward(x)
        return self.norm_out(x)
