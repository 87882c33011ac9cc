"""`ctvit` computes what CT-CLIP's CTViT computes.

- CT-CLIP's current layout: the weights in `shared/reference/ctclip_tiny_weights.safetensors` load
  strictly and reproduce the outputs CT-CLIP's own code computed from them
  (`ctclip_tiny_io.safetensors`), and each documented fact of its forward is needed to get there.
- The decoder layout (2024-02): its encoder is the same function, and its decoder is wired as
  CT-CLIP's/phenaki's: temporal then spatial decoder transformer, then the pixel heads.
- The flags change only what they name: swapping each flagged module back to its baseline class
  with the same weights gives exactly the baseline model's outputs.
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import REFERENCE
from torch import nn

from registry.models import ctvit_quantizer
from registry.models.ctvit import TINY, CTViT
from registry.models.ctvit_attention import GEGLU, PEG, Attention, FlashAttentionQKV, LayerNorm, SwiGLU

TOLERANCE = 1e-5
OUTPUTS = ["patches", "pre_quant", "tokens", "pixels", "single.tokens"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reference():
    """(config, weights, io) of the reference files; skips where shared/reference is not checked out."""
    weights_path, io_path = REFERENCE / "ctclip_tiny_weights.safetensors", REFERENCE / "ctclip_tiny_io.safetensors"
    if not (weights_path.is_file() and io_path.is_file()):
        pytest.skip(f"{REFERENCE} has no CT-CLIP reference outputs (not checked out)")
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(weights_path), "pt") as handle:
        config = json.loads(handle.metadata()["config"])
    return config, load_file(str(weights_path)), load_file(str(io_path))


def reference_model(reference, **overrides) -> CTViT:
    config, weights, _ = reference
    model = CTViT(**config, with_decoder=False, **overrides).eval()
    model.load_state_dict(weights, strict=True)
    return model


@torch.no_grad()
def outputs_of(model: CTViT, io: dict) -> dict[str, torch.Tensor]:
    """The reference file's outputs, computed step by step through our methods."""
    patches, _ = model.patch_embed(io["video"])
    pre_quant = model.encode(patches)
    tokens, ids, _ = model.quantize(pre_quant)
    return {
        "patches": patches, "pre_quant": pre_quant, "tokens": tokens, "ids": ids, "pixels": model.decode(tokens),
        "single.tokens": model(io["single.video"], return_encoded_tokens=True),
    }


def mismatches(ours: dict, io: dict) -> list[str]:
    problems = [f"{name}: max abs {(ours[name] - io[name]).abs().max().item():.2e}"
                for name in OUTPUTS if (ours[name] - io[name]).abs().max() > TOLERANCE]
    differing = (ours["ids"] != io["ids"]).sum().item()
    return problems + ([f"ids: {differing} of {io['ids'].numel()} differ"] if differing else [])


# --- CT-CLIP's current layout: the reference outputs ----------------------------------------------


def test_the_reference_outputs_are_reproduced(reference):
    _, _, io = reference
    ours = outputs_of(reference_model(reference), io)
    for name in OUTPUTS:
        assert ours[name].shape == io[name].shape, name
    assert mismatches(ours, io) == []
    assert torch.equal(ours["ids"], io["ids"])


def test_ct_clip_keywords_return_the_reference_outputs(reference):
    _, _, io = reference
    model, video = reference_model(reference), io["video"]
    with torch.no_grad():
        assert torch.equal(model(video, return_only_codebook_ids=True), io["ids"])
        assert (model(video, return_encoded_tokens=True) - io["tokens"]).abs().max() <= TOLERANCE
        assert (model(video, return_recons_only=True) - io["pixels"]).abs().max() <= TOLERANCE
        loss, recons = model(video, return_recons=True)
        assert torch.equal(recons, model(video, return_recons_only=True))
        assert torch.allclose(loss, F.mse_loss(video, io["pixels"]), atol=1e-6)  # CT-CLIP's loss without VGG/GAN
        assert torch.allclose(model(video), loss)
        pixels = model.decode_from_codebook_indices(io["ids"])
        assert (pixels - io["pixels"]).abs().max() <= TOLERANCE
    # attributes CT-CLIP's trainer and CLIP wrapper read
    assert model.discr is None and model.vgg is None and not model.use_vgg_and_gan
    assert model.patch_height_width == (4, 4) and model.image_num_tokens == 16


def _temporal_peg_in_true_layout(model: CTViT) -> None:
    """PEG reading the temporal transformer's tokens in their true `(b h w) t d` order."""
    def forward(self, x, *, video_shape):
        b, t, h, w = video_shape
        grid = x.reshape(b, h, w, t, -1).permute(0, 4, 3, 1, 2)
        grid = self.dsconv(F.pad(grid, (1, 1, 1, 1, 2, 0)))
        return grid.permute(0, 3, 4, 2, 1).reshape(x.shape)
    for module in model.enc_temporal_transformer.modules():
        if isinstance(module, PEG):
            module.forward = forward.__get__(module)


def _keys_from_the_normed_input(model: CTViT) -> None:
    for module in model.modules():
        if isinstance(module, Attention):
            module.context_norm = nn.Identity()
            module.forward = (lambda attention: lambda x, **kw: Attention.forward(attention, x, context=attention.norm(x), **kw))(module)


def _torch_default_leaky_slope(model: CTViT) -> None:
    for module in model.spatial_rel_pos_bias.modules():
        if isinstance(module, nn.LeakyReLU):
            module.negative_slope = 0.01


@pytest.mark.parametrize("deviation", [
    "leaky_relu_0.01", "keys_from_normed_input", "temporal_peg_in_true_layout", "codes_against_raw_codebook",
])
def test_each_fact_of_ct_clips_forward_is_needed(reference, deviation, monkeypatch):
    """The reference outputs tell each documented behaviour of CT-CLIP's forward from its obvious alternative."""
    model = reference_model(reference)
    if deviation == "leaky_relu_0.01":
        _torch_default_leaky_slope(model)
    elif deviation == "keys_from_normed_input":
        _keys_from_the_normed_input(model)
    elif deviation == "temporal_peg_in_true_layout":
        _temporal_peg_in_true_layout(model)
    else:
        monkeypatch.setattr(ctvit_quantizer, "l2norm", lambda t: t)  # argmax of x · raw code rows
    _, _, io = reference
    assert mismatches(outputs_of(model, io), io) != []


# --- the decoder layout (2024-02) -----------------------------------------------------------------


def test_the_decoder_layout_encodes_as_the_current_layout(reference):
    """Same weights where the layouts overlap: the same patches, encoder output, tokens and ids."""
    config, weights, io = reference
    torch.manual_seed(0)
    model = CTViT(**config, with_decoder=True).eval()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert unexpected == [] and missing and all(k.startswith(("dec_spatial_", "dec_temporal_")) for k in missing)
    ours = outputs_of(model, io)
    assert all((ours[n] - io[n]).abs().max() <= TOLERANCE for n in ("patches", "pre_quant", "tokens", "single.tokens"))
    assert torch.equal(ours["ids"], io["ids"])
    assert ours["pixels"].shape == io["pixels"].shape


def calls(model: CTViT, video: torch.Tensor, **keywords) -> list[tuple[str, tuple]]:
    """(top-level module, first input's shape) in the order the forward pass calls them."""
    seen, handles = [], []
    for name, module in model.named_children():
        handles.append(module.register_forward_hook(
            lambda m, args, out, name=name: seen.append((name, tuple(args[0].shape) if args and torch.is_tensor(args[0]) else ()))
        ))
    try:
        with torch.no_grad():
            model(video, **keywords)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_the_decoder_path_is_temporal_then_spatial_then_pixels():
    torch.manual_seed(0)
    model = CTViT(**TINY).eval()  # b=1, 4 frames of 32x32, temporal patch 2, 8x8 patches: t=2, h=w=4
    order = calls(model, torch.randn(1, 1, 4, 32, 32), return_recons_only=True)
    assert order == [
        ("to_patch_emb", (1, 1, 4, 32, 32)),
        ("spatial_rel_pos_bias", ()),
        ("enc_spatial_transformer", (2, 16, 32)),  # (b t) (h w) d
        ("enc_temporal_transformer", (16, 2, 32)),  # (b h w) t d
        ("vq", (1, 32, 32)),  # b (t h w) d
        ("dec_temporal_transformer", (16, 2, 32)),
        ("spatial_rel_pos_bias", ()),
        ("dec_spatial_transformer", (2, 16, 32)),
        ("to_pixels", (1, 2, 4, 4, 32)),
    ]
    without = CTViT(**TINY, with_decoder=False).eval()
    assert [name for name, _ in calls(without, torch.randn(1, 1, 4, 32, 32), return_recons_only=True)][-2:] == ["vq", "to_pixels"]


def test_first_frame_handling():
    """CT-CLIP patches a multiple of temporal_patch_size as a whole; one frame more (phenaki's
    convention) goes through the first-frame heads; an image is one such first frame."""
    torch.manual_seed(0)
    model = CTViT(**TINY).eval()
    whole = [name for name, _ in calls(model, torch.randn(1, 1, 4, 32, 32))]
    assert "to_patch_emb_first_frame" not in whole and "to_pixels_first_frame" not in whole
    video = torch.randn(2, 1, 5, 32, 32)
    phenaki = calls(model, video)
    assert ("to_patch_emb_first_frame", (2, 1, 1, 32, 32)) in phenaki and ("to_patch_emb", (2, 1, 4, 32, 32)) in phenaki
    assert ("to_pixels_first_frame", (2, 1, 4, 4, 32)) in phenaki and ("to_pixels", (2, 2, 4, 4, 32)) in phenaki
    with torch.no_grad():
        assert model(video, return_recons_only=True).shape == video.shape
        assert model(video, return_only_codebook_ids=True).shape == (2, 3, 4, 4)
        assert model(torch.randn(2, 1, 32, 32), return_recons_only=True).shape == (2, 1, 32, 32)


def test_a_decoder_of_identity_layers_is_two_layer_norms_before_the_pixel_heads():
    """By construction: with every residual branch of the decoder zeroed (PEG, attention output,
    feed-forward output), each decoder transformer is its `norm_out`, a LayerNorm."""
    torch.manual_seed(0)
    model = CTViT(**TINY).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith("dec_") and (".0.dsconv." in name or name.endswith((".1.to_out.weight", ".3.4.weight"))):
                parameter.zero_()
        tokens = model(torch.randn(1, 1, 4, 32, 32), return_encoded_tokens=True)
        normed = F.layer_norm(F.layer_norm(tokens, (32,)), (32,))
        assert torch.allclose(model.decode(tokens), model.to_pixels(normed), atol=1e-5)
        assert not torch.allclose(model.decode(tokens), model.to_pixels(tokens), atol=1e-3)


# --- the flags change only what they name -----------------------------------------------------------


FLAGS = ("use_rms_norm", "use_swiglu", "use_flash_attention")
FLAGGED = [dict(zip(FLAGS, values)) for values in itertools.product((False, True), repeat=3) if any(values)]
LAYOUTS = {"decoder": {}, "ctclip": {"with_decoder": False}, "gan": {"use_vgg_and_gan": True}}


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def swap_back(model: nn.Module) -> None:
    """Each flagged module replaced by its baseline class carrying the same weights."""
    for path, flash in [(p, m) for p, m in model.named_modules() if isinstance(m, FlashAttentionQKV)]:
        inner, dim = flash.to_qkv.weight.shape[0] // 3, flash.to_qkv.weight.shape[1]
        attention = Attention(dim=dim, dim_head=flash.q_scale.numel(), heads=flash.heads)
        attention.norm = flash.norm
        with torch.no_grad():
            attention.to_q.weight.copy_(flash.to_qkv.weight[:inner])
            attention.to_kv.weight.copy_(flash.to_qkv.weight[inner:])
            attention.to_out.weight.copy_(flash.to_out.weight)
            attention.q_scale.copy_(flash.q_scale)
            attention.k_scale.copy_(flash.k_scale)
        _replace(model, path, attention)
    for path, norm in [(p, m) for p, m in model.named_modules() if isinstance(m, nn.RMSNorm)]:
        feed_forward_norm = path.endswith(".3.0")  # CT-CLIP's feed-forward pre-norm is torch's LayerNorm
        layer_norm = nn.LayerNorm(norm.weight.numel()) if feed_forward_norm else LayerNorm(norm.weight.numel())
        with torch.no_grad():
            (layer_norm.weight if feed_forward_norm else layer_norm.gamma).copy_(norm.weight)
        _replace(model, path, layer_norm)
    for path in [p for p, m in model.named_modules() if isinstance(m, SwiGLU)]:
        _replace(model, path, GEGLU())


def behaviour(model: CTViT, video: torch.Tensor) -> dict[str, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        out = {
            "ids": model(video, return_only_codebook_ids=True),
            "tokens": model(video, return_encoded_tokens=True),
            "recons": model(video, return_recons_only=True),
        }
        if model.use_vgg_and_gan:
            out["discr"] = model.discr(video[:, :, 0])
    model.train()
    torch.manual_seed(1)  # the GAN terms pick a random frame
    out["loss"] = model.losses(video).total.detach()
    out["codebook"] = model.vq.codebook.clone()  # after one EMA step
    return out


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("flags", FLAGGED, ids=lambda f: "+".join(k.removeprefix("use_") for k, v in f.items() if v))
def test_a_flag_changes_only_what_it_names(flags, layout):
    config = {**TINY, **LAYOUTS[layout]}
    torch.manual_seed(0)
    flagged = CTViT(**config, **flags)
    with torch.no_grad():  # every tensor away from its init, so every weight shows in the outputs
        for tensor in flagged.state_dict().values():
            if tensor.is_floating_point() and tensor.numel():
                tensor.add_(torch.randn_like(tensor) * 0.05)
    video = torch.randn(2, 1, 5, 32, 32)
    flagged_state = {k: v.clone() for k, v in flagged.state_dict().items()}
    flagged_out = behaviour(flagged, video)
    flagged.load_state_dict(flagged_state)

    swap_back(flagged)
    baseline = CTViT(**config)
    baseline.load_state_dict(flagged.state_dict(), strict=True)
    swapped_out, baseline_out = behaviour(flagged, video), behaviour(baseline, video)
    for name in baseline_out:
        assert torch.equal(swapped_out[name], baseline_out[name]), name

    if flags == {"use_rms_norm": False, "use_swiglu": False, "use_flash_attention": True}:
        # FlashAttentionQKV is the same function as Attention without null key/values
        assert torch.equal(flagged_out["ids"], baseline_out["ids"])
        assert all(torch.allclose(flagged_out[n], baseline_out[n], atol=1e-5) for n in baseline_out if n != "ids")
    else:
        assert not torch.allclose(flagged_out["recons"], baseline_out["recons"], atol=1e-4)
