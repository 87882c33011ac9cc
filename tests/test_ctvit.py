"""The ctvit family: CT-CLIP's reference layouts, layout flags honoured in every module, and a
training step for every flag combination on a tiny CPU model."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import re
from collections import Counter
from fnmatch import fnmatchcase

import pytest
from conftest import reference_text
import torch
from torch import nn

from registry.catalog import builtin_variants
from registry.errors import UsageError
from registry.families import build_on_meta, build_schema, get_family, make_config
from registry.models import ctvit_attention
from registry.models.ctvit import TINY, CTViT, CTViTConfig
from registry.models.ctvit_attention import GEGLU, Attention, FlashAttentionQKV, LayerNorm, SwiGLU
from registry.schema import Schema, module_signature, parse_schema_tsv, schema_of_module

# listing -> (config overrides, its header's fingerprint); pinned so the layouts are checked even
# where shared/reference is not checked out.
REFERENCES = {
    "ctvit_ctclip_main.tsv": (
        {"with_decoder": False},
        "sha256:f0b8d1baf3d2c27a8bec5a811e0af4c744b89d3ec5b65af3fe153cd50ad556cb",
    ),
    "ctvit_ctclip_seed.tsv": (
        {},
        "sha256:e49b4633de85975000f89e6dfc1c303fa30a154e15d34e400a708ab2afa69ace",
    ),
    "ctvit_ctclip_seed_vgg_gan.tsv": (
        {"use_vgg_and_gan": True},
        "sha256:07c217be5d3e6ee95c8a8b18ef03886bed282efbf28b4802bae8d782b7df8a4c",
    ),
}

FLAGS = ("use_rms_norm", "use_swiglu", "use_flash_attention", "with_decoder", "use_vgg_and_gan")
COMBINATIONS = [dict(zip(FLAGS, values)) for values in itertools.product((False, True), repeat=len(FLAGS))]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny models on one thread


def combination_id(flags: dict) -> str:
    return "+".join(name.removeprefix("use_") for name, on in flags.items() if on) or "all-off"


@pytest.fixture(scope="module")
def family():
    return get_family("ctvit")


@functools.lru_cache(maxsize=None)
def _built(items: tuple):
    family = get_family("ctvit")
    return build_schema(family, make_config(family, dict(items)))


def built(overrides: dict):
    """`build_schema` of ctvit with `overrides`, built once per test session (CT-CLIP sizes take a while)."""
    return _built(tuple(sorted(overrides.items())))


def schema_diff(expected: Schema, actual: Schema, limit: int = 15) -> list[str]:
    """Readable differences: missing, unexpected, and changed (shape or dtype) entries."""
    want, got = expected.by_name, actual.by_name
    sections = [
        ("missing", [f"{want[n].name} {list(want[n].shape)} {want[n].dtype}" for n in sorted(set(want) - set(got))]),
        ("unexpected", [f"{got[n].name} {list(got[n].shape)} {got[n].dtype}" for n in sorted(set(got) - set(want))]),
        ("changed", [
            f"{n}: {list(want[n].shape)} {want[n].dtype} -> {list(got[n].shape)} {got[n].dtype}"
            for n in sorted(set(want) & set(got)) if want[n] != got[n]
        ]),
    ]
    lines = []
    for title, items in sections:
        if items:
            lines.append(f"{len(items)} {title}:")
            lines += [f"  {item}" for item in items[:limit]] + ([f"  ... {len(items) - limit} more"] if len(items) > limit else [])
    return lines


# --- the reference listings ---------------------------------------------------------------------


@pytest.mark.parametrize("listing", sorted(REFERENCES))
def test_the_reference_fingerprints_are_reproduced(family, listing):
    overrides, fingerprint = REFERENCES[listing]
    assert built(overrides).fingerprint == fingerprint


@pytest.mark.parametrize("listing", sorted(REFERENCES))
def test_the_reference_listing_is_reproduced_entry_for_entry(family, listing):
    expected, header = parse_schema_tsv(reference_text(listing, "the pinned-fingerprint test still runs"))
    overrides, fingerprint = REFERENCES[listing]
    result = built(overrides)

    differences = schema_diff(expected, result.schema)
    assert not differences, f"{listing} vs ctvit {overrides}:\n" + "\n".join(differences)
    assert header["schema_fingerprint"].split()[0] == result.fingerprint == fingerprint
    assert result.parameters == int(header["total_params"].split()[0])


@pytest.mark.parametrize("listing", sorted(REFERENCES))
def test_parameters_and_persistent_buffers_are_as_listed(family, listing):
    _, header = parse_schema_tsv(reference_text(listing))
    patterns = next(v for k, v in header.items() if k.startswith("persistent buffers")).split("; ")
    model = build_on_meta(family, make_config(family, REFERENCES[listing][0]))
    parameters = {name for name, _ in model.named_parameters()}
    state = model.state_dict(keep_vars=True)

    wrong = [
        f"{name}: {'buffer' if name not in parameters else 'parameter'}"
        for name in state
        if (name not in parameters) != any(fnmatchcase(name, p) for p in patterns)
    ]
    assert not wrong, "parameter/buffer split differs from the listing:\n" + "\n".join(wrong)
    assert "spatial_rel_pos_bias.rel_pos" not in state  # non-persistent


# --- layout flags, module by module --------------------------------------------------------------


def expected_norm(path: str, config: CTViTConfig) -> type:
    if path.startswith("to_patch_emb"):
        return nn.LayerNorm  # the tokenizer stem's norms are not transformer norms: no flag covers them
    if config.use_rms_norm:
        return nn.RMSNorm
    if re.search(r"layers\.\d+\.3\.0$", path):
        return nn.LayerNorm  # the feed-forward's pre-norm: weight and bias
    return LayerNorm  # attention norm/context_norm and norm_out: gamma parameter, beta buffer


def class_name(kind: type) -> str:
    """`torch.nn.LayerNorm` vs `ctvit_attention.LayerNorm`: the bare names are ambiguous."""
    home = "torch.nn" if kind.__module__.startswith("torch.nn") else kind.__module__.rsplit(".", 1)[-1]
    return f"{home}.{kind.__name__}"


def flag_violations(model: nn.Module, config: CTViTConfig) -> list[str]:
    """Every module whose class contradicts the config's layout flags, as `path: found, expected`."""
    problems, seen = [], Counter()
    want_attention = FlashAttentionQKV if config.use_flash_attention else Attention
    want_glu = SwiGLU if config.use_swiglu else GEGLU
    for path, module in model.named_modules():
        kind = type(module)
        name = kind.__name__.lower()
        if "attention" in name:
            seen["attention"] += 1
            want = want_attention
        elif "glu" in name:
            seen["glu"] += 1
            want = want_glu
        elif "norm" in name:
            seen["norm"] += 1
            want = expected_norm(path, config)
        else:
            continue
        if kind is not want:
            problems.append(f"{path}: {class_name(kind)}, expected {class_name(want)}")
    problems += [f"no {what} module found" for what in ("attention", "glu", "norm") if not seen[what]]

    top = {path.split(".")[0] for path, _ in model.named_modules() if path}
    for part, flag in [
        ("dec_spatial_transformer", "with_decoder"), ("dec_temporal_transformer", "with_decoder"),
        ("vgg", "use_vgg_and_gan"), ("discr", "use_vgg_and_gan"),
    ]:
        if (part in top) != getattr(config, flag):
            problems.append(f"{part}: {'present' if part in top else 'absent'} with {flag}={getattr(config, flag)}")
    return problems


@pytest.mark.parametrize("flags", COMBINATIONS, ids=combination_id)
def test_every_module_follows_the_layout_flags(family, flags):
    config = make_config(family, {**TINY, **flags})
    model = build_on_meta(family, config)
    assert flag_violations(model, config) == []
    names = schema_of_module(model).names
    norm_suffix = ".norm.weight" if flags["use_rms_norm"] else ".norm.gamma"
    assert any(n.endswith("layers.0.1" + norm_suffix) for n in names)


def test_the_flag_check_catches_the_incident(family, monkeypatch):
    """The first incident: `Attention` built RMSNorm whatever `use_rms_norm` said."""
    original = Attention.__init__

    def hardcoded_rms_norm(self, *, use_rms_norm=False, **kwargs):
        original(self, use_rms_norm=True, **kwargs)

    monkeypatch.setattr(Attention, "__init__", hardcoded_rms_norm)
    config = make_config(family, TINY)
    problems = flag_violations(build_on_meta(family, config), config)
    sites = [f"{t}_transformer.layers.0.1.{n}" for t in ("dec_spatial", "dec_temporal", "enc_spatial", "enc_temporal")
             for n in ("context_norm", "norm")]
    assert sorted(problems) == [f"{site}: torch.nn.RMSNorm, expected ctvit_attention.LayerNorm" for site in sites]


def test_the_flag_check_catches_an_ignored_swiglu_flag(family, monkeypatch):
    """A class swap that changes no tensor is still caught, by class and by module signature."""
    config = make_config(family, {**TINY, "use_swiglu": True})
    honest = build_on_meta(family, config)
    monkeypatch.setattr(ctvit_attention, "SwiGLU", GEGLU)
    broken = build_on_meta(family, config)
    assert any(p.endswith(": ctvit_attention.GEGLU, expected ctvit_attention.SwiGLU") for p in flag_violations(broken, config))
    assert schema_of_module(broken) == schema_of_module(honest)
    assert module_signature(broken).hash != module_signature(honest).hash


# --- forward, loss, training ---------------------------------------------------------------------


@pytest.mark.parametrize("flags", COMBINATIONS, ids=combination_id)
def test_a_training_step_works_for_every_flag_combination(family, flags):
    torch.manual_seed(0)
    config = make_config(family, {**TINY, **flags})
    model = family.build(config)
    batch = family.make_batch(config, 2, torch.Generator().manual_seed(0))
    assert batch.shape == (2, 1, 5, 32, 32)
    assert model(batch, return_recons_only=True).shape == batch.shape

    loss = family.compute_loss(model, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    # only the (CT-CLIP) context norms of self-attention never see an input
    without_grad = [n for n, p in trainable.items() if p.grad is None and ".context_norm." not in n]
    assert without_grad == []
    assert all(torch.isfinite(p.grad).all() for p in trainable.values() if p.grad is not None)


def test_generator_and_discriminator_losses_train_separate_parameters(family):
    torch.manual_seed(0)
    config = make_config(family, {**TINY, "use_vgg_and_gan": True})
    model = family.build(config)
    batch = family.make_batch(config, 2, torch.Generator().manual_seed(0))
    losses = model.losses(batch)
    losses.discriminator.backward(retain_graph=True)
    touched = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None}
    assert touched == {"discr"}
    model.zero_grad(set_to_none=True)
    losses.generator.backward()
    touched = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None}
    assert "discr" not in touched and "vgg" not in touched and "to_pixels" in touched


def test_ct_clip_losses_through_forward(family):
    """CT-CLIP's trainer calls `vae(video, apply_grad_penalty=...)` for the autoencoder and
    `vae(video, return_discr_loss=True)` for the discriminator."""
    torch.manual_seed(0)
    model = family.build(make_config(family, {**TINY, "use_vgg_and_gan": True})).train()
    video = torch.randn(2, 1, 4, 32, 32)
    model(video).backward()
    touched = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None}
    assert {"to_patch_emb", "enc_spatial_transformer", "dec_spatial_transformer", "to_pixels"} <= touched
    assert "vgg" not in touched

    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    with_penalty = model(video, return_discr_loss=True)
    torch.manual_seed(1)
    without = model(video, return_discr_loss=True, apply_grad_penalty=False)
    assert with_penalty > without >= 0  # hinge loss plus 10 · (|grad| - 1)², here well above 0
    with_penalty.backward()
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None} == {"discr"}

    plain = CTViT(**TINY)
    with pytest.raises(ValueError, match="return_discr_loss needs a discriminator"):
        plain(video, return_discr_loss=True)


def test_ct_clip_frame_convention_leaves_the_first_frame_heads_out():
    torch.manual_seed(0)
    model = CTViT(**TINY)
    video = torch.randn(1, 1, 4, 32, 32)  # a multiple of temporal_patch_size: patched as a whole
    assert model.encode_video(video).shape == (1, 2, 4, 4, 32)
    model.losses(video).total.backward()
    assert model.to_patch_emb_first_frame[2].weight.grad is None
    assert model.to_pixels_first_frame[0].weight.grad is None
    with pytest.raises(ValueError, match="multiple of temporal_patch_size"):
        CTViT(**{**TINY, "temporal_patch_size": 4})(torch.randn(1, 1, 6, 32, 32))
    with pytest.raises(ValueError, match="1 channel"):
        model(torch.randn(1, 3, 4, 32, 32))


def test_the_codebook_learns_only_in_training_mode():
    torch.manual_seed(0)
    model = CTViT(**TINY)
    video = torch.randn(2, 1, 5, 32, 32)
    model.eval()
    before = model.vq._codebook.embed.clone()
    with torch.no_grad():
        assert torch.equal(model(video, return_recons_only=True), model(video, return_recons_only=True))
    assert torch.equal(model.vq._codebook.embed, before)
    model.train()
    model(video)
    assert not torch.equal(model.vq._codebook.embed, before)  # the update itself: test_ctvit_quantizer
    assert model.vq._codebook.cluster_size.sum() > 0


def test_a_state_dict_loads_strictly_and_reproduces_outputs():
    torch.manual_seed(0)
    source, target = CTViT(**TINY).eval(), CTViT(**TINY).eval()
    target.load_state_dict(source.state_dict(), strict=True)
    video = torch.randn(1, 1, 5, 32, 32)
    with torch.no_grad():
        assert torch.allclose(source(video, return_recons_only=True), target(video, return_recons_only=True))


def test_flash_attention_computes_the_same_attention():
    torch.manual_seed(0)
    attention = Attention(dim=32, dim_head=8, heads=2)
    flash = FlashAttentionQKV(dim=32, dim_head=8, heads=2)
    with torch.no_grad():
        flash.norm.gamma.copy_(torch.rand(32))
        attention.norm.gamma.copy_(flash.norm.gamma)
        flash.to_qkv.weight.copy_(torch.cat((attention.to_q.weight, attention.to_kv.weight)))
        flash.to_out.weight.copy_(attention.to_out.weight)
    x, bias = torch.randn(2, 6, 32), torch.randn(2, 6, 6)
    assert torch.allclose(attention(x, attn_bias=bias), flash(x, attn_bias=bias), atol=1e-5)


# --- schemas, signatures, variants, config -------------------------------------------------------


@pytest.mark.parametrize("base", [{}, TINY], ids=["ctclip-size", "tiny"])
def test_geglu_and_swiglu_share_a_schema_but_not_a_signature(family, base):
    geglu, swiglu = built(base), built({**base, "use_swiglu": True})
    assert geglu.fingerprint == swiglu.fingerprint
    assert geglu.signature.hash != swiglu.signature.hash
    before, after = geglu.signature.as_dict(), swiglu.signature.as_dict()
    changed = {path for path in before if before[path] != after[path]}
    assert changed and all(re.fullmatch(r".+_transformer\.layers\.\d+\.3\.2", p) for p in changed)


def test_the_module_signature_includes_parameterless_modules(family):
    signature = built(TINY).signature.as_dict()
    assert signature["enc_spatial_transformer.layers.0.3.2"] == "registry.models.ctvit_attention.GEGLU"
    assert signature["enc_spatial_transformer.layers.0.3.3"] == "torch.nn.modules.dropout.Dropout"
    assert signature["to_patch_emb.0"].endswith(".Rearrange")
    assert signature["to_pixels.1"].endswith(".Rearrange")
    assert "enc_spatial_transformer.layers.0.2" not in signature  # the empty cross-attention slot


def test_the_builtin_variants(family):
    variants = {v.short_name: v for v in builtin_variants() if v.family == "ctvit"}
    assert set(variants) == {
        "ctclip-v2", "baseline", "baseline-gan", "baseline-rmsnorm", "baseline-swiglu", "baseline-flash",
        "rmsnorm-swiglu", "optimized", "tiny", "tiny-rmsnorm", "tiny-swiglu", "tiny-optimized", "tiny-ctclip",
    }
    results = {name: built(v.config) for name, v in variants.items()}
    fingerprints = {name: result.fingerprint for name, result in results.items()}
    assert fingerprints["ctclip-v2"] == REFERENCES["ctvit_ctclip_main.tsv"][1]
    assert fingerprints["baseline"] == REFERENCES["ctvit_ctclip_seed.tsv"][1]
    assert fingerprints["baseline-gan"] == REFERENCES["ctvit_ctclip_seed_vgg_gan.tsv"][1]
    # GEGLU/SwiGLU pairs are ambiguous by fingerprint (DESIGN §2); every other step changes it
    assert fingerprints["baseline-swiglu"] == fingerprints["baseline"]
    assert fingerprints["rmsnorm-swiglu"] == fingerprints["baseline-rmsnorm"]
    assert fingerprints["tiny-swiglu"] == fingerprints["tiny"]
    assert len({fingerprints[n] for n in ("baseline", "baseline-rmsnorm", "baseline-flash", "optimized")}) == 4
    assert len({result.signature.hash for result in results.values()}) == len(results)
    for name, result in results.items():
        assert flag_violations(build_on_meta(family, result.config), result.config) == [], name


def test_the_constructor_defaults_are_the_config_defaults():
    parameters = inspect.signature(CTViT).parameters
    for field in dataclasses.fields(CTViTConfig):
        assert parameters[field.name].kind is inspect.Parameter.KEYWORD_ONLY
        assert parameters[field.name].default == field.default, field.name


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"image_size": 30, "patch_size": 8}, "image_size (30) must be divisible by patch_size (8)"),
        ({"dim": 0}, "dim must be at least 1, got 0"),
        ({"heads": -2}, "heads must be at least 1, got -2"),
        ({"discr_image_size": 48}, "discr_image_size must be a power of two of at least 8, got 48"),
        ({"discr_attn_res_layers": (0,)}, "discr_attn_res_layers must hold positive integers, got (0,)"),
        ({"use_vgg_and_gan": True, "channels": 2}, "use_vgg_and_gan needs channels 1 or 3 (VGG16 sees RGB), got 2"),
    ],
)
def test_impossible_configs_are_refused(family, overrides, message):
    with pytest.raises(ValueError) as error:
        CTViTConfig(**overrides)
    assert str(error.value) == message
    with pytest.raises(ValueError):
        CTViT(**overrides)
    with pytest.raises(UsageError) as usage:
        make_config(family, overrides)
    assert usage.value.message == f"invalid ctvit config: {message}"
