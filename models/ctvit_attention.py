"""Transformer parts of the `ctvit` family: norms, feed-forward, PEG, attention, position bias.

Axis letters used in the einops patterns of every `ctvit*` module:

    b      batch                     c           pixel channels
    t      token frames (time)       h, w        token-grid height and width
    n      tokens of one sequence    i, j        query and key positions
    d      features (per head inside attention)
    heads  attention heads           r           the key/value pair of `null_kv`
    pt, p1, p2   temporal, vertical and horizontal patch size in pixels

Three layout flags pick classes; every class here that holds a norm, a gated activation or an
attention builds it through `make_norm`, `FeedForward` or `make_attention`, never directly, so a
flag means the same thing everywhere (the first CTViT incident was one class that ignored
`use_rms_norm`):

- `use_rms_norm`: every norm inside a transformer block — attention `norm` and `context_norm`,
  the feed-forward's pre-norm, the transformer's `norm_out`, and the discriminator's attention —
  becomes `torch.nn.RMSNorm` (`weight` only). The patch-embedding LayerNorms of the tokenizer stem
  are not transformer norms and stay `nn.LayerNorm` either way.
- `use_swiglu`: the feed-forward's activation is `SwiGLU` instead of `GEGLU` (same shapes).
- `use_flash_attention`: `FlashAttentionQKV` instead of `Attention` (different parameter layout).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

# CT-CLIP's LeakyReLU slope, in the position-bias MLP and the discriminator (torch's default, 0.01,
# computes something else).
LEAKY_SLOPE = 0.1


def exists(value) -> bool:
    return value is not None


def default(value, fallback):
    return value if exists(value) else fallback


# --- norms and activations ------------------------------------------------------------------


class LayerNorm(nn.Module):
    """LayerNorm with a learned `gamma` and a zero `beta` that is a persistent buffer, not learned.

    CT-CLIP checkpoints hold both as `*.gamma` and `*.beta`, so both stay in the state dict.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta)


def make_norm(dim: int, *, use_rms_norm: bool, learned_bias: bool = False) -> nn.Module:
    """The norm of one transformer site: `nn.RMSNorm` with `use_rms_norm`, else a LayerNorm.

    `learned_bias` picks torch's `nn.LayerNorm` (weight and bias, the feed-forward's pre-norm in
    CT-CLIP's layout) over the gamma/beta `LayerNorm` (attention and output norms).
    """
    if use_rms_norm:
        return nn.RMSNorm(dim)
    return nn.LayerNorm(dim) if learned_bias else LayerNorm(dim)


class GEGLU(nn.Module):
    """Gated GELU: half of the features, gated by GELU of the other half."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return F.gelu(gate) * x


class SwiGLU(nn.Module):
    """Gated SiLU: as `GEGLU` with SiLU as the gate, so the shapes around it are identical."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return F.silu(gate) * x


def FeedForward(
    *, dim: int, mult: int = 4, dropout: float = 0.0, use_rms_norm: bool = False, use_swiglu: bool = False
) -> nn.Sequential:
    """Pre-norm gated MLP; indices .0 norm, .1 Linear, .2 GLU, .3 Dropout, .4 Linear (CT-CLIP's layout).

    The 2/3 keeps the parameter count of a plain 4x MLP although the first Linear feeds a gate.
    """
    inner_dim = int(mult * (2 / 3) * dim)
    return nn.Sequential(
        make_norm(dim, use_rms_norm=use_rms_norm, learned_bias=True),
        nn.Linear(dim, inner_dim * 2, bias=False),
        SwiGLU() if use_swiglu else GEGLU(),
        nn.Dropout(dropout),
        nn.Linear(inner_dim, dim, bias=False),
    )


# --- position -------------------------------------------------------------------------------


class PEG(nn.Module):
    """Position-generating depthwise 3D convolution over the (t, h, w) token grid.

    Causal in time (two frames of padding before, none after) so no token sees later frames.
    Like CT-CLIP's (and phenaki's) PEG, it reads its (batch, tokens, d) input as a (b, t, h, w, d)
    grid by a plain reshape, whatever the true token order: right for the spatial transformer's
    `(b t) (h w) d`, a fixed scramble for the temporal transformer's `(b h w) t d`. CT-CLIP's
    weights were trained with that scramble, so a compatible PEG must make it too.
    """

    def __init__(self, *, dim: int, causal: bool = True):
        super().__init__()
        self.causal = causal
        self.dsconv = nn.Conv3d(dim, dim, 3, groups=dim)

    def forward(self, x: torch.Tensor, *, video_shape: tuple[int, int, int, int]) -> torch.Tensor:
        grid = rearrange(x.reshape(*video_shape, -1), "b t h w d -> b d t h w")
        time_padding = (2, 0) if self.causal else (1, 1)
        grid = self.dsconv(F.pad(grid, (1, 1, 1, 1, *time_padding)))
        return rearrange(grid, "b d t h w -> b t h w d").reshape(x.shape)


class ContinuousPositionBias(nn.Module):
    """Attention bias (heads, i, j) from an MLP over log-scaled relative offsets of a token grid.

    Continuous, so one set of weights serves any grid size. The offsets of the last grid are
    cached in the non-persistent buffer `rel_pos` (not in the state dict; it moves with `.to()`).
    """

    def __init__(self, *, dim: int, heads: int, num_dims: int = 2, layers: int = 2):
        super().__init__()
        self.net = nn.ModuleList([nn.Sequential(nn.Linear(num_dims, dim), nn.LeakyReLU(LEAKY_SLOPE))])
        for _ in range(layers - 1):
            self.net.append(nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(LEAKY_SLOPE)))
        self.net.append(nn.Linear(dim, heads))
        self.register_buffer("rel_pos", None, persistent=False)
        self._grid: tuple[int, ...] | None = None

    def forward(self, *grid: int) -> torch.Tensor:
        weight = self.net[0][0].weight
        if self._grid != grid or not exists(self.rel_pos):
            axes = [torch.arange(size, device=weight.device, dtype=torch.float32) for size in grid]
            positions = rearrange(torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1), "... c -> (...) c")
            offsets = rearrange(positions, "i c -> i 1 c") - rearrange(positions, "j c -> 1 j c")
            # log distance: near offsets stay distinct, far ones compress, so larger grids extrapolate
            self.rel_pos = torch.sign(offsets) * torch.log(offsets.abs() + 1)
            self._grid = grid
        bias = self.rel_pos.to(weight.dtype)
        for layer in self.net:
            bias = layer(bias)
        return rearrange(bias, "i j heads -> heads i j")


# --- attention ------------------------------------------------------------------------------


class Attention(nn.Module):
    """Cosine-similarity multi-head attention in CT-CLIP's parameter layout.

    State dict: `norm`, `context_norm` (flag-chosen), `null_kv` [heads, 2·num_null_kv, dim_head],
    `to_q`, `to_kv`, `to_out` (no biases), `q_scale`/`k_scale` [dim_head]. Queries and keys are
    l2-normalised, rescaled per feature and multiplied by a fixed `scale`: bounded logits keep
    training stable without a 1/sqrt(d) temperature. CT-CLIP uses no null key/values, but the
    empty `null_kv` is part of its layout and still joins the graph (so DDP sees it used).

    As in CT-CLIP, the pre-norm `norm` feeds only the queries: keys and values of self-attention
    come from the raw input (`context_norm` normalises a cross-attention `context` instead).
    """

    def __init__(
        self,
        *,
        dim: int,
        dim_head: int = 64,
        heads: int = 8,
        dim_context: int | None = None,
        num_null_kv: int = 0,
        scale: float = 8.0,
        dropout: float = 0.0,
        use_rms_norm: bool = False,
    ):
        super().__init__()
        inner_dim = dim_head * heads
        dim_context = default(dim_context, dim)
        self.heads, self.scale, self.num_null_kv = heads, scale, num_null_kv
        self.norm = make_norm(dim, use_rms_norm=use_rms_norm)
        self.context_norm = make_norm(dim_context, use_rms_norm=use_rms_norm)
        self.null_kv = nn.Parameter(torch.randn(heads, 2 * num_null_kv, dim_head))
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(dim_context, inner_dim * 2, bias=False)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.attn_dropout = nn.Dropout(dropout)
        self.to_out = nn.Linear(inner_dim, dim, bias=False)

    def forward(
        self, x: torch.Tensor, *, context: torch.Tensor | None = None, attn_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        kv_input = self.context_norm(context) if exists(context) else x
        q, k, v = self.to_q(self.norm(x)), *self.to_kv(kv_input).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (heads d) -> b heads n d", heads=self.heads) for t in (q, k, v))

        null_k, null_v = repeat(self.null_kv, "heads (n r) d -> r b heads n d", b=x.shape[0], r=2)
        k, v = torch.cat((null_k, k), dim=-2), torch.cat((null_v, v), dim=-2)

        q = F.normalize(q, dim=-1) * self.q_scale
        k = F.normalize(k, dim=-1) * self.k_scale
        sim = (q @ k.transpose(-1, -2)) * self.scale
        if exists(attn_bias):
            sim = sim + F.pad(attn_bias, (self.num_null_kv, 0))  # null keys get no bias
        attn = self.attn_dropout(sim.softmax(dim=-1))
        return self.to_out(rearrange(attn @ v, "b heads n d -> b n (heads d)"))


class FlashAttentionQKV(nn.Module):
    """Self-attention on torch's fused `scaled_dot_product_attention`, with one fused projection.

    Parameter layout (this project's own, not CT-CLIP's): `norm` (flag-chosen: `LayerNorm`
    gamma/beta or `nn.RMSNorm`), `to_qkv` Linear(dim → 3·heads·dim_head, no bias) with q, k, v in
    that order along the output, `q_scale`/`k_scale` [dim_head], `to_out` Linear(heads·dim_head →
    dim, no bias). The same function as `Attention` without null key/values (so a model can switch
    implementations and keep its behaviour): queries from the normalised input, keys and values
    from the raw input, cosine-similarity logits. Self-attention only: no `context_norm`, no
    `null_kv`.
    """

    def __init__(
        self,
        *,
        dim: int,
        dim_head: int = 64,
        heads: int = 8,
        scale: float = 8.0,
        dropout: float = 0.0,
        use_rms_norm: bool = False,
    ):
        super().__init__()
        inner_dim = dim_head * heads
        self.heads, self.scale, self.dropout, self.inner_dim = heads, scale, dropout, inner_dim
        self.norm = make_norm(dim, use_rms_norm=use_rms_norm)
        self.to_qkv = nn.Linear(dim, inner_dim * 3, bias=False)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.to_out = nn.Linear(inner_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, *, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        # one fused weight, two inputs: its q rows see the normalised input, its k/v rows the raw one
        weight_q, weight_kv = self.to_qkv.weight.split((self.inner_dim, 2 * self.inner_dim))
        qkv = torch.cat((F.linear(self.norm(x), weight_q), F.linear(x, weight_kv)), dim=-1)
        q, k, v = rearrange(qkv, "b n (qkv heads d) -> qkv b heads n d", qkv=3, heads=self.heads)
        q = F.normalize(q, dim=-1) * self.q_scale
        k = F.normalize(k, dim=-1) * self.k_scale
        bias = attn_bias.to(q.dtype) if exists(attn_bias) else None
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0, scale=self.scale
        )
        return self.to_out(rearrange(out, "b heads n d -> b n (heads d)"))


def make_attention(
    *, dim: int, dim_head: int, heads: int, use_flash_attention: bool, use_rms_norm: bool, dropout: float = 0.0
) -> nn.Module:
    """The self-attention of one site: `FlashAttentionQKV` or `Attention`, norms per `use_rms_norm`."""
    attention_class = FlashAttentionQKV if use_flash_attention else Attention
    return attention_class(dim=dim, dim_head=dim_head, heads=heads, dropout=dropout, use_rms_norm=use_rms_norm)


# --- transformer ----------------------------------------------------------------------------


class Transformer(nn.Module):
    """`depth` layers of [PEG, self-attention, empty cross-attention slot, feed-forward], then `norm_out`.

    The slot indices are CT-CLIP's state-dict layout (`layers.N.0` PEG, `.1` attention, `.3`
    feed-forward); slot `.2` is CT-CLIP's unused cross-attention, kept empty so indices line up.
    """

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        dim_head: int = 64,
        heads: int = 8,
        ff_mult: int = 4,
        peg_causal: bool = True,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        use_rms_norm: bool = False,
        use_swiglu: bool = False,
        use_flash_attention: bool = False,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([
                PEG(dim=dim, causal=peg_causal),
                make_attention(
                    dim=dim, dim_head=dim_head, heads=heads, dropout=attn_dropout,
                    use_flash_attention=use_flash_attention, use_rms_norm=use_rms_norm,
                ),
                None,
                FeedForward(dim=dim, mult=ff_mult, dropout=ff_dropout, use_rms_norm=use_rms_norm, use_swiglu=use_swiglu),
            ])
            for _ in range(depth)
        )
        self.norm_out = make_norm(dim, use_rms_norm=use_rms_norm)

    def forward(
        self,
        x: torch.Tensor,
        *,
        video_shape: tuple[int, int, int, int],
        attn_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`x`: (batch, tokens, d) tokens of a video whose token grid is `video_shape` = (b, t, h, w)."""
        for peg, attn, _, ff in self.layers:
            x = peg(x, video_shape=video_shape) + x
            x = attn(x, attn_bias=attn_bias) + x
            x = ff(x) + x
        return self.norm_out(x)
