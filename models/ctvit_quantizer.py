"""Cosine-similarity vector quantizer of the `ctvit` family (axis letters: see `ctvit_attention`).

Its state-dict layout is CT-CLIP's, i.e. that of vector-quantize-pytorch 1.1.2's
`VectorQuantize(dim, codebook_size, use_cosine_sim=True)`: buffers only, under `_codebook`
(`initted` [1], `cluster_size` [1, codebook_size], `embed` [1, codebook_size, dim]; the leading 1 is
the number of codebooks). There is no `embed_avg` — newer vector-quantize-pytorch releases add one,
which breaks strict loading of CT-CLIP checkpoints — and no input/output projections.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class CosineCodebook(nn.Module):
    """Unit-norm codes, learned by exponential moving averages of the vectors assigned to them.

    The codes take no gradient: in training mode every forward pass moves each used code towards
    the mean direction of its assigned vectors (`decay` is the weight of the old value).
    """

    def __init__(self, *, dim: int, codebook_size: int, decay: float = 0.8):
        super().__init__()
        self.codebook_size, self.decay = codebook_size, decay
        # 1.0: the codes start random, there is no k-means initialisation still to run
        self.register_buffer("initted", torch.ones(1))
        self.register_buffer("cluster_size", torch.zeros(1, codebook_size))
        self.register_buffer("embed", F.normalize(torch.randn(1, codebook_size, dim), dim=-1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`x`: (n, d) unit vectors. Returns the nearest codes (n, d) and their indices (n,)."""
        with torch.no_grad():
            indices = (x @ self.embed[0].t()).argmax(dim=-1)
        codes = self.embed[0][indices]
        if self.training:
            self._update(x.detach(), indices)
        return codes, indices

    @torch.no_grad()
    def _update(self, x: torch.Tensor, indices: torch.Tensor) -> None:
        onehot = F.one_hot(indices, self.codebook_size).to(x.dtype)
        counts = onehot.sum(dim=0)
        self.cluster_size[0].lerp_(counts, 1 - self.decay)
        means = F.normalize(onehot.t() @ x, dim=-1)
        unused = (counts == 0)[:, None]  # codes nobody picked keep their value
        target = torch.where(unused, self.embed[0], means)
        self.embed[0] = F.normalize(self.embed[0].lerp(target, 1 - self.decay), dim=-1)


class VectorQuantizer(nn.Module):
    """Quantizes (b, n, d) tokens to their nearest unit-norm code by cosine similarity.

    Returns (quantized tokens, code indices (b, n), commitment loss). Tokens are l2-normalised
    first; the straight-through estimator passes the decoder's gradient to the encoder unchanged.
    """

    def __init__(self, *, dim: int, codebook_size: int, decay: float = 0.8, commitment_weight: float = 1.0):
        super().__init__()
        self.commitment_weight = commitment_weight
        self._codebook = CosineCodebook(dim=dim, codebook_size=codebook_size, decay=decay)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        flat = F.normalize(rearrange(x, "b n d -> (b n) d"), dim=-1)
        codes, indices = self._codebook(flat)
        commit_loss = F.mse_loss(flat, codes) * self.commitment_weight
        quantized = flat + (codes - flat).detach()
        return (
            rearrange(quantized, "(b n) d -> b n d", b=b),
            rearrange(indices, "(b n) -> b n", b=b),
            commit_loss,
        )
