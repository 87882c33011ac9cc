"""Cosine-similarity vector quantizer of the `ctvit` family (axis letters: see `ctvit_attention`).

Layout and function are CT-CLIP's, i.e. vector-quantize-pytorch 1.1.2's
`VectorQuantize(dim, codebook_size, use_cosine_sim=True)` with its defaults (one codebook,
decay 0.8, commitment weight 1, no k-means init, no dead-code expiry, no projections):

- state dict: buffers only, under `_codebook`: `initted` [1], `cluster_size` [1, codebook_size] and
  `embed` [1, codebook_size, dim] (the leading 1 is the number of codebooks). There is no
  `embed_avg` — newer vector-quantize-pytorch releases add one, which breaks strict loading of
  CT-CLIP checkpoints.
- code choice: the largest cosine similarity between the input and the l2-normalised codes.
- the output is the stored code row itself, which is not unit length once the EMA has moved it:
  the update lerps rows towards unit targets and does not renormalise after.
- training mode only: the EMA update, a straight-through output (value of the code, gradient of
  the input) and the commitment loss `mse(code, input)` whose gradient reaches only the input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .ctvit_attention import exists


def l2norm(t: torch.Tensor) -> torch.Tensor:
    return F.normalize(t, dim=-1)


class CosineCodebook(nn.Module):
    """Codes learned by exponential moving averages of the (unit) vectors assigned to them.

    The codes take no gradient. In training mode every forward pass updates, with weight
    `1 - decay` for the new value: `cluster_size` towards this batch's per-code counts, each used
    code towards the unit mean direction of its vectors, and each unused code towards its own
    unit-length version. A fresh codebook is initialised (`initted` 1); a loaded one with `initted`
    0 (trained with 1.1.2's k-means init and saved before any batch) has the first forward pass, in
    any mode, set the codes by `kmeans_iters` rounds of spherical k-means.
    """

    def __init__(self, *, dim: int, codebook_size: int, decay: float = 0.8, kmeans_iters: int = 10):
        super().__init__()
        self.codebook_size, self.decay, self.kmeans_iters = codebook_size, decay, kmeans_iters
        # uniform in a cube, then unit length: 1.1.2's kaiming-uniform init (its scale is normalised away)
        self.register_buffer("initted", torch.tensor([1.0]))
        self.register_buffer("cluster_size", torch.zeros(1, codebook_size))
        self.register_buffer("embed", l2norm(torch.rand(1, codebook_size, dim) * 2 - 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`x`: (n, d) vectors of any length. Returns the chosen code rows (n, d) and indices (n,)."""
        x = l2norm(x.float())
        if not self.initted.item():
            self._kmeans_init(x.detach())
        with torch.no_grad():
            indices = (x @ l2norm(self.embed[0]).t()).argmax(dim=-1)
        codes = self.embed[0][indices]  # a copy: the update below does not change this batch's codes
        if self.training:
            self._update(x.detach(), indices)
        return codes, indices

    @torch.no_grad()
    def _update(self, x: torch.Tensor, indices: torch.Tensor) -> None:
        onehot = F.one_hot(indices, self.codebook_size).to(x.dtype)
        counts = onehot.sum(dim=0)
        self.cluster_size[0].lerp_(counts, 1 - self.decay)
        unused = counts == 0
        means = l2norm((onehot.t() @ x) / counts.masked_fill(unused, 1.0)[:, None])
        target = torch.where(unused[:, None], l2norm(self.embed[0]), means)
        self.embed[0].lerp_(target, 1 - self.decay)

    @torch.no_grad()
    def _kmeans_init(self, x: torch.Tensor) -> None:
        n, k = x.shape[0], self.codebook_size
        picks = torch.randperm(n, device=x.device)[:k] if n >= k else torch.randint(0, n, (k,), device=x.device)
        means, counts = x[picks], torch.zeros(k, device=x.device)
        for _ in range(self.kmeans_iters):
            buckets = (x @ means.t()).argmax(dim=-1)
            counts = torch.bincount(buckets, minlength=k).to(x.dtype)
            sums = torch.zeros_like(means).index_add_(0, buckets, x)
            new_means = l2norm(sums / counts.clamp(min=1)[:, None])
            means = torch.where((counts == 0)[:, None], means, new_means)
        self.embed[0] = means
        self.cluster_size[0] = counts
        self.initted.fill_(1.0)


class VectorQuantizer(nn.Module):
    """Quantizes (b, n, d) tokens to codes chosen by cosine similarity.

    `forward(x, mask=None)` returns (quantized (b, n, d), code indices (b, n), commitment loss [1]).
    In eval mode the quantized tokens are the code rows and the loss is a constant 0. In training
    mode they are `x + (codes - x).detach()` (straight-through: the decoder's gradient reaches the
    encoder unchanged), and the loss is `commitment_weight · mse(codes, x)` over the tokens where
    `mask` (b, n) is True, with the codes detached, so its gradient reaches only the encoder.
    """

    def __init__(self, *, dim: int, codebook_size: int, decay: float = 0.8, commitment_weight: float = 1.0):
        super().__init__()
        self.commitment_weight = commitment_weight
        self._codebook = CosineCodebook(dim=dim, codebook_size=codebook_size, decay=decay)

    @property
    def codebook(self) -> torch.Tensor:
        """The code rows (codebook_size, d)."""
        return self._codebook.embed[0]

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        codes, indices = self._codebook(rearrange(x, "b n d -> (b n) d"))
        quantized = rearrange(codes, "(b n) d -> b n d", b=b)
        loss = torch.zeros(1, device=x.device, requires_grad=self.training)
        if self.training:
            quantized = x + (quantized - x).detach()
            if self.commitment_weight > 0:
                error = F.mse_loss(quantized.detach(), x, reduction="none")
                loss = loss + (error[mask] if exists(mask) else error).mean() * self.commitment_weight
        return quantized, rearrange(indices, "(b n) -> b n", b=b), loss
