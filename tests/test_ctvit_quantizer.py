"""The ctvit vector quantizer is vector-quantize-pytorch 1.1.2's `VectorQuantize(dim, codebook_size,
use_cosine_sim=True)`, the one CT-CLIP trains with: code choice, EMA update, straight-through
output and commitment loss, each checked against a small case worked out by hand.

The case: three 2-d codes, `c0 = (1, 0)`, `c1 = (0, 2)` (not unit length: the EMA leaves rows
like that) and `c2 = (-2, 0)`, and three tokens `x1 = (3, 1)`, `x2 = (1, 0.8)`, `x3 = (1, 3)`.
"""

from __future__ import annotations

import math

import pytest
import torch

from registry.models.ctvit import TINY, CTViT
from registry.models.ctvit_quantizer import VectorQuantizer

CODES = [[1.0, 0.0], [0.0, 2.0], [-2.0, 0.0]]
TOKENS = [[3.0, 1.0], [1.0, 0.8], [1.0, 3.0]]
DECAY = 0.8


def quantizer(codes=CODES, **kwargs) -> VectorQuantizer:
    vq = VectorQuantizer(dim=2, codebook_size=len(codes), **kwargs)
    vq._codebook.embed.copy_(torch.tensor([codes]))
    return vq


def tokens(requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor([TOKENS], requires_grad=requires_grad)  # (b=1, n=3, d=2)


def unit(v):
    length = math.hypot(*v)
    return [c / length for c in v]


def test_codes_are_chosen_by_cosine_against_the_normalised_codebook():
    vq = quantizer().eval()
    quantized, ids, loss = vq(tokens())
    # x2 · c1 = 1.6 > x2 · c0 = 1, but cos(x2, c0) = 0.78 > cos(x2, c1) = 0.62: the cosine decides
    assert ids.tolist() == [[0, 0, 1]]
    # the output is the stored row, not its unit version
    assert quantized.tolist() == [[CODES[0], CODES[0], CODES[1]]]
    assert loss.tolist() == [0.0] and not loss.requires_grad and not quantized.requires_grad


def test_one_ema_step_worked_out_by_hand():
    vq = quantizer().train()
    before = vq._codebook.embed.clone()
    quantized, ids, _ = vq(tokens())
    assert ids.tolist() == [[0, 0, 1]]
    assert quantized.tolist() == [[CODES[0], CODES[0], CODES[1]]]  # this batch's codes: before the update

    # cluster sizes move from 0 towards this batch's counts (2, 1, 0)
    assert torch.allclose(vq._codebook.cluster_size, torch.tensor([[0.4, 0.2, 0.0]]))
    # used codes move towards the unit mean direction of their unit tokens ...
    mean = [a + b for a, b in zip(unit(TOKENS[0]), unit(TOKENS[1]))]
    c0 = [DECAY * c + (1 - DECAY) * m for c, m in zip(CODES[0], unit(mean))]
    c1 = [DECAY * c + (1 - DECAY) * m for c, m in zip(CODES[1], unit(TOKENS[2]))]
    # ... an unused code towards its own unit version; nothing is renormalised after the step
    c2 = [DECAY * -2.0 + (1 - DECAY) * -1.0, 0.0]
    expected = torch.tensor([[c0, c1, c2]])
    assert torch.allclose(vq._codebook.embed, expected, atol=1e-6), vq._codebook.embed
    assert vq._codebook.embed[0, 2].tolist() == pytest.approx([-1.8, 0.0])
    assert not torch.equal(vq._codebook.embed, before)

    # a second step lerps the sizes again: 0.8 · 0.4 + 0.2 · 2 and 0.8 · 0.2 + 0.2 · 1
    vq(tokens())
    assert torch.allclose(vq._codebook.cluster_size, torch.tensor([[0.72, 0.36, 0.0]]))


def test_the_codebook_does_not_move_in_eval_mode():
    vq = quantizer().eval()
    vq(tokens())
    assert vq._codebook.embed.tolist() == [CODES] and vq._codebook.cluster_size.tolist() == [[0.0] * 3]


def test_commitment_loss_value_weight_mask_and_gradient():
    x = tokens(requires_grad=True)
    _, _, loss = quantizer().train()(x)
    # squared errors against the chosen codes: x1 (4, 1), x2 (0, 0.64), x3 (1, 1); mean over 6
    assert loss.shape == (1,) and loss.item() == pytest.approx(7.64 / 6)
    loss.sum().backward()
    # d/dx mean((x - code)²) = 2 (x - code) / 6: the gradient reaches the tokens, the codes are detached
    expected = torch.tensor([[[4 / 6, 2 / 6], [0.0, 1.6 / 6], [2 / 6, 2 / 6]]])
    assert torch.allclose(x.grad, expected)

    _, _, half = quantizer(commitment_weight=0.5).train()(tokens())
    assert half.item() == pytest.approx(0.5 * 7.64 / 6)
    _, _, masked = quantizer().train()(tokens(), mask=torch.tensor([[True, False, True]]))
    assert masked.item() == pytest.approx((4 + 1 + 1 + 1) / 4)


def test_straight_through_output_in_training_only():
    x = tokens(requires_grad=True)
    quantized, _, _ = quantizer().train()(x)
    assert quantized.tolist() == [[CODES[0], CODES[0], CODES[1]]]
    weights = torch.arange(6.0).reshape(1, 3, 2)
    (quantized * weights).sum().backward()
    assert torch.equal(x.grad, weights)  # the decoder's gradient reaches the encoder unchanged

    quantized, _, _ = quantizer().eval()(tokens(requires_grad=True))
    assert not quantized.requires_grad  # eval: the codes themselves, no path to the encoder


def test_a_fresh_codebook_is_unit_length_and_needs_no_kmeans():
    vq = VectorQuantizer(dim=8, codebook_size=16)
    codebook = vq._codebook
    assert codebook.initted.tolist() == [1.0] and codebook.cluster_size.tolist() == [[0.0] * 16]
    assert torch.allclose(codebook.embed.norm(dim=-1), torch.ones(1, 16))
    before = codebook.embed.clone()
    vq.eval()(torch.randn(2, 5, 8))
    assert torch.equal(codebook.embed, before)


def test_initted_zero_runs_spherical_kmeans_on_the_first_batch():
    """A checkpoint whose `initted` is 0 (trained with k-means init, before any batch) is
    initialised from the first batch, even in eval mode, as vector-quantize-pytorch 1.1.2 does."""
    torch.manual_seed(0)
    vq = quantizer(codes=[[0.0, 0.0], [0.0, 0.0]]).eval()
    vq._codebook.initted.zero_()
    batch = torch.tensor([[[2.0, 0.1], [3.0, -0.1], [1.0, 0.0], [0.1, 2.0], [-0.1, 1.0], [0.0, 4.0]]])
    _, ids, _ = vq(batch)
    unit_batch = torch.nn.functional.normalize(batch[0], dim=-1)
    means = torch.nn.functional.normalize(torch.stack([unit_batch[:3].mean(0), unit_batch[3:].mean(0)]), dim=-1)
    codes = vq._codebook.embed[0]
    order = [0, 1] if codes[0, 0] > codes[1, 0] else [1, 0]
    assert torch.allclose(codes[order], means, atol=1e-6)
    assert vq._codebook.cluster_size[0].tolist() == [3.0, 3.0]
    assert vq._codebook.initted.tolist() == [1.0]
    assert ids[0].tolist() == [order[0]] * 3 + [order[1]] * 3


def test_the_encoder_learns_through_the_quantizer_in_training_mode():
    torch.manual_seed(0)
    model = CTViT(**TINY, with_decoder=False)
    video = torch.randn(1, 1, 4, 32, 32)
    model.train()
    model(video).backward()  # CT-CLIP's loss without VGG/GAN: the reconstruction MSE
    assert model.to_patch_emb[2].weight.grad is not None  # straight-through: the encoder gets a gradient
    model.zero_grad(set_to_none=True)
    model.eval()
    assert not model(video, return_encoded_tokens=True).requires_grad


def test_a_frame_mask_limits_the_losses_to_the_real_frames():
    """CT-CLIP's `mask` (b, frames): the reconstruction loss covers the masked frames only, and the
    commitment loss the tokens of any masked frame (one token frame per temporal_patch_size frames)."""
    torch.manual_seed(0)
    model = CTViT(**TINY, with_decoder=False).eval()
    video = torch.randn(1, 1, 4, 32, 32)
    mask = torch.tensor([[True, True, True, False]])
    with torch.no_grad():
        loss, recons = model(video, mask=mask, return_recons=True)
        assert torch.allclose(loss, torch.nn.functional.mse_loss(recons[:, :, :3], video[:, :, :3]))
        assert model.token_mask(mask, (2, 4, 4), False).tolist() == [[True] * 32]
        assert model.token_mask(torch.tensor([[True, True, False, False]]), (2, 4, 4), False).tolist() == [[True] * 16 + [False] * 16]
        # phenaki's grouping: frame 0 alone, then pairs
        assert model.token_mask(torch.tensor([[True, False, False, True, True]]), (3, 1, 1), True).tolist() == [[True, False, True]]
    with pytest.raises(ValueError, match="mask must be"):
        model(video, mask=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="needs a video"):
        model(video[:, :, 0], mask=mask)
