"""Config inference with no family-specific code (`registry.inference`, `registry infer`).

The models are what users write in their own repositories (a GPT, a CTViT-like encoder, a CNN with
`channels: list[int]`, a model taking a config dataclass), written to a temporary user package and
used as class families. Each checkpoint schema is built from a config the solver is not told; the
solver must find a config with the exact fingerprint, keep undetermined fields at their defaults
and say so. The built-in families are solved without their hand-written hooks, and both must
reach the same fingerprint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from registry.class_family import class_family
from registry.families import build_schema, get_family, make_config
from registry.inference import infer_config

USER_MODELS = Path(__file__).with_name("infer_user_models.py")


@pytest.fixture(scope="module")
def user_project(tmp_path_factory):
    """A user's repository: its own `mymodels` package, importable from the project folder."""
    root = tmp_path_factory.mktemp("user-project")
    (root / "mymodels").mkdir()
    (root / "mymodels" / "__init__.py").write_text("")
    shutil.copy(USER_MODELS, root / "mymodels" / "nets.py")
    (root / "pyproject.toml").write_text('[project]\nname = "my-models"\nversion = "0.1"\n')
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    for name in [m for m in sys.modules if m == "mymodels" or m.startswith("mymodels.")]:
        del sys.modules[name]


def _solve(family, values, **kwargs):
    """(the checkpoint's schema built from `values`, the solver's result on it)."""
    target = build_schema(family, make_config(family, values)).schema
    return target, infer_config(family, target, **kwargs)


def _undetermined(result) -> dict:
    return {u.field: u for u in result.undetermined}


def test_gpt_head_count_is_undetermined_and_keeps_its_default(user_project):
    family = class_family("mymodels.nets:GPT")
    target, result = _solve(family, dict(n_layer=3, n_head=4, n_embd=96, vocab_size=100, block_size=32, bias=False))
    assert result.exact and result.fingerprint == target.fingerprint
    config = result.config_values()
    assert {k: config[k] for k in ("n_layer", "n_embd", "vocab_size", "block_size", "bias")} == dict(
        n_layer=3, n_embd=96, vocab_size=100, block_size=32, bias=False)
    undetermined = _undetermined(result)
    assert set(undetermined) == {"n_head"}
    assert config["n_head"] == 12 and undetermined["n_head"].source == "default"  # 12 divides 96: kept
    assert len(undetermined["n_head"].admissible) >= 2
    assert result.builds <= 200


def test_gpt_head_count_whose_default_cannot_build_is_taken_and_said_so(user_project):
    family = class_family("mymodels.nets:GPT")
    target, result = _solve(family, dict(n_layer=2, n_head=4, n_embd=64, vocab_size=50, block_size=16))
    assert result.exact and result.fingerprint == target.fingerprint
    n_head = _undetermined(result)["n_head"]
    assert n_head.source == "search" and 64 % n_head.value == 0 and n_head.value != 12


def test_fixed_value_is_kept_and_not_reported_undetermined(user_project):
    family = class_family("mymodels.nets:GPT")
    target, result = _solve(family, dict(n_layer=2, n_head=4, n_embd=64, vocab_size=50, block_size=16),
                            fixed={"n_head": 8})
    assert result.exact and result.config_values()["n_head"] == 8
    assert result.fixed == {"n_head": 8} and "n_head" not in _undetermined(result)


def test_ctvit_like_model(user_project):
    family = class_family("mymodels.nets:MyViT")
    values = dict(dim=48, depth=3, heads=3, dim_head=16, use_rms_norm=True, use_swiglu=True)
    target, result = _solve(family, values)
    assert result.exact and result.fingerprint == target.fingerprint
    config = result.config_values()
    assert {k: config[k] for k in ("dim", "depth", "heads", "dim_head", "use_rms_norm")} == dict(
        dim=48, depth=3, heads=3, dim_head=16, use_rms_norm=True)
    # SwiGLU and GEGLU hold the same tensors: reported, and the default kept
    assert set(_undetermined(result)) == {"use_swiglu"} and config["use_swiglu"] is False
    assert result.builds <= 200


def test_cnn_channels_list_from_the_conv_widths_in_order(user_project):
    family = class_family("mymodels.nets:SmallCNN")
    target, result = _solve(family, dict(channels=[8, 24, 16, 40], in_channels=1, num_classes=5, kernel_size=5))
    assert result.exact and result.fingerprint == target.fingerprint
    assert result.config_values() == dict(channels=[8, 24, 16, 40], in_channels=1, num_classes=5, kernel_size=5)
    assert isinstance(result.config.channels, list)  # the annotation's container, not a tuple
    assert result.undetermined == [] and result.builds <= 200


def test_model_taking_a_config_dataclass_with_enum_literal_and_nested_fields(user_project):
    family = class_family("mymodels.nets:MLP")
    values = dict(in_features=20, hidden=[32, 16, 8], activation="gelu", norm="layer",
                  head=dict(num_classes=3, bias=False))
    target, result = _solve(family, values)
    assert result.exact and result.fingerprint == target.fingerprint
    config = result.config_values()
    assert config["in_features"] == 20 and config["hidden"] == [32, 16, 8] and config["norm"] == "layer"
    assert config["head"] == dict(num_classes=3, bias=False)
    assert set(_undetermined(result)) == {"activation"} and config["activation"] == "relu"
    assert result.not_searched == ["dropout"]  # a float moves no tensor: kept, and said so


def test_unreachable_schema_gives_the_nearest_config_with_the_grouped_diff(user_project):
    from registry.schema import Schema, TensorEntry

    family = class_family("mymodels.nets:SmallCNN")
    target = build_schema(family, make_config(family, dict(channels=[8, 16]))).schema
    extra = Schema([*target, TensorEntry("features.9.weight", (3,))])
    result = infer_config(family, extra)
    assert not result.exact and result.distance == 1
    assert result.config_values()["channels"] == [8, 16]
    assert any("features.9.weight" in line for line in result.diff.lines())


# --- the built-in families, without their hand-written hooks ----------------------------------

BUILTIN_CASES = {
    "ctvit/tiny": ("ctvit", "tiny"),
    "ldm-unet/tiny": ("ldm-unet", "tiny"),
    "diffusers-unet/tiny": ("diffusers-unet", "tiny"),
}
# Configs no built-in variant has, and the full-size variants: slower, CI runs them.
SLOW_CASES = {
    "ctvit: flash attention, no decoder, 3 heads of 16, depths 2 and 1": ("ctvit", dict(
        dim=48, codebook_size=32, image_size=24, patch_size=6, temporal_patch_size=3, spatial_depth=2,
        temporal_depth=1, dim_head=16, heads=3, use_flash_attention=True, with_decoder=False, use_rms_norm=True)),
    "ldm-unet: three levels, one block, attention at factor 2 only": ("ldm-unet", dict(
        image_size=32, model_channels=32, channel_mult=(1, 2, 3), num_res_blocks=1, attention_resolutions=(2,),
        context_dim=48)),
    "diffusers-unet: three levels, linear projections, depth 2": ("diffusers-unet", dict(
        block_out_channels=(32, 64, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
        cross_attention_dim=24, use_linear_projection=True, transformer_layers_per_block=2, sample_size=16)),
    "ctvit/baseline-gan": ("ctvit", "baseline-gan"),
    "ldm-unet/sd15": ("ldm-unet", "sd15"),
    "diffusers-unet/sd15": ("diffusers-unet", "sd15"),
}


def _builtin_target(family_name, values):
    from registry.catalog import get_builtin_variant

    family = get_family(family_name)
    if isinstance(values, str):
        values = get_builtin_variant(f"{family_name}/{values}").config
    return family, build_schema(family, make_config(family, values)).schema


def _check_against_hook(family, target):
    result = infer_config(family, target)
    assert result.exact and result.fingerprint == target.fingerprint
    hooked = [c for c in family.infer_configs(target) if build_schema(family, c).fingerprint == target.fingerprint]
    assert hooked, "the hand-written hook finds it too"
    assert build_schema(family, hooked[0]).fingerprint == result.fingerprint
    return result


@pytest.mark.parametrize("case", list(BUILTIN_CASES))
def test_builtin_families_without_their_hooks(case):
    family, target = _builtin_target(*BUILTIN_CASES[case])
    result = _check_against_hook(family, target)
    assert result.builds <= 200
    if family.name == "diffusers-unet":  # block type names are free strings: the family declares them
        assert {"down_block_types", "up_block_types", "mid_block_type"} <= set(result.declared_choices)
        assert result.config.down_block_types == ("CrossAttnDownBlock2D", "DownBlock2D")
        # heads: 9 moves the schema (27-wide projections) but 4 and 16 build it too, so it is undetermined
        assert "attention_head_dim" in {u.field for u in result.undetermined}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(SLOW_CASES))
def test_builtin_families_elsewhere_without_their_hooks(case):
    family, target = _builtin_target(*SLOW_CASES[case])
    _check_against_hook(family, target)


# --- the command line, from the user's project folder ------------------------------------------

REGISTRY = str(Path(sys.executable).with_name("registry"))


def _run(args, cwd, **env):
    return subprocess.run([REGISTRY, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "REGISTRY_DB": str(Path(cwd) / "registry.db"), **env})


@pytest.fixture(scope="module")
def saved_gpt(user_project):
    """A user's GPT checkpoint (a real torch save of real tensors) in the project folder."""
    import torch

    from registry.class_family import import_target

    gpt = import_target("mymodels.nets:GPT")(n_layer=2, n_head=4, n_embd=48, vocab_size=40, block_size=8)
    path = user_project / "ckpt.pt"
    torch.save({"model": gpt.state_dict(), "step": 10}, path)
    return path


def test_cli_infer_text_then_json_then_register(user_project, saved_gpt):
    done = _run(["infer", "ckpt.pt", "--class", "mymodels.nets:GPT"], user_project)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("inferred: a mymodels.nets:GPT config builds ckpt.pt exactly")
    assert "  n_embd: 48" in done.stdout and "  n_layer: 2" in done.stdout
    assert "  n_head: 12 (the default); admissible:" in done.stdout

    done = _run(["infer", "ckpt.pt", "--class", "mymodels.nets:GPT", "--fix", "n_head=8", "--json",
                 "--register", "gpt/inferred"], user_project)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["exact"] is True and data["config"]["n_head"] == 8 and data["fixed"] == {"n_head": 8}
    assert data["config"]["vocab_size"] == 40 and data["undetermined"] == []
    assert data["registered"]["status"] == "registered" and data["registered"]["fingerprint"] == data["fingerprint"]

    listed = _run(["variants", "show", "gpt/inferred", "--json"], user_project)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["variant"]["config"]["n_head"] == 8


def test_cli_infer_nearest_exits_1_with_the_diff(user_project, saved_gpt):
    done = _run(["infer", "ckpt.pt", "--class", "mymodels.nets:SmallCNN", "--budget", "20"], user_project)
    assert done.returncode == 1
    assert done.stdout.startswith("none: no mymodels.nets:SmallCNN config found that builds ckpt.pt")
    assert "differences (expected = what the nearest config builds, actual = the checkpoint):" in done.stdout


def test_cli_infer_bad_inputs(user_project, saved_gpt):
    garbage = user_project / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    done = _run(["infer", "garbage.pt", "--class", "mymodels.nets:GPT"], user_project)
    assert done.returncode == 3 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr

    done = _run(["infer", "ckpt.pt"], user_project)
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == "error: name the family: --family NAME or --class pkg.module:Class"

    done = _run(["infer", "ckpt.pt", "--class", "mymodels.nets:GPT", "--fix", "n_heads=8"], user_project)
    assert done.returncode == 2 and "n_heads" in done.stderr.splitlines()[0]


def test_match_reports_inferred_for_a_loaded_class_family(user_project, saved_gpt, tmp_path):
    from registry.matching import match_checkpoint
    from registry.readers import read_checkpoint
    from registry.store import open_registry

    class_family("mymodels.nets:GPT")  # loaded, no hook, nothing registered
    with open_registry(f"sqlite:///{tmp_path / 'registry.db'}", upgrade=True) as reg:
        result = match_checkpoint(reg, read_checkpoint(saved_gpt))
    assert result.status == "inferred" and result.family == "mymodels.nets:GPT" and result.prefix == ""
    assert {k: result.config[k] for k in ("n_layer", "n_embd", "vocab_size", "block_size")} == dict(
        n_layer=2, n_embd=48, vocab_size=40, block_size=8)
    assert any(w.startswith("n_head is not decided by the checkpoint: 12 is kept (default)") for w in result.warnings)
    assert result.suggestions[0].startswith("registry variants add gpt/NAME --class mymodels.nets:GPT --set ")


@pytest.mark.slow
def test_single_file_checkpoint_infers_the_sub_model_the_family_fits(tmp_path):
    """A Stable-Diffusion-style file: the UNet under `model.diffusion_model.` beside a VAE entry."""
    import torch

    from registry.inference import infer_checkpoint
    from registry.readers import read_checkpoint

    family, target = _builtin_target("ldm-unet", dict(
        image_size=16, model_channels=32, num_res_blocks=2, attention_resolutions=(1,), channel_mult=(1, 2), context_dim=40))
    state = {"model.diffusion_model." + e.name: torch.zeros(e.shape) for e in target}
    state["first_stage_model.encoder.conv_in.weight"] = torch.zeros(8, 3, 3, 3)
    torch.save({"state_dict": state, "global_step": 5}, tmp_path / "sd.ckpt")
    result, prefix = infer_checkpoint(read_checkpoint(tmp_path / "sd.ckpt"), family)
    assert prefix == "model.diffusion_model." and result.exact and result.fingerprint == target.fingerprint
