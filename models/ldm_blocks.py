"""The modules of the LDM-style UNet, with the tensor names of CompVis/Stable-Diffusion checkpoints.

The names are the contract: `input_blocks.1.0.in_layers.2.weight` must be where an LDM checkpoint
keeps that tensor, so diffusers' converter and users' old checkpoints line up. That is why the
`nn.Sequential`s keep LDM's parameter-free layers (SiLU, Dropout): they fix the indices of the
layers that hold weights (`in_layers.2`, `out_layers.3`, `time_embed.2`, `out.2`).

Layout of `LDMUNet`, `L` = len(channel_mult), `R` = num_res_blocks:
- `input_blocks.0` is the input convolution; then per level `R` blocks of
  [ResBlock, SpatialTransformer if the level attends], then a [Downsample] block (not after the last level);
- `middle_block` is [ResBlock, SpatialTransformer, ResBlock];
- `output_blocks` go back up: per level `R + 1` blocks of [ResBlock, SpatialTransformer?, Upsample?],
  each ResBlock taking the concatenation of the running features and one skip from the way down.

Einops axis letters: b batch, c channels, x y spatial positions, n tokens, h heads, d head width.

Torch is imported here, not in `ldm_unet`, so listing families stays fast.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def exists(value) -> bool:
    return value is not None


def default(value, fallback):
    return value if exists(value) else fallback


def zero_module(module: nn.Module) -> nn.Module:
    """`module` with every parameter zeroed (LDM starts residual branches and the output at zero)."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


def group_norm(channels: int, eps: float = 1e-5) -> nn.GroupNorm:
    # LDM normalizes everything with 32 groups; the config checks that channels allow it.
    return nn.GroupNorm(32, channels, eps=eps)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embeddings of shape (b, dim): cosines, then sines (zero-padded if dim is odd).

    The frequencies are computed in the same order of operations as diffusers' `Timesteps`
    (flip_sin_to_cos=True, freq_shift=0): angles reach ~1000 rad, where a one-ulp difference in a
    frequency would already cost ~1e-4 after sin/cos.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    angles = timesteps[:, None].float() * torch.exp(exponent / half)[None, :]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return F.pad(embedding, (0, dim % 2))


def attention_heads(channels: int, num_heads: int, num_head_channels: int) -> tuple[int, int]:
    """(heads, head width) at `channels`: LDM fixes either the head count or, if it is -1, the width."""
    if num_head_channels == -1:
        return num_heads, channels // num_heads
    return channels // num_head_channels, num_head_channels


class ResBlock(nn.Module):
    """Two 3x3 convolutions with the timestep embedding added in between, plus a skip path."""

    def __init__(
        self,
        *,
        channels: int,
        emb_channels: int,
        out_channels: int | None = None,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = False,
    ):
        super().__init__()
        out_channels = default(out_channels, channels)
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            group_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        # scale-shift conditioning needs a scale and a shift per channel, hence twice the width
        emb_width = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_width))
        self.out_layers = nn.Sequential(
            group_norm(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb)[:, :, None, None]
        norm, rest = self.out_layers[0], self.out_layers[1:]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = norm(h) * (1 + scale) + shift
        else:
            h = norm(h + emb_out)
        return self.skip_connection(x) + rest(h)


class CrossAttention(nn.Module):
    """Multi-head attention of `x` over `context` (over `x` itself when no context is given)."""

    def __init__(self, *, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None):
        super().__init__()
        inner = heads * dim_head
        context_dim = default(context_dim, query_dim)
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = default(context, x)
        q, k, v = (
            rearrange(t, "b n (h d) -> b h n d", h=self.heads)
            for t in (self.to_q(x), self.to_k(context), self.to_v(context))
        )
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class GEGLU(nn.Module):
    """Linear to twice the width; one half gated by the GELU of the other."""

    def __init__(self, *, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, *, dim: int, mult: int = 4):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim_in=dim, dim_out=inner), nn.Dropout(0.0), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention over the context, then a GEGLU feed-forward."""

    def __init__(self, *, dim: int, heads: int, dim_head: int, context_dim: int):
        super().__init__()
        self.attn1 = CrossAttention(query_dim=dim, heads=heads, dim_head=dim_head)
        self.ff = FeedForward(dim=dim)
        self.attn2 = CrossAttention(query_dim=dim, heads=heads, dim_head=dim_head, context_dim=context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Transformer blocks over the pixels of a feature map, conditioned on `context`, residual."""

    def __init__(
        self,
        *,
        channels: int,
        heads: int,
        dim_head: int,
        depth: int,
        context_dim: int,
        use_linear: bool = False,
    ):
        super().__init__()
        inner = heads * dim_head
        # Stable Diffusion 1.x projects with 1x1 convolutions, 2.x with Linear layers (same weights
        # up to the two trailing 1x1 dimensions, but different checkpoint shapes).
        project = nn.Linear if use_linear else partial(nn.Conv2d, kernel_size=1)
        self.use_linear = use_linear
        self.norm = group_norm(channels, eps=1e-6)
        self.proj_in = project(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(dim=inner, heads=heads, dim_head=dim_head, context_dim=context_dim)
            for _ in range(depth)
        )
        self.proj_out = zero_module(project(inner, channels))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        h = self.norm(x)
        if not self.use_linear:
            h = self.proj_in(h)
        h = rearrange(h, "b c x y -> b (x y) c")
        if self.use_linear:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.use_linear:
            h = self.proj_out(h)
        h = rearrange(h, "b (x y) c -> b c x y", x=height, y=width)
        if not self.use_linear:
            h = self.proj_out(h)
        return h + x


class Downsample(nn.Module):
    """Halves the resolution with a strided 3x3 convolution (`op`)."""

    def __init__(self, *, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Doubles the resolution (nearest neighbour), then a 3x3 convolution (`conv`)."""

    def __init__(self, *, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """A sequence that hands the timestep embedding to ResBlocks and the context to transformers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class LDMUNet(nn.Module):
    """The text-conditioned UNet of latent diffusion (Stable Diffusion 1.x/2.x), LDM key names.

    `forward(x, timesteps, context)` returns the noise prediction, shaped like `x` with
    `out_channels` channels. `image_size` is recorded, not used: the UNet runs at any size
    divisible by 2 ** (len(channel_mult) - 1).
    """

    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int,
        out_channels: int,
        model_channels: int,
        num_res_blocks: int,
        attention_resolutions: tuple[int, ...],
        channel_mult: tuple[int, ...],
        num_heads: int,
        num_head_channels: int,
        context_dim: int,
        transformer_depth: int,
        use_linear_in_transformer: bool,
        use_scale_shift_norm: bool,
        dropout: float,
    ):
        super().__init__()
        self.image_size = image_size
        self.model_channels = model_channels
        time_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)
        )

        def res_block(channels: int, out_channels: int) -> ResBlock:
            return ResBlock(
                channels=channels,
                emb_channels=time_dim,
                out_channels=out_channels,
                dropout=dropout,
                use_scale_shift_norm=use_scale_shift_norm,
            )

        def transformer(channels: int) -> SpatialTransformer:
            heads, dim_head = attention_heads(channels, num_heads, num_head_channels)
            return SpatialTransformer(
                channels=channels,
                heads=heads,
                dim_head=dim_head,
                depth=transformer_depth,
                context_dim=context_dim,
                use_linear=use_linear_in_transformer,
            )

        conv_in = nn.Conv2d(in_channels, model_channels, 3, padding=1)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(conv_in)])
        skip_channels = [model_channels]  # what each input block hands to its output block
        channels, factor = model_channels, 1  # factor: how many times the input was downsampled
        last_level = len(channel_mult) - 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res_block(channels, model_channels * mult)]
                channels = model_channels * mult
                if factor in attention_resolutions:
                    layers.append(transformer(channels))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(channels)
            if level != last_level:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(channels=channels)))
                skip_channels.append(channels)
                factor *= 2

        self.middle_block = TimestepEmbedSequential(
            res_block(channels, channels), transformer(channels), res_block(channels, channels)
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for index in range(num_res_blocks + 1):
                layers = [res_block(channels + skip_channels.pop(), model_channels * mult)]
                channels = model_channels * mult
                if factor in attention_resolutions:
                    layers.append(transformer(channels))
                if level and index == num_res_blocks:
                    layers.append(Upsample(channels=channels))
                    factor //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            group_norm(channels), nn.SiLU(), zero_module(nn.Conv2d(channels, out_channels, 3, padding=1))
        )

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | int, context: torch.Tensor) -> torch.Tensor:
        # one timestep for the whole batch is accepted, as diffusers accepts it
        timesteps = torch.as_tensor(timesteps, device=x.device).expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.out(h)
